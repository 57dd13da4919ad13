"""A write that fails (a full disk, a quota, a read-only or failing file system) is one error line naming the file
and the free space, and nothing half-written is kept (issue 21). The same with a real full file system, mounted for
the test: tests/cli/test_hostile_inputs.py::test_a_full_disk_is_one_error_line_naming_the_file_and_the_free_space."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from resnet_edge.artifacts import atomic_output
from resnet_edge.cli.main import main
from resnet_edge.errors import OutputWriteError

FULL = OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_names_the_file_and_the_free_space_and_keeps_nothing(tmp_path: Path) -> None:
    expected = r"cannot write .*m.onnx: No space left on device \([\d,.]+ \w+B free"
    with pytest.raises(OutputWriteError, match=expected), atomic_output(tmp_path / "m.onnx") as tmp:
        tmp.write_bytes(b"half a model")
        raise FULL  # what the next write() would raise on a full disk
    assert list(tmp_path.iterdir()) == []


def test_two_outputs_written_together_are_both_named(tmp_path: Path) -> None:
    with (
        pytest.raises(OutputWriteError, match=r"cannot write .*q.onnx or .*q.onnx.json: No space"),
        atomic_output(tmp_path / "q.onnx") as model,
        atomic_output(tmp_path / "q.onnx.json"),
    ):
        model.write_bytes(b"x")
        raise FULL
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_outside_the_outputs_is_one_line_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from resnet_edge.device import bundle

    def full(output: Path) -> None:
        raise OSError(errno.EDQUOT, "Disk quota exceeded", str(output))

    monkeypatch.setattr(bundle, "write_runner", full)
    result = CliRunner().invoke(main, ["runner", "-o", str(tmp_path / "r.pyz")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == (
        f"error: cannot write {tmp_path / 'r.pyz'}: Disk quota exceeded"
        f" ({shutil.disk_usage(tmp_path).free / 2**20:,.1f} MiB free there); nothing was kept"
    )


def test_a_stage_that_cannot_write_leaves_no_partial_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A full disk in a pipeline stage: no partial output is published, and the error names OUTDIR, not staging."""
    import functools

    from resnet_edge.pipeline import run as pipeline_run

    class FullDisk:
        name = "export"

        def run(self, source: object, output: Path, *args: object) -> None:
            raise OutputWriteError(f"cannot write {output}: No space left on device")

    # the CLI's run, with the export stage replaced
    monkeypatch.setattr(pipeline_run, "run_pipeline", functools.partial(pipeline_run.run_pipeline, stages=[FullDisk()]))
    result = CliRunner().invoke(main, ["pipeline", "-o", str(tmp_path / "out"), "--no-int8"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"error: export: cannot write {tmp_path / 'out'}/model.onnx: No space" in result.output
    assert list(tmp_path.iterdir()) == []  # no OUTDIR, no staging folder, no lock file


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_standard_output_on_a_full_device_is_one_error_line() -> None:
    script = shutil.which("resnet-edge", path=str(Path(sys.executable).parent))
    assert script
    with open("/dev/full", "w") as full:
        done = subprocess.run([script, "doctor"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: cannot write to standard output: No space left on device; the output was lost"
    ]
