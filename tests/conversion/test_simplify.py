"""Simplify: BatchNorm folding proven on files that really contain BatchNorm, and onnxsim contained."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest

from resnet_edge.conversion import simplify as simplify_module
from resnet_edge.conversion.options import SimplifyOptions
from resnet_edge.conversion.simplify import simplify_onnx
from resnet_edge.errors import CheckFailedError, InputFileError
from resnet_edge.onnx.metadata import read_props
from resnet_edge.onnx.parity import FP32_MAX_ABS_ERROR
from tests.conftest import bn_count, export_with_batchnorm


@pytest.fixture(scope="module")
def bn_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_with_batchnorm(tmp_path_factory.mktemp("bn") / "resnet18_bn.onnx")


@pytest.mark.slow
def test_folds_every_batchnorm_of_a_bn_bearing_file(bn_file: Path, tmp_path: Path) -> None:
    assert bn_count(bn_file) == 20  # constant folding off: as other tools write it (MEASURED.md)
    result = simplify_onnx(bn_file, tmp_path / "sim.onnx")
    assert result.ops_before["BatchNormalization"] == 20 and "BatchNormalization" not in result.ops_after
    assert result.batch_norm_folded == 20 and bn_count(tmp_path / "sim.onnx") == 0
    assert result.ops_after["Conv"] == result.ops_before["Conv"] == 20
    assert sorted(result.parity) == [1, 8]
    assert all(p.max_abs_error <= FP32_MAX_ABS_ERROR * 10 and p.top1_agreement == 1.0 for p in result.parity.values())


def test_metadata_is_carried_over(digits_onnx: Path, digits_sim: Path) -> None:
    before, after = read_props(onnx.load(str(digits_onnx))), read_props(onnx.load(str(digits_sim)))
    assert {k: after[k] for k in before} == before
    assert '"batch_norm_after": 0' in after["simplification"]
    assert not any(k.startswith("onnxsim.") for k in after)


@pytest.mark.slow
def test_unfoldable_batchnorm_is_named_unless_allowed(tmp_path: Path) -> None:
    preact = export_with_batchnorm(tmp_path / "preact.onnx", arch="resnet20", size=32, variant="preact")
    with pytest.raises(
        CheckFailedError, match=r"could not be folded into a convolution: .*\(fed by Conv \(output shared\)\)"
    ):
        simplify_onnx(preact, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
    result = simplify_onnx(preact, tmp_path / "out.onnx", SimplifyOptions(allow_unfolded_bn=True))
    # Each block's bn1 follows an addition (or the stem conv, whose output also feeds the skip): nothing to fold into.
    producers = {producer for _, producer in result.batch_norm_remaining}
    assert "Conv (output shared)" in producers and producers <= {"Add", "Add (output shared)", "Conv (output shared)"}
    assert all("/bn1/" in name or "bn_final" in name for name, _ in result.batch_norm_remaining)
    assert result.batch_norm_folded > 0  # the BN right after each block's first conv does fold


def test_onnxsim_crash_is_contained(monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path, tmp_path: Path) -> None:
    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    monkeypatch.setattr(simplify_module, "worker_command", lambda src, dst: crash)
    with pytest.raises(CheckFailedError, match=r"onnxsim crashed \(signal 11\)"):
        simplify_onnx(tiny_onnx, tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


def test_onnxsim_hang_is_contained(monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path, tmp_path: Path) -> None:
    monkeypatch.setattr(
        simplify_module, "worker_command", lambda src, dst: [sys.executable, "-c", "import time; time.sleep(60)"]
    )
    with pytest.raises(CheckFailedError, match="did not finish within 0.5 s"):
        simplify_onnx(tiny_onnx, tmp_path / "out.onnx", SimplifyOptions(timeout_s=0.5))
    assert list(tmp_path.iterdir()) == []


def test_onnxsim_failure_is_one_line(monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path, tmp_path: Path) -> None:
    monkeypatch.setattr(
        simplify_module,
        "worker_command",
        lambda src, dst: [
            sys.executable,
            "-c",
            "import sys; print('RuntimeError: bad graph', file=sys.stderr); sys.exit(3)",
        ],
    )
    with pytest.raises(CheckFailedError, match="onnxsim failed: RuntimeError: bad graph"):
        simplify_onnx(tiny_onnx, tmp_path / "out.onnx")


def test_quantized_input_is_refused(digits_int8: Path, tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="already quantized"):
        simplify_onnx(digits_int8, tmp_path / "out.onnx")


@pytest.mark.parametrize(("content", "match"), [(b"", "empty"), (b"\x08\x07garbage", "not a readable ONNX model")])
def test_bad_input_files(tmp_path: Path, content: bytes, match: str) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    with pytest.raises(InputFileError, match=match):
        simplify_onnx(bad, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_truncated_model(tiny_onnx: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(tiny_onnx.read_bytes()[: tiny_onnx.stat().st_size // 2])
    with pytest.raises(InputFileError, match="cut.onnx"):
        simplify_onnx(cut, tmp_path / "out.onnx")


def test_timeout_must_be_positive(tiny_onnx: Path, tmp_path: Path) -> None:
    from resnet_edge.errors import OptionError

    with pytest.raises(OptionError, match="timeout must be more than 0 and at most"):
        simplify_onnx(tiny_onnx, tmp_path / "out.onnx", SimplifyOptions(timeout_s=0))
