"""Build the device runner: one zipapp holding exactly the modules a device needs, nothing else of resnet-edge."""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from resnet_edge import __version__
from resnet_edge.artifacts import atomic_output, require_writable_destination
from resnet_edge.errors import InputFileError

# The modules the runner imports (they import only the standard library, numpy and onnxruntime), by package path.
RUNNER_MODULES = (
    "errors.py",
    "onnx/op_types.py",
    "onnx/openvino_runtime.py",
    "onnx/placement.py",
    "onnx/plugins.py",
    "onnx/providers.py",
    "onnx/runtime.py",
    "timing.py",
    "device/__init__.py",
    "device/facts.py",
    "device/protocol.py",
    "device/runner.py",
)
MIN_PYTHON = (3, 8)
# Kept parseable by any Python, so that a too-old interpreter still gets a JSON answer rather than a SyntaxError.
_MAIN = """import sys
if sys.version_info < {min_python!r}:
    sys.stdout.write('{{"ok": false, "format": 1, "error": {{"kind": "python", "message": '
                     '"the runner needs Python {min_text} or newer, this is ' + sys.version.split()[0] + '"}}}}\\n')
    sys.exit(1)
from resnet_edge.device.runner import main
sys.exit(main())
"""
_INIT = '"""resnet-edge device runner (a subset of resnet-edge {version})."""\n\n__version__ = "{version}"\n'
# Packages whose own __init__ re-exports modules a device lacks (onnx): the runner gets an empty one instead.
PACKAGE_STUBS = ("onnx/__init__.py",)
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # same bytes for the same sources: the runner's hash names it


@dataclass(frozen=True)
class RunnerFile:
    path: Path
    size_bytes: int
    sha256: str
    modules: list[str]
    python: str  # the oldest Python it runs on


def runner_bytes() -> bytes:
    """The runner zipapp as bytes (deterministic for the same sources)."""
    package = Path(__file__).resolve().parent.parent
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:

        def add(name: str, text: str) -> None:
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, text)

        min_text = ".".join(map(str, MIN_PYTHON))
        add("__main__.py", _MAIN.format(min_python=MIN_PYTHON, min_text=min_text))
        add("resnet_edge/__init__.py", _INIT.format(version=__version__))
        for stub in PACKAGE_STUBS:
            add(f"resnet_edge/{stub}", '"""Only what the device runner needs."""\n')
        for module in RUNNER_MODULES:
            add(f"resnet_edge/{module}", (package / module).read_text(encoding="utf-8"))
    return b"#!/usr/bin/env python3\n" + buffer.getvalue()


def write_runner(output: Path | str) -> RunnerFile:
    """Write the runner to ``output`` (atomically, executable).

    Raises:
        InputFileError: the destination folder is missing or not writable, or ``output`` is a file that is not a
            runner written earlier (never written over: it is not ours).
    """
    output = require_writable_destination(output)
    if output.exists() and not _is_runner(output):
        raise InputFileError(f"{output} exists and is not a resnet-edge runner; choose another name (nothing written)")
    data = runner_bytes()
    with atomic_output(output) as tmp:
        tmp.write_bytes(data)
        tmp.chmod(0o755)
    output.chmod(0o755)
    return RunnerFile(
        path=output,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        modules=[
            "__main__.py",
            "resnet_edge/__init__.py",
            *(f"resnet_edge/{m}" for m in (*PACKAGE_STUBS, *RUNNER_MODULES)),
        ],
        python=">=" + ".".join(map(str, MIN_PYTHON)),
    )


def _is_runner(path: Path) -> bool:
    """A zipapp this module wrote: a zip holding the runner module."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "resnet_edge/device/runner.py" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
