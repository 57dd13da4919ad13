"""The device runner on its own: what it bundles, that it runs with only numpy and onnxruntime, its JSON errors."""

from __future__ import annotations

import ast
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from resnet_edge.cli.main import main
from resnet_edge.device.bundle import PACKAGE_STUBS, RUNNER_MODULES, write_runner
from resnet_edge.device.facts import Thermal, throttle_warning
from resnet_edge.evaluation.benchmark import benchmark_models
from resnet_edge.evaluation.options import BenchmarkOptions
from resnet_edge.jsonable import to_jsonable

# openvino: imported by onnx/openvino_runtime.py, which onnx/runtime.py imports only for the openvino-runtime
# backend once importlib.util.find_spec found it (issue 24); a device without it runs everything else
# (tests/onnx/test_runtime.py: the missing-openvino fallback).
ALLOWED = {"numpy", "onnxruntime", "resnet_edge", "openvino"}
MEMORY_LIMIT = 1500 * 2**20  # address space for the out-of-memory test: enough to start, too little for batch 32768


@pytest.fixture(scope="module")
def runner_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_runner(tmp_path_factory.mktemp("runner") / "runner.pyz").path


def _job(folder: Path, model: Path, **overrides: object) -> Path:
    """A job as the host writes it, with ``model`` uploaded beside it and a 4-image input pool."""
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    (folder / "models").mkdir(parents=True, exist_ok=True)
    shutil.copy(model, folder / "models" / f"{sha}.onnx")
    np.savez(folder / "inputs.npz", pool_0=np.random.default_rng(0).random((4, 3, 32, 32), np.float32))
    job = {
        "format": 1,
        "action": "benchmark",
        "models": [{"label": model.name, "sha256": sha, "input": "pool_0", "upload": f"models/{sha}.onnx"}],
        "inputs": "inputs.npz",
        "providers": ["cpu"],
        "strict_ep": False,
        "threads": 1,
        "batch_sizes": [1],
        "warmup": 1,
        "iterations": 3,
        "cache_dir": str(folder / "cache"),
        **overrides,
    }
    (folder / "job.json").write_text(json.dumps(job))
    return folder / "job.json"


def _run(python: Path, runner: Path, *args: str, limit: int | None = None) -> tuple[int, dict, str]:
    def restrict() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run(
        [str(python), str(runner), *args],
        capture_output=True,
        text=True,
        preexec_fn=restrict if limit else None,
        cwd=runner.parent,
    )
    assert done.stdout.count("\n") == 1, done.stdout + done.stderr  # exactly one JSON line
    return done.returncode, json.loads(done.stdout), done.stderr


def test_runner_bundles_exactly_the_device_modules_and_they_import_nothing_else(runner_file: Path) -> None:
    names = set(zipfile.ZipFile(runner_file).namelist())
    shipped = (*PACKAGE_STUBS, *RUNNER_MODULES)
    assert names == {"__main__.py", "resnet_edge/__init__.py", *(f"resnet_edge/{m}" for m in shipped)}
    for stub in PACKAGE_STUBS:  # a package's own __init__ may import what a device lacks: the runner's imports nothing
        assert not _runtime_imports(ast.parse(zipfile.ZipFile(runner_file).read(f"resnet_edge/{stub}")))
    for module in RUNNER_MODULES:
        imports = _runtime_imports(ast.parse(zipfile.ZipFile(runner_file).read(f"resnet_edge/{module}")))
        outside = {name.split(".")[0] for name in imports} - set(sys.stdlib_module_names) - ALLOWED
        assert not outside, f"{module} imports {outside}"
        inner = {name for name in imports if name.startswith("resnet_edge")}
        bundled = {f"resnet_edge.{m[:-3].replace('/', '.').removesuffix('.__init__')}" for m in shipped}
        assert inner <= bundled, f"{module} imports {inner - bundled}"


