"""The command line: help and version everywhere, one-line errors, exit codes, no partial output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from resnet_edge import __version__
from resnet_edge.cli.main import main

COMMANDS = sorted(main.commands)


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_version_and_help() -> None:
    assert run("--version").output.strip() == f"resnet-edge, version {__version__}"
    assert {"export", "simplify", "quantize", "validate", "benchmark", "pipeline", "inspect", "doctor"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = run(command, "--help")
    assert result.exit_code == 0 and "Usage: main " + command in result.output.replace("resnet-edge", "main")


def assert_one_line_error(result, *fragments: str, code: int = 1) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.slow
def test_export_simplify_inspect_round_trip(tmp_path: Path) -> None:
    result = run("export", "--arch", "resnet20", "-o", tmp_path / "m.onnx")
    assert result.exit_code == 0 and "wrote" in result.output and "batch" in result.output
    result = run("simplify", tmp_path / "m.onnx")
    assert result.exit_code == 0 and (tmp_path / "m.sim.onnx").exists()
    data = json.loads(run("inspect", tmp_path / "m.sim.onnx", "--json").output)
    assert data["batch_norm_nodes"] == [] and data["metadata"]["arch"] == "resnet20"
    assert (
        data["inputs"][0]["shape"] == ["batch", 3, 32, 32] and data["parameters"] == 272_474 - 1_456
    )  # 1,456 BN channels: scale and shift become one conv bias


@pytest.mark.slow
def test_export_json(tmp_path: Path) -> None:
    result = run("export", "--arch", "resnet20", "--batch", "2", "-o", tmp_path / "m.onnx", "--json")
    data = json.loads(result.stdout)  # stdout is JSON alone; the random-weights warning goes to stderr
    assert data["input_shape"] == [2, 3, 32, 32] and data["parity"]["2"]["top1_agreement"] == 1.0
    assert result.stderr.count("random weights") == 1
    # Progress names each step, on stderr (a ResNet-50 export took 34 s of silence: issue 22).
    assert "[export] export (torchscript exporter, opset 17) ..." in result.stderr
    assert "[export] check (onnxruntime against PyTorch) ..." in result.stderr


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "ONNX model not found"),
        (b"", "ONNX model is empty"),
        (b"garbage bytes", "not a readable ONNX model"),
    ],
)
def test_bad_model_files(tmp_path: Path, content: bytes | None, fragment: str) -> None:
    model = tmp_path / "m.onnx"
    if content is not None:
        model.write_bytes(content)
    for command in ("simplify", "quantize", "inspect", "validate", "benchmark"):
        assert_one_line_error(run(command, model), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if content is None else ["m.onnx"])


def test_truncated_model(tiny_onnx: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(tiny_onnx.read_bytes()[:5000])
    assert_one_line_error(run("simplify", cut, "-o", tmp_path / "out.onnx"), "cut.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_unknown_arch_is_a_usage_error() -> None:
    result = run("export", "--arch", "resnet19")
    assert result.exit_code == 2 and "resnet19" in result.output


def test_checkpoint_for_another_arch(tmp_path: Path) -> None:
    result = run("export", "--arch", "resnet32", "--weights", "builtin:digits-resnet20", "-o", tmp_path / "m.onnx")
    assert_one_line_error(result, "does not fit resnet32", "missing: layer1.3.conv1.weight")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_unwritable_output_folder(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root ignores permission bits; /proc refuses new files even to root
        locked = Path("/proc")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
    assert_one_line_error(run("export", "--arch", "resnet20", "-o", locked / "m.onnx"), "not writable")


def test_missing_output_folder(tmp_path: Path) -> None:
    assert_one_line_error(
        run("export", "--arch", "resnet20", "-o", tmp_path / "no" / "m.onnx"), "output folder does not exist"
    )


def test_bad_options_exit_2(tiny_onnx: Path) -> None:
    assert_one_line_error(run("export", "--arch", "resnet20", "--opset", "30"), "opsets 11 to 20", code=2)
    assert_one_line_error(run("benchmark", tiny_onnx, "--batch", "0"), "batch sizes must be at least 1", code=2)
    assert_one_line_error(run("benchmark", tiny_onnx, "--iterations", "0"), "iterations must be from 1 to", code=2)
    assert_one_line_error(run("benchmark", tiny_onnx, "--providers", "tpu"), "unknown execution provider", code=2)


def test_validate_exit_code_follows_thresholds(digits_onnx: Path, digits_int8: Path, tiny_onnx: Path) -> None:
    ok = run("validate", digits_onnx, digits_int8)
    assert ok.exit_code == 0 and "pass" in ok.output and "FAIL" not in ok.output
    bad = run("validate", digits_onnx, "--reference", tiny_onnx)
    assert_one_line_error(bad, "validation failed", "top-1 agreement")
    assert "FAIL" in bad.output


def test_validate_json(digits_onnx: Path) -> None:
    data = json.loads(run("validate", digits_onnx, "--json").output)
    assert data["passed"] and data["rows"][0]["parity"]["top1_agreement"] == 1.0


def test_cuda_request_without_cuda(digits_onnx: Path) -> None:
    from resnet_edge.onnx.plugins import available_providers

    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("this machine has the CUDA provider")
    result = run("validate", digits_onnx, "--providers", "cuda")
    assert result.exit_code == 0 and result.stdout.splitlines()[3].endswith("fell back to cpu")  # never "pass"
    assert "requested cuda: not available here; its rows ran on cpu" in result.output
    assert "warning: requested cuda" in result.output
    assert_one_line_error(
        run("validate", digits_onnx, "--providers", "cuda", "--strict-ep"), "requested cuda", "available"
    )


def test_quantize_says_it_judges_random_weights_by_logit_error(tiny_onnx: Path, tmp_path: Path) -> None:
    result = run("quantize", tiny_onnx, "-o", tmp_path / "r.onnx", "--calib", "builtin:photos", "--no-speed")
    assert result.exit_code == 0, result.output
    assert "judged by logit error, not top-1 agreement: the weights are random" in result.output
    assert "max logit error, output steps" in result.output and "logit cosine (worst image)" in result.output


def test_quantize_and_benchmark_commands(digits_sim: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    result = run("quantize", digits_sim, "-o", out, "--limit", "50", "--no-speed")
    assert result.exit_code == 0, result.output
    assert "top-1 agreement with FP32" in result.output and (tmp_path / "q.onnx.json").exists()
    assert "warning: calibrating on only 50 images" in result.output
    result = run(
        "benchmark",
        digits_sim,
        out,
        "--batch",
        "1,2",
        "--iterations",
        "3",
        "--warmup",
        "1",
        "-o",
        tmp_path / "bench.json",
    )
    assert result.exit_code == 0 and "p99" in result.output
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [r["batch"] for r in data["rows"]] == [1, 1, 2, 2]
    quiet = run("benchmark", digits_sim, "--iterations", "3", "--warmup", "1", "--json")
    assert json.loads(quiet.stdout)["rows"]  # stdout: the JSON alone; the progress goes to stderr, not away
    assert "[benchmark] open sessions on cpu (1 model, cold start and placement audit) ..." in quiet.stderr
    assert "timing" in quiet.stderr


def test_doctor() -> None:
    result = run("doctor")
    assert result.exit_code == 0 and "onnxruntime providers: " in result.output and "avx512_vnni" in result.output
    data = json.loads(run("doctor", "--json").output)
    assert data["packages"]["onnxruntime"] and "CPUExecutionProvider" in data["onnxruntime_providers"]


def test_doctors_gpu_hint_is_readmes_step_uninstall_first(monkeypatch: pytest.MonkeyPatch) -> None:
    # A GPU without a CUDA provider: the hint is README's set-up step, the CPU build uninstalled first (issue 22).
    from resnet_edge import environment

    monkeypatch.setattr(environment, "gpu_names", lambda: ["NVIDIA H200"])
    result = run("doctor")
    assert result.exit_code == 1
    line = next(line for line in result.output.splitlines() if "a GPU is present" in line)
    assert line.endswith(environment.GPU_RUNTIME_INSTALL) and "pip uninstall -y onnxruntime onnxruntime-gpu" in line
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert "first `pip uninstall -y onnxruntime onnxruntime-gpu`" in readme and "pip install '.[gpu]'" in readme


def test_help_is_fast_because_the_cli_imports_no_heavy_library() -> None:
    """``--help`` and ``--version`` import no torch, onnx or onnxruntime: those load inside the commands."""
    import subprocess
    import sys
    import time

    code = (
        "import sys, resnet_edge.cli.main;"
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy', 'matplotlib') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    started = time.perf_counter()
    help_run = subprocess.run(
        [sys.executable, "-m", "resnet_edge.cli.main", "--help"], capture_output=True, text=True, check=True
    )
    # Generous: about 0.2 s on an idle 2-core machine; importing torch alone took 2.4 s.
    assert time.perf_counter() - started < 2.0 and "pipeline" in help_run.stdout


def test_every_help_and_a_provider_string_load_no_heavy_library() -> None:
    """``resnet-edge --help``, each command's ``--help`` (the pipeline's flags are built from the options classes) and
    parsing ``--providers`` import no torch, onnx, onnxruntime or numpy: that import work, not click, is what made a
    slow ``--help`` (issue 23 asks for under 0.3 s; the imports below are the cause, and they are checked, not the
    clock, which a loaded machine would make flaky)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from resnet_edge.cli.main import main\n"
        "from resnet_edge.cli.options import parse_provider_list\n"
        "for args in [[], *([name] for name in main.commands)]:\n"
        "    try:\n"
        "        main.main([*args, '--help'], standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert [p.value for p in parse_provider_list('cpu,tensorrt[fp16=1]')] == ['cpu', 'tensorrt[fp16=1]']\n"
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules), file=sys.stderr)\n"
    )
    run_ = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pipeline" in run_.stdout and "--num-classes" in run_.stdout
    assert run_.stderr.strip().splitlines()[-1] == "[]"


