"""The per-target recipes and the quantize options, without quantizing anything (fast)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_edge.errors import OptionError
from resnet_edge.quantization.calibrate import quiet_onnxruntime
from resnet_edge.quantization.configs import Format, Int8Target, Method
from resnet_edge.quantization.options import QuantizeOptions


def test_configs_import_no_heavy_library() -> None:
    code = (
        "import sys, resnet_edge.quantization.configs, resnet_edge.quantization, resnet_edge.onnx;"
        " print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_options_check_themselves() -> None:
    options = QuantizeOptions(method="entropy", format="qoperator", target="arm64", exclude=["fc"])
    assert options.method is Method.ENTROPY and options.format is Format.QOPERATOR
    assert options.target is Int8Target.ARM64 and options.exclude == ("fc",)
    with pytest.raises(OptionError, match="limit must be at least 1"):
        QuantizeOptions(limit=0)
    with pytest.raises(OptionError, match="target must be one of auto, x86-vnni"):
        QuantizeOptions(target="riscv")


def test_silencing_onnxruntime_leaves_the_root_logger_alone() -> None:
    import onnxruntime

    root = logging.getLogger()
    level, filters = root.level, list(root.filters)
    ort_file = str(Path(onnxruntime.__file__).parent / "quantization" / "quantize.py")

    def record(pathname: str, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("root", level, pathname, 1, "message", None, None)

    with quiet_onnxruntime():
        assert root.level == level  # the issue: quantize used to raise the root logger's level
        assert logging.getLogger("onnxruntime").level == logging.ERROR
        assert not root.filter(record(ort_file))  # onnxruntime's own warnings through logging.warning()
        assert root.filter(record(ort_file, logging.ERROR))
        assert root.filter(record(__file__))  # anyone else's
    assert root.level == level and root.filters == filters