def _runtime_imports(tree: ast.AST) -> set[str]:
    """Absolute imports that run (those under ``if TYPE_CHECKING:`` are for type hints only)."""
    hints = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    names = set()
    for node in ast.walk(tree):
        if id(node) in hints:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_runner_times_with_the_benchmark_schema_in_a_venv_with_only_numpy_and_onnxruntime(
    device_python: Path, runner_file: Path, digits_int8: Path, tmp_path: Path
) -> None:
    for package in ("torch", "onnx", "click", "resnet_edge", "PIL"):
        probe = subprocess.run([str(device_python), "-c", f"import {package}"], capture_output=True, cwd=tmp_path)
        assert probe.returncode != 0, f"the device venv must not hold {package}"
    code, facts, _ = _run(device_python, runner_file, "--facts")
    assert (
        code == 0
        and facts["facts"]["onnxruntime"]
        and "CPUExecutionProvider" in facts["facts"]["onnxruntime_providers"]
    )

    code, result, _ = _run(device_python, runner_file, str(_job(tmp_path / "job", digits_int8, batch_sizes=[1, 3])))
    assert code == 0, result
    timed = result["benchmark"]["cpu"]["timed"]
    assert [(t["batch"], t["latency"]["iterations"]) for t in timed] == [(1, 3), (3, 3)]
    local = benchmark_models([digits_int8], BenchmarkOptions(iterations=2, warmup=0, threads=1))
    assert set(timed[0]["latency"]) == set(to_jsonable(local.rows[0].latency))  # one schema: the same LatencyStats
    assert result["cache"]["installed"] and result["cache"]["bytes_installed"] == digits_int8.stat().st_size
    assert result["benchmark"]["cpu"]["sessions"][digits_int8.name]["cold_start_ms"] > 0
    assert set(result["thermal"]["before"]) == {"cpu_mhz", "cpu_max_mhz", "temperature_c", "zones"}


def test_runner_errors_are_json_lines_never_tracebacks(
    device_python: Path, runner_file: Path, digits_int8: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07 not a model at all")
    code, result, err = _run(device_python, runner_file, str(_job(tmp_path / "a", broken)))
    assert code == 1 and result["error"]["kind"] == "model" and "broken.onnx" in result["error"]["message"]
    assert "Traceback" not in err

    code, result, _ = _run(
        device_python, runner_file, str(_job(tmp_path / "b", digits_int8, providers=["cuda"], strict_ep=True))
    )
    assert code == 1 and result["error"]["kind"] == "provider"
    assert "requested cuda: CUDAExecutionProvider is not available" in result["error"]["message"]

    code, result, _ = _run(device_python, runner_file, str(tmp_path / "missing.json"))
    assert code == 1 and result["error"]["kind"] == "job"


def test_out_of_memory_at_one_batch_size_skips_it_and_the_others_run(
    device_python: Path, runner_file: Path, digits_int8: Path, tmp_path: Path
) -> None:
    job = _job(tmp_path / "job", digits_int8, batch_sizes=[1, 32768, 2], iterations=1, warmup=0)
    code, result, err = _run(device_python, runner_file, str(job), limit=MEMORY_LIMIT)
    assert code == 0, result
    timed = {t["batch"]: t for t in result["benchmark"]["cpu"]["timed"]}
    assert timed[32768]["latency"] is None and timed[32768]["skipped"].startswith("out of memory at batch 32768")
    assert timed[1]["latency"] and timed[2]["latency"]
    assert "Traceback" not in err


def test_runner_command_writes_an_executable_zipapp(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["runner", "-o", str(tmp_path / "r.pyz")])
    assert result.exit_code == 0, result.output
    data = (tmp_path / "r.pyz").read_bytes()
    assert data.startswith(b"#!/usr/bin/env python3\n") and (tmp_path / "r.pyz").stat().st_mode & 0o111
    assert "needs Python >=3.8" in result.output
    assert data == write_runner(tmp_path / "again.pyz").path.read_bytes()  # reproducible bytes


def test_throttling_is_a_warning_and_unreadable_clocks_are_not() -> None:
    cool, hot = Thermal(2400.0, 2400.0, 45.0), Thermal(1500.0, 2400.0, 84.0)
    assert "dropped by 38%" in throttle_warning(cool, hot) and "45 -> 84 C" in throttle_warning(cool, hot)
    assert throttle_warning(cool, Thermal(2300.0, 2400.0, 50.0)) is None  # within THROTTLE_DROP
    assert throttle_warning(Thermal(None, None, None), Thermal(None, None, None)) is None


def test_facts_say_which_openvino_runtime_is_here() -> None:
    # The device's OpenVINO runtime (or None) decides whether tune tries openvino-runtime there (issue 24).
    from resnet_edge.device.facts import collect_facts
    from resnet_edge.onnx.plugins import openvino_runtime_version

    assert collect_facts().openvino == openvino_runtime_version()


def test_facts_on_an_interpreter_without_numpy_or_onnxruntime_say_it_cannot_run_jobs(runner_file: Path) -> None:
    # -I -S: this venv's interpreter without any site-packages, so neither numpy nor onnxruntime imports (issue 22).
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(runner_file), "--facts"],
        capture_output=True,
        text=True,
        cwd=runner_file.parent,
    )
    answer = json.loads(done.stdout)
    assert done.returncode == 1 and answer["ok"] is False and answer["facts"]["numpy"] is None
    assert answer["facts"]["openvino"] is None  # nor the OpenVINO runtime
    assert answer["error"]["kind"] == "missing_package" and "cannot run jobs" in answer["error"]["message"]
    assert f"{sys.executable} -m pip install numpy onnxruntime" in answer["error"]["message"]


