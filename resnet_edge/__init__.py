"""resnet-edge: take a PyTorch ResNet to an edge-ready ONNX model.

The library is the product; the ``resnet-edge`` command is a thin layer over it. Each stage is one function that
returns a result dataclass: :func:`resnet_edge.export.export_onnx`, :func:`resnet_edge.simplify.simplify_onnx`,
:func:`resnet_edge.quantize.quantize_onnx`, :func:`resnet_edge.validate.validate_models`,
:func:`resnet_edge.benchmark.benchmark_models`, and :func:`resnet_edge.pipeline.run_pipeline` for all of them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("resnet-edge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
