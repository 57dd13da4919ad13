"""-v / -q on the command group, and the CLI's silencing kept to onnxruntime's and onnxsim's own chatter."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from resnet_edge.cli.main import main


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def few_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 of the built-in held-out digits, as an .npz that ``--data`` reads: validate in a fraction of the time."""
    import numpy as np

    from resnet_edge.calibration.sources import DIGITS_FILE

    path = tmp_path_factory.mktemp("digits") / "digits16.npz"
    with np.load(DIGITS_FILE) as digits:
        rows = digits["test_rows"][:16]
        np.savez(path, images=digits["images"][rows], labels=digits["labels"][rows])
    return path


def test_verbose_prints_debug_lines_from_the_library(digits_onnx: Path, few_images: Path) -> None:
    result = run("-v", "validate", digits_onnx, "--data", few_images)
    assert result.exit_code == 0, result.output
    assert "debug: resnet-edge " in result.output  # the group's own line
    assert "requested cpu, providers CPUExecutionProvider" in result.output  # onnx.runtime's, through the logger
    assert "debug:" not in run("validate", "--help").output
    assert "debug: resnet-edge " in run("-v", "validate", "--help").output


def test_quiet_hides_warnings_and_keeps_the_exit_code(digits_onnx: Path, few_images: Path) -> None:
    from resnet_edge.onnx.plugins import available_providers

    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("this machine has the CUDA provider: no fallback warning to hide")
    # Without -q this run warns "warning: requested cuda ..." (tests/cli/test_cli.py::test_cuda_request_without_cuda).
    quiet = run("-q", "validate", digits_onnx, "--data", few_images, "--providers", "cuda")
    assert quiet.exit_code == 0 and "warning:" not in quiet.output
    assert "fell back to cpu" in quiet.output  # the result itself still prints
    error = run("-q", "validate", digits_onnx, "--providers", "cuda", "--strict-ep")
    assert error.exit_code == 1 and error.output.startswith("error: requested cuda")


def test_verbose_and_quiet_exclude_each_other() -> None:
    result = run("-v", "-q", "doctor")
    assert result.exit_code == 2 and "exclude each other" in result.output


def test_the_cli_silences_only_onnxruntime_and_onnxsim() -> None:
    assert run("--help").exit_code == 0  # the group runs, installing its warning filters
    run("doctor", "--help")
    blanket = [f for f in warnings.filters if f[0] == "ignore" and f[1] is None and f[3] is None and f[2] is Warning]
    assert not blanket, blanket
    seen: list[str] = []
    with warnings.catch_warnings():
        from resnet_edge.cli import render

        render.install_warning_printer()
        warnings.showwarning = lambda message, *args, **kwargs: seen.append(str(message))
        warnings.warn_explicit("a third party's warning", UserWarning, "lib.py", 1, module="somelib")
        warnings.warn_explicit("onnxruntime's chatter", UserWarning, "ort.py", 1, module="onnxruntime.quantization")
        warnings.warn_explicit("onnxsim's chatter", UserWarning, "sim.py", 1, module="onnxsim")
        warnings.warn_explicit("not ours", UserWarning, "x.py", 1, module="onnxruntimeish")
    assert seen == ["a third party's warning", "not ours"]