def test_readme_states_the_runner_size_as_measured(tmp_path: Path) -> None:
    # README's figure is the built runner's size in whole KiB: measured here, not written by hand (issue 22).
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    stated = re.findall(r"one (\d+) KiB zipapp", readme)
    size = write_runner(tmp_path / "runner.pyz").size_bytes
    assert stated == [str(round(size / 1024))], f"README says {stated} KiB; the runner is {size / 1024:.1f} KiB"


def test_a_provider_that_fell_back_beside_cpu_is_not_run_twice(
    digits_int8: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--providers cpu,cuda`` without a GPU on a device: the cuda row shares the cpu run's outputs and says it fell
    back (as validate does on the host), instead of running the same CPU session twice."""
    import base64
    import io

    from resnet_edge.device.protocol import output_key, session_key
    from resnet_edge.device.runner import run_job
    from resnet_edge.onnx.runtime import Session

    calls: list[str] = []
    logits = Session.logits
    monkeypatch.setattr(
        Session, "logits", lambda self, images: calls.append(self.requested.name) or logits(self, images)
    )
    job = _job(tmp_path / "job", digits_int8, action="validate", providers=["cpu", "cuda"], validate_batch=4)
    result = run_job(json.loads(job.read_text()), str(job.parent))
    assert calls == ["cpu"]  # one batch of 4 images, on the cpu session only
    sessions = result["validate"]["sessions"]
    assert sessions[session_key(0, "cuda")]["ran_on"] == sessions[session_key(0, "cpu")]["ran_on"] == "cpu"
    outputs = np.load(io.BytesIO(base64.b64decode(result["validate"]["outputs_npz_b64"])))
    np.testing.assert_array_equal(outputs[output_key(0, "cuda")], outputs[output_key(0, "cpu")])


@pytest.mark.parametrize("openvino", ["2026.4.1", None])
def test_tune_on_a_device_tries_the_openvino_runtime_only_where_the_device_has_it(
    openvino: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The device's facts (``openvino``: its runtime's version, or None) decide whether tune's candidates there
    include ``openvino-runtime``, as the host's installed packages decide it here (issue 24)."""
    import dataclasses
    import types

    from resnet_edge.device import fleet
    from resnet_edge.device.facts import collect_facts
    from resnet_edge.evaluation import tune
    from resnet_edge.evaluation.options import TuneOptions
    from resnet_edge.onnx.providers import OPENVINO_RUNTIME

    facts = dataclasses.replace(collect_facts(), openvino=openvino, onnxruntime_providers=["CPUExecutionProvider"])
    run = types.SimpleNamespace(device=facts, target="ssh://device", emulated=False)
    monkeypatch.setattr(fleet, "target_facts", lambda *args, **kwargs: run)
    sites = []
    monkeypatch.setattr(tune, "tune_model", lambda *args, site, **kwargs: sites.append(site))
    fleet.tune_on_target(tmp_path / "m.onnx", tmp_path / "t.onnx", TuneOptions(), "ssh://device")
    assert sites[0].providers == ("CPUExecutionProvider",) + ((OPENVINO_RUNTIME,) if openvino else ())
