"""INT8: the per-target recipes, calibration, quantizing, its checks, mixed precision and the sensitivity analysis.

Built on the ONNX layer and the image sources; knows nothing of export, evaluation or the pipeline.

- :mod:`.configs`: the per-target table (:class:`Int8Target`, :class:`Int8Recipe`); imports no heavy library.
- :mod:`.options`: the stage's options (:class:`QuantizeOptions`, :class:`AccuracyGoal`); imports no heavy library.
- :mod:`.calibrate`: activation ranges from images (:func:`calibrate_onnx`).
- :mod:`.statistics`: those ranges reduced on the fly, as onnxruntime's calibrators compute them.
- :mod:`.quantize`: the stage (:func:`quantize_onnx`) and its checks.
- :mod:`.evaluate`: INT8 against FP32 on held-out images, and their speed side by side.
- :mod:`.coverage`: which compute ran as integer kernels.
- :mod:`.record`: the calibration record a quantized model carries (:class:`QuantizationRecord`), typed.
- :mod:`.mixed_precision`: keep the most sensitive blocks in FP32 until an accuracy goal holds.
- :mod:`.sensitivity`: the error by residual block.
- Accuracy recovery, each algorithm a module of its own that can be called alone: :mod:`.equalize` (cross-layer
  equalization, Nagel et al. 2019), :mod:`.bias_correction` (empirical, NNCF's fast variant), :mod:`.adaround`
  (Nagel et al. 2020), on :mod:`.weights` (weight grids: int8/int4, per tensor/channel/block, power-of-two) and
  :mod:`.qdq` (a QDQ graph's layers, read and rewritten); :mod:`.layer_data` reads the layers' inputs from images,
  :mod:`.recovery` runs the steps in order and records them, :mod:`.npu` holds the strict-integer target's rules.

The public names below are re-exported lazily: importing this package imports neither onnx nor onnxruntime.
"""

from __future__ import annotations

from resnet_edge._exports import lazy_exports

# Public names, by the submodule that defines them.
_EXPORTS = {
    **dict.fromkeys(("Format", "Int8Recipe", "Int8Target", "Method", "detect_target", "resolve_config"), "configs"),
    **dict.fromkeys(("Calibration", "calibrate_onnx"), "calibrate"),
    **dict.fromkeys(("QuantizeOptions", "AccuracyGoal"), "options"),
    **dict.fromkeys(("QuantizeResult", "quantize_onnx"), "quantize"),
    **dict.fromkeys(("Evaluation", "SpeedComparison"), "evaluate"),
    **dict.fromkeys(("IntegerCoverage",), "coverage"),
    **dict.fromkeys(("MixedPrecisionResult", "quantize_mixed_precision"), "mixed_precision"),
    **dict.fromkeys(("SensitivityOptions", "SensitivityResult", "analyze_sensitivity"), "sensitivity"),
    **dict.fromkeys(("Equalization", "equalize_model", "absorb_biases"), "equalize"),
    **dict.fromkeys(("BiasCorrection", "MeanInputs", "correct_biases"), "bias_correction"),
    **dict.fromkeys(("AdaRoundParameters", "LayerRounding", "adaround_layer", "adaround_layers"), "adaround"),
    **dict.fromkeys(("WeightGrid", "grid_scales", "round_to_nearest"), "weights"),
    **dict.fromkeys(("QuantizedLayer", "quantized_layers", "write_weights", "write_bias"), "qdq"),
    **dict.fromkeys(("Recovery", "recover_accuracy"), "recovery"),
    **dict.fromkeys(("QuantizationRecord", "RecoveryStep", "Judgement", "read_quantization_record"), "record"),
    **dict.fromkeys(("strict_integer_violations",), "npu"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
