"""INT8: the per-target recipes, calibration, quantizing, its checks, mixed precision and the sensitivity analysis.

Built on the ONNX layer and the image sources; knows nothing of export, evaluation or the pipeline.

- :mod:`.configs`: the per-target table (:class:`Int8Target`, :class:`Int8Recipe`); imports no heavy library.
- :mod:`.options`: the stage's options (:class:`QuantizeOptions`, :class:`AccuracyGoal`); imports no heavy library.
- :mod:`.calibrate`: activation ranges from images (:func:`calibrate_onnx`).
- :mod:`.quantize`: the stage (:func:`quantize_onnx`) and its checks.
- :mod:`.evaluate`: INT8 against FP32 on held-out images, and their speed side by side.
- :mod:`.coverage`: which compute ran as integer kernels.
- :mod:`.mixed_precision`: keep the most sensitive blocks in FP32 until an accuracy goal holds.
- :mod:`.sensitivity`: the error by residual block.

The public names below are re-exported lazily: importing this package imports neither onnx nor onnxruntime.
"""

from __future__ import annotations

from resnet_edge._exports import lazy_exports

# Public name -> the submodule that defines it.
_EXPORTS = {
    "Format": "configs",
    "Int8Recipe": "configs",
    "Int8Target": "configs",
    "Method": "configs",
    "detect_target": "configs",
    "resolve_config": "configs",
    "Calibration": "calibrate",
    "calibrate_onnx": "calibrate",
    "QuantizeOptions": "options",
    "QuantizeResult": "quantize",
    "quantize_onnx": "quantize",
    "Evaluation": "evaluate",
    "SpeedComparison": "evaluate",
    "IntegerCoverage": "coverage",
    "AccuracyGoal": "options",
    "MixedPrecisionResult": "mixed_precision",
    "quantize_mixed_precision": "mixed_precision",
    "SensitivityOptions": "sensitivity",
    "SensitivityResult": "sensitivity",
    "analyze_sensitivity": "sensitivity",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
