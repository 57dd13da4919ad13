"""Accuracy recovery after onnxruntime's quantizer: the steps a recipe asks for, in order, each judged and recorded.

The algorithms live in their own modules and can be called alone (AIMET's way): :mod:`.equalize`,
:mod:`.bias_correction`, :mod:`.adaround`, with :mod:`.weights` for the weight grids and :mod:`.qdq` for reading and
writing the quantized graph. This module runs them in the one order that makes sense and keeps the record:

1. **Grid** (when resnet-edge writes the weights: 4-bit, power-of-two scales, AdaRound): activation scales to powers
   of two if asked, every weight re-quantized on its grid by rounding to nearest, biases re-derived on the new
   scales. This is the model the steps below start from (round-to-nearest INT4, say).
2. **Equalization** ran on the FP32 model before calibration (:func:`~.calibrate.prepare_job`); it is judged here
   against the same recipe applied to the unequalized model, which takes a second calibration.
3. **AdaRound**: the weights' rounding, learned layer by layer.
4. **Bias correction**: last, so that it corrects the error the final weights leave.

Each step is judged on the held-out images (top-1 agreement with FP32, and accuracy where they are labelled) before
and after, unless judging is off; the judgements go to the calibration record with what each step did.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from resnet_edge.progress import ProgressCallback
from resnet_edge.quantization.adaround import AdaRoundParameters, LayerSamples, adaround_layers, adaround_record
from resnet_edge.quantization.bias_correction import MeanInputs, correct_biases
from resnet_edge.quantization.calibrate import Job
from resnet_edge.quantization.configs import Int8Recipe
from resnet_edge.quantization.layer_data import read_layer_inputs
from resnet_edge.quantization.options import QuantizeOptions
from resnet_edge.quantization.qdq import (
    INT4_OPSET,
    QuantizedLayer,
    power_of_two_activations,
    quantized_layers,
    require_opset,
    write_bias,
    write_weights,
)
from resnet_edge.quantization.record import Judgement, RecoveryStep, WeightGridRecord
from resnet_edge.quantization.weights import WeightGrid, expand_scale, grid_scales, recipe_grid, round_to_nearest

__all__ = ["REFERENCES", "Recovery", "recover_accuracy"]

REFERENCES = {
    "equalize": "Nagel et al. 2019, Data-Free Quantization Through Weight Equalization and Bias Correction, sec. 4.1",
    "adaround": "Nagel et al. 2020, Up or Down? Adaptive Rounding for Post-Training Quantization",
    "bias_correction": "Nagel et al. 2019, sec. 4.2 (empirical); NNCF's FastBiasCorrection",
}


@dataclass(frozen=True)
class Recovery:
    """The model after every step, and the steps.

    Attributes:
        model: the quantized model (the one given, changed in place).
        steps: the steps that ran, in order.
        grid: the weight grid resnet-edge wrote (None when onnxruntime's weights were kept).
        reading_seconds: time to read the layer inputs from the calibration images (AdaRound, bias correction).
        judged: whether the steps were judged, and if not why.
    """

    model: onnx.ModelProto = field(repr=False)
    steps: list[RecoveryStep]
    grid: WeightGridRecord | None
    reading_seconds: float | None
    judged: str


def recover_accuracy(
    int8: onnx.ModelProto,
    float_model: onnx.ModelProto,
    job: Job,
    options: QuantizeOptions,
    *,
    judge: Callable[[onnx.ModelProto], Judgement] | None = None,
    unequalized: Callable[[], tuple[onnx.ModelProto, onnx.ModelProto]] | None = None,
    not_judged: str = "judged on the held-out images",
    on_progress: ProgressCallback | None = None,
) -> Recovery:
    """Run the recipe's accuracy-recovery steps on a quantized model, in place.

    Args:
        int8: onnxruntime's QDQ model of ``float_model``.
        float_model: the FP32 model it was quantized from (onnxruntime's pre-processed copy: the node names match).
        job: the quantization job (its recipe, calibration images and equalization).
        options: AdaRound's iterations, time budget and seed.
        judge: judges a model on the held-out images; None to judge nothing.
        unequalized: quantizes the model without equalization and returns it with its float model (for the
            equalization step's "before"); None to leave that unjudged.
        not_judged: what the record says about judging when ``judge`` is None.
        on_progress: reading the layer inputs (per image) and AdaRound (per layer).

    Returns:
        The model and the steps.
    """
    config = job.config
    steps: list[RecoveryStep] = []
    layers = quantized_layers(int8, float_model)
    grid_record = None
    scales: dict[str, np.ndarray] = {}
    if config.rewrites_weights:
        scales, grid_record = _write_grid(int8, float_model, layers, config, recipe_grid(config))
        layers = quantized_layers(int8, float_model)  # the input scales may have changed
    current: Judgement | None = None
    if config.equalize and job.equalization is not None:
        steps.append(_equalize_step(int8, job, judge, unequalized))
        current = steps[-1].after

    # AdaRound and bias correction read im2col patches, which a grouped convolution (not in these ResNets) does not
    # take: such layers keep their nearest rounding and their bias, and the record names them.
    skipped = [layer.name for layer in layers if layer.group != 1]
    layers = [layer for layer in layers if layer.group == 1]
    means, samples, reading = _read_inputs(float_model, layers, job, options, on_progress)

    if config.adaround and samples is not None:
        before = current if current is not None or judge is None else judge(int8)
        steps.append(
            _adaround_step(
                int8, layers, scales, recipe_grid(config), samples, options, before, judge, skipped, on_progress
            )
        )
        current = steps[-1].after

    if config.bias_correction and means is not None:
        before = current if current is not None or judge is None else judge(int8)
        steps.append(_bias_correction_step(int8, layers, means, before, judge, skipped))
    return Recovery(
        model=int8,
        steps=steps,
        grid=grid_record,
        reading_seconds=reading,
        judged="judged on the held-out images" if judge is not None else not_judged,
    )


def _read_inputs(
    float_model: onnx.ModelProto,
    layers: list[QuantizedLayer],
    job: Job,
    options: QuantizeOptions,
    on_progress: ProgressCallback | None,
) -> tuple[MeanInputs | None, LayerSamples | None, float | None]:
    """The layers' inputs on the calibration images, read once for both steps that need them: their means (bias
    correction) and a sample of rows (AdaRound); None for a step the recipe skips, and the seconds taken."""
    config = job.config
    if not (config.adaround or config.bias_correction):
        return None, None, None
    started = time.perf_counter()
    means = MeanInputs() if config.bias_correction else None
    samples = LayerSamples(layers, len(job.calib_indices), seed=options.seed) if config.adaround else None
    collectors = [c for c in (means, samples) if c is not None]
    read_layer_inputs(
        float_model, layers, job.calib_source, job.spec, job.calib_indices, collectors, on_progress=on_progress
    )
    return means, samples, time.perf_counter() - started


def _equalize_step(
    int8: onnx.ModelProto,
    job: Job,
    judge: Callable[[onnx.ModelProto], Judgement] | None,
    unequalized: Callable[[], tuple[onnx.ModelProto, onnx.ModelProto]] | None,
) -> RecoveryStep:
    """Equalization, which ran before calibration: judged against the same recipe on the unequalized model."""
    config = job.config
    before = None
    if judge is not None and unequalized is not None:
        base, base_float = unequalized()
        if config.rewrites_weights:
            _write_grid(base, base_float, quantized_layers(base, base_float), config, recipe_grid(config))
        before = judge(base)
    after = judge(int8) if judge is not None else None
    equalization = job.equalization
    return RecoveryStep("equalize", REFERENCES["equalize"], equalization.seconds, before, after, equalization.record())


def _adaround_step(
    int8: onnx.ModelProto,
    layers: list[QuantizedLayer],
    scales: dict[str, np.ndarray],
    grid: WeightGrid,
    samples: LayerSamples,
    options: QuantizeOptions,
    before: Judgement | None,
    judge: Callable[[onnx.ModelProto], Judgement] | None,
    skipped: list[str],
    on_progress: ProgressCallback | None,
) -> RecoveryStep:
    """AdaRound on every layer, the learned integers written into ``int8``; ``skipped``: the grouped layers left."""
    parameters = AdaRoundParameters(
        iterations=options.adaround_iterations, seconds=options.adaround_seconds, seed=options.seed
    )
    started = time.perf_counter()
    found, report = adaround_layers(layers, scales, grid, samples, parameters, on_progress=on_progress)
    for layer in layers:
        write_weights(int8, layer, found[layer.name], scales[layer.name], bits=grid.bits, block=grid.block)
    seconds = time.perf_counter() - started
    after = judge(int8) if judge is not None else None
    details = adaround_record(report, parameters, samples, grouped_layers_skipped=skipped)
    return RecoveryStep("adaround", REFERENCES["adaround"], seconds, before, after, details)


def _bias_correction_step(
    int8: onnx.ModelProto,
    layers: list[QuantizedLayer],
    means: MeanInputs,
    before: Judgement | None,
    judge: Callable[[onnx.ModelProto], Judgement] | None,
    skipped: list[str],
) -> RecoveryStep:
    """Each layer's bias corrected by its measured mean shift, in ``int8``; ``skipped``: the grouped layers left."""
    started = time.perf_counter()
    correction = correct_biases(int8, layers, means)
    seconds = time.perf_counter() - started
    after = judge(int8) if judge is not None else None
    details = correction.record(grouped_layers_skipped=skipped)
    return RecoveryStep("bias_correction", REFERENCES["bias_correction"], seconds, before, after, details)


def _write_grid(
    qdq: onnx.ModelProto,
    float_model: onnx.ModelProto,
    layers: list[QuantizedLayer],
    config: Int8Recipe,
    grid: WeightGrid,
) -> tuple[dict[str, np.ndarray], WeightGridRecord]:
    """Power-of-two activation scales (if asked), every weight rounded to nearest on ``grid``, biases re-derived."""
    activations = power_of_two_activations(qdq) if config.power_of_two else 0
    if activations:
        layers = quantized_layers(qdq, float_model)
    if grid.bits == 4:
        require_opset(qdq, INT4_OPSET)
    scales = {}
    error = total = 0.0
    for layer in layers:
        scale = grid_scales(layer.weight, grid)
        integers = round_to_nearest(layer.weight, scale, grid)
        write_weights(qdq, layer, integers, scale, bits=grid.bits, block=grid.block)
        if layer.bias is not None:
            write_bias(qdq, layer, layer.bias)
        scales[layer.name] = scale
        error += float(np.square(layer.weight - integers * expand_scale(scale, layer.weight.shape, grid)).sum())
        total += float(np.square(layer.weight).sum())
    return scales, WeightGridRecord(
        grid=grid.describe(),
        bits=grid.bits,
        block=grid.block,
        power_of_two=grid.power_of_two,
        activation_scales_power_of_two=activations,
        layers=len(layers),
        weight_sqnr_db=float(10 * np.log10(total / error)) if error > 0 else None,
        opset=INT4_OPSET if grid.bits == 4 else None,
    )
