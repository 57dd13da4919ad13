"""resnet-edge: take a PyTorch ResNet to an edge-ready ONNX model.

The library is the product; the ``resnet-edge`` command is a thin layer over it. Each stage is one function that
returns a result dataclass: :func:`resnet_edge.training.train.train_model` (a checkpoint from images),
:func:`resnet_edge.conversion.export.export_onnx`, :func:`resnet_edge.conversion.simplify.simplify_onnx`,
:func:`resnet_edge.quantization.quantize.quantize_onnx`, :func:`resnet_edge.evaluation.validate.validate_models`,
:func:`resnet_edge.evaluation.benchmark.benchmark_models`, and :func:`resnet_edge.pipeline.run.run_pipeline` for all
of them but training. Each takes ``(source, output, options, *,
on_progress=None)`` (the sources first where there are several), with the options a frozen dataclass that checks
itself (:mod:`resnet_edge.conversion.options`, :mod:`resnet_edge.evaluation.options`); ``on_progress`` receives
:class:`resnet_edge.progress.Progress` events. DESIGN.md draws the layers.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("resnet-edge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