def test_warnings_are_written_through_the_progress_bar(capsys: pytest.CaptureFixture) -> None:
    import sys
    import warnings

    from tqdm import tqdm

    from resnet_edge.cli import render
    from resnet_edge.errors import ResnetEdgeWarning

    saved = warnings.showwarning
    try:
        with warnings.catch_warnings():
            render.install_warning_printer()
            with tqdm(total=4, file=sys.stderr, desc="timing") as bar:
                bar.update(1)
                warnings.warn("noisy timing", ResnetEdgeWarning, stacklevel=1)
                bar.update(1)
    finally:
        warnings.showwarning = saved
    err = capsys.readouterr().err
    # tqdm clears the bar's line first: the warning starts a line of its own, never after the bar's text.
    assert "\nwarning: noisy timing" in err.replace("\r", "\n") and "|warning" not in err


def test_gitignore_keeps_the_default_output_folder_out() -> None:
    lines = (Path(__file__).resolve().parents[2] / ".gitignore").read_text().splitlines()
    assert "resnet-edge-out/" in lines


def test_the_cli_int8_targets_are_quantizes() -> None:
    """cli/options.py spells the INT8 targets out (so --help imports no quantization stack): they must agree."""
    from resnet_edge.cli.options import INT8_TARGETS
    from resnet_edge.quantization.configs import Int8Target

    assert tuple(t.value for t in Int8Target) == INT8_TARGETS


def test_the_reproduce_line_allows_an_accuracy_drop_only_when_needed() -> None:
    from resnet_edge.cli.convert import _quantize_command
    from resnet_edge.quantization.options import QuantizeOptions

    options = QuantizeOptions(calib="c/", label_map=Path("m.txt"))
    met = _quantize_command(Path("m.onnx"), Path("q.onnx"), options, ["fc"], allow_drop=False)
    assert met == "resnet-edge quantize m.onnx -o q.onnx --calib c/ --label-map m.txt --exclude fc"
    missed = _quantize_command(Path("m.onnx"), Path("q.onnx"), options, ["fc"], allow_drop=True)
    assert missed.endswith("--exclude fc --allow-accuracy-drop")


def test_inspect_shows_one_producer(digits_int8: Path) -> None:
    # onnxruntime's quantizer writes "onnx.quantize 0.1.0" into the header; resnet-edge's files say it once (issue 22).
    result = run("inspect", str(digits_int8))
    assert result.exit_code == 0, result.output
    assert f"producer resnet-edge {__version__}" in result.output.splitlines()[0]
    assert "onnx.quantize" not in result.output and result.output.count("resnet-edge") == 1
