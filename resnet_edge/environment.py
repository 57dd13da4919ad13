"""The machine and the libraries: what every report records and what ``resnet-edge doctor`` prints."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version


@dataclass(frozen=True)
class CpuInfo:
    model: str
    architecture: str  # x86_64, aarch64, ...
    logical_cores: int
    features: dict[str, bool]  # the ones that decide INT8 speed: avx2, avx512_vnni, avx_vnni, amx_int8, neon, dotprod

    @property
    def has_vnni(self) -> bool:
        return self.features.get("avx512_vnni", False) or self.features.get("avx_vnni", False)


@dataclass(frozen=True)
class Environment:
    cpu: CpuInfo
    python: str
    platform: str
    packages: dict[str, str | None]
    onnxruntime_providers: list[str]
    gpus: list[str]
    thread_settings: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # things that will go wrong, e.g. two onnxruntime builds
    # every execution provider: available or not, how it is reached, how to add it (runtime.ProviderStatus as dict)
    providers: list[dict[str, object]] = field(default_factory=list)


_X86_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")
_ARM_FLAGS = {"asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm"}
_PACKAGES = (
    "resnet-edge",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-ep-openvino",
    "openvino",
    "onnxsim",
    "numpy",
    "click",
)
# README's set-up step for CUDA: the CPU build out first, or it and onnxruntime-gpu overwrite each other's module
# and the CUDA provider silently disappears (issue 22: doctor gave the install without the uninstall).
GPU_RUNTIME_INSTALL = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'resnet-edge[gpu]'"
_ONNXRUNTIME_BUILDS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")  # each installs the same module
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@cache
def cpu_info() -> CpuInfo:
    arch = platform.machine()
    model, flags = _read_cpuinfo()
    if arch in ("x86_64", "AMD64"):
        features = {name: name in flags for name in _X86_FLAGS}
    else:
        features = {label: flag in flags for flag, label in _ARM_FLAGS.items()}
    return CpuInfo(
        model=model or platform.processor() or "unknown",
        architecture=arch,
        logical_cores=os.cpu_count() or 1,
        features=features,
    )


def _read_cpuinfo() -> tuple[str, set[str]]:
    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()  # noqa: SIM115 (tiny pseudo-file)
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def gpu_names() -> list[str]:
    """NVIDIA GPUs that nvidia-smi reports, or none."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


def collect_environment() -> Environment:
    """Everything a result needs to be repeatable and comparable: CPU, GPU, versions, thread settings."""
    packages = {name: package_version(name) for name in _PACKAGES}
    problems = []
    statuses: list[dict[str, object]] = []
    try:
        from dataclasses import asdict

        from resnet_edge.onnx.plugins import available_providers, provider_statuses

        providers = available_providers()  # plugins (OpenVINO) included
        statuses = [asdict(s) for s in provider_statuses()]
    except ImportError:
        providers = []
        problems.append("onnxruntime is not installed: pip install 'resnet-edge[cpu]' (or 'resnet-edge[gpu]')")
    builds = [name for name in _ONNXRUNTIME_BUILDS if packages[name]]
    if len(builds) > 1:
        keep = builds[-1]
        problems.append(
            f"{' and '.join(builds)} are installed together; they overwrite each other and a provider can silently"
            f" disappear: pip uninstall -y {' '.join(builds)} && pip install {keep}"
        )
    gpus = gpu_names()
    if gpus and "CUDAExecutionProvider" not in providers:
        problems.append(f"a GPU is present ({gpus[0]}) but onnxruntime has no CUDA provider: {GPU_RUNTIME_INSTALL}")
    return Environment(
        cpu=cpu_info(),
        python=platform.python_version(),
        platform=platform.platform(),
        packages=packages,
        onnxruntime_providers=providers,
        gpus=gpus,
        thread_settings={k: os.environ[k] for k in _THREAD_VARIABLES if k in os.environ},
        problems=problems,
        providers=statuses,
    )
