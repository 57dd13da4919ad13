"""Shared fixtures: small models exported once per session, written only under pytest's temporary folders."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
import torch

from resnet_edge.conversion.export import export_onnx
from resnet_edge.conversion.options import ExportOptions
from resnet_edge.conversion.simplify import simplify_onnx
from resnet_edge.models.resnet import create_model

# Fixtures that export, simplify, quantize or run a model, build a venv or start a server, here and in the test
# modules. A test that uses one (directly or through another fixture) is marked slow, so that `pytest -m "not slow"`
# is the fast subset: unit tests on small hand-built inputs. Slow tests without such a fixture carry the mark.
SLOW_FIXTURES = frozenset(
    {
        *("digits_onnx", "digits_sim", "digits_int8", "tiny_onnx", "device_python", "ssh_server"),
        *("run_dir", "bn_file", "preact_onnx", "preact_sim", "exported", "digits_qoperator", "resnet18_models"),
        *("digits_result", "digits_validation", "results", "dim_calibration", "arm64_rootfs"),
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def digits_onnx(session_dir: Path) -> Path:
    """The built-in trained digits model, exported."""
    path = session_dir / "digits.onnx"
    export_onnx("builtin:digits-resnet20", path)
    return path


@pytest.fixture(scope="session")
def digits_sim(session_dir: Path, digits_onnx: Path) -> Path:
    path = session_dir / "digits.sim.onnx"
    simplify_onnx(digits_onnx, path)
    return path


@pytest.fixture(scope="session")
def digits_int8(session_dir: Path, digits_sim: Path) -> Path:
    from resnet_edge.quantization.options import QuantizeOptions
    from resnet_edge.quantization.quantize import quantize_onnx

    path = session_dir / "digits.int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_onnx(digits_sim, path, QuantizeOptions(measure_speed=False))
    return path


@pytest.fixture(scope="session")
def tiny_onnx(session_dir: Path) -> Path:
    """A fresh resnet20 at 32x32: the cheapest real ResNet export. Its random weights are seeded, so that it is the
    same model whichever test asks first (quantize judges it on the INT8 bar, where a random model sits near)."""
    path = session_dir / "tiny.onnx"
    torch.manual_seed(0)
    export_onnx(None, path, ExportOptions(arch="resnet20"))
    return path


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics, so folding it is a real computation to check."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
    return model


def export_with_batchnorm(path: Path, arch: str = "resnet18", size: int = 64, variant: str = "residual") -> Path:
    """An ONNX file as other tools write it: constant folding off, so every BatchNormalization survives."""
    model = randomize_batchnorm(create_model(arch, variant=variant)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, size, size),),
            str(path),
            dynamo=False,
            opset_version=17,
            do_constant_folding=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def bn_count(path: Path) -> int:
    return sum(node.op_type == "BatchNormalization" for node in onnx.load(str(path)).graph.node)


@dataclass
class FailingStage:
    """A pipeline stage that raises ``error`` in place of the stage ``name``: ``run_pipeline(config, outdir,
    stages=[FailingStage("quantize", error)])``."""

    name: str
    error: BaseException

    def run(self, source: object, output: Path | None, options: object, on_progress: object) -> None:
        raise self.error


@pytest.fixture(scope="session")
def device_python(request: pytest.FixtureRequest) -> Path:
    """A separate venv holding only numpy and onnxruntime (and what they need): the interpreter of a bare device.

    The same versions as here, so pip takes them from its cache. Kept in pytest's cache folder between sessions
    (keyed by the versions), because building it is most of the device tests' time.
    """
    import platform
    import shutil
    import subprocess
    import sys
    from importlib.metadata import version

    packages = [f"numpy=={version('numpy')}", f"onnxruntime=={version('onnxruntime')}"]
    key = "-".join(["device-venv", platform.python_version(), *(p.replace("==", "") for p in packages)])
    venv = request.config.cache.mkdir(key)
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import numpy, onnxruntime"], cwd=venv).returncode == 0:
        return python
    shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages],
        check=True,
        capture_output=True,
    )
    return python


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory: pytest.TempPathFactory):
    """A real OpenSSH server on 127.0.0.1 (see tests/sshd.py): aliases device, wrongkey and closed."""
    from tests.sshd import start_sshd

    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()
