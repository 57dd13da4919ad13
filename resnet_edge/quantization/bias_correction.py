"""Bias correction: remove the shift quantization adds to each layer's mean output, measured on calibration images.

Quantization error in the weights is not zero-mean per output channel: a channel whose weights mostly round up
gains a constant offset, which the next layers carry as a biased input (Nagel et al., "Data-Free Quantization
Through Weight Equalization and Bias Correction", ICCV 2019, section 4.2; their *empirical* variant measures the
shift on data). The correction adds that offset back to the bias:

    delta_b = E[W x + b] - E[W~ Q(x) + b] = W m(x) - W~ m(Q(x))

with ``W~`` the dequantized weights, ``Q(x)`` the layer's input on its quantization grid, and ``m(.)`` the mean
im2col patch over the calibration images and output positions: a convolution is linear, so the mean output is the
weights times the mean patch, exactly (zero padding included). That needs one pass of the FP32 model over the
calibration images and a vector per layer, whatever the model's size.

This is the local correction of NNCF's ``FastBiasCorrection`` (its default post-training step): each layer is
corrected for its own error given FP32 inputs, from one collection of statistics, not layer after layer through the
quantized model (NNCF's slower ``BiasCorrection``). NNCF runs the quantized layer once on a blob filled with each
input channel's mean; the mean patch here is the exact version of that blob. Like NNCF, a correction larger than
:data:`MAX_RELATIVE_SHIFT` times the bias's own magnitude is not applied (too few images to trust it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from resnet_edge.quantization.layer_data import mean_patch
from resnet_edge.quantization.qdq import QuantizedLayer, dequantized_weight, write_bias

__all__ = [
    "MAX_RELATIVE_SHIFT",
    "BiasCorrection",
    "BiasCorrectionRecord",
    "LayerBiasCorrection",
    "LayerBiasShift",
    "MeanInputs",
    "correct_biases",
]

# NNCF's FastBiasCorrection threshold (nncf.quantization.algorithms.fast_bias_correction, ``threshold=2.0``): a shift
# more than twice the bias is more likely noise in the statistics than an error worth moving the bias for.
MAX_RELATIVE_SHIFT = 2.0


class MeanInputs:
    """A :class:`~resnet_edge.quantization.layer_data.LayerConsumer` that sums each layer's input patches, FP32 and on
    the layer's input grid, over every image and output position: the two means bias correction needs."""

    def __init__(self) -> None:
        self._sums: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._counts: dict[str, int] = {}

    def add(self, layer: QuantizedLayer, x: np.ndarray) -> None:
        fp32, count = mean_patch(layer, x)
        quantized, _ = mean_patch(layer, layer.quantize_input(x))
        if layer.name in self._sums:
            a, b = self._sums[layer.name]
            fp32, quantized = a + fp32, b + quantized
        self._sums[layer.name] = (fp32, quantized)
        self._counts[layer.name] = self._counts.get(layer.name, 0) + count

    def means(self, layer: QuantizedLayer) -> tuple[np.ndarray, np.ndarray]:
        """The mean input patch of ``layer``, FP32 and quantized."""
        fp32, quantized = self._sums[layer.name]
        count = self._counts[layer.name]
        return fp32 / count, quantized / count


@dataclass(frozen=True)
class LayerBiasCorrection:
    """What bias correction did to one layer.

    Attributes:
        node: the Conv/Gemm.
        max_shift: the largest correction, in output units.
        mean_abs_shift: the mean correction's magnitude over output channels.
        relative: ``max_shift`` over the largest bias magnitude.
        applied: False when the correction exceeded :data:`MAX_RELATIVE_SHIFT` and was left out.
    """

    node: str
    max_shift: float
    mean_abs_shift: float
    relative: float
    applied: bool


@dataclass(frozen=True)
class LayerBiasShift:
    """One layer's correction as the record keeps it."""

    node: str
    max_shift: float | None
    relative: float | None
    applied: bool


@dataclass(frozen=True)
class BiasCorrectionRecord:
    """What the calibration record keeps of bias correction (the step's ``details``)."""

    layers_corrected: int
    layers_skipped: tuple[str, ...]  # corrections over :data:`MAX_RELATIVE_SHIFT`, left out
    max_relative_shift: float
    layers: tuple[LayerBiasShift, ...]
    grouped_layers_skipped: tuple[str, ...]  # layers it cannot read (grouped convolutions)


@dataclass(frozen=True)
class BiasCorrection:
    layers: list[LayerBiasCorrection]

    def record(self, *, grouped_layers_skipped: Sequence[str] = ()) -> BiasCorrectionRecord:
        """What the calibration record keeps of it; ``grouped_layers_skipped``: the layers it was not given."""
        return BiasCorrectionRecord(
            layers_corrected=sum(layer.applied for layer in self.layers),
            layers_skipped=tuple(layer.node for layer in self.layers if not layer.applied),
            max_relative_shift=MAX_RELATIVE_SHIFT,
            layers=tuple(LayerBiasShift(x.node, x.max_shift, x.relative, x.applied) for x in self.layers),
            grouped_layers_skipped=tuple(grouped_layers_skipped),
        )


def bias_shift(
    weight: np.ndarray, quantized_weight: np.ndarray, mean_input: np.ndarray, mean_quantized: np.ndarray
) -> np.ndarray:
    """``W m(x) - W~ m(Q(x))`` per output channel (weights output channel first, means flattened like them)."""
    w = weight.reshape(weight.shape[0], -1).astype(np.float64)
    wq = quantized_weight.reshape(weight.shape[0], -1).astype(np.float64)
    return (w @ mean_input - wq @ mean_quantized).astype(np.float32)


def correct_biases(qdq: onnx.ModelProto, layers: Sequence[QuantizedLayer], means: MeanInputs) -> BiasCorrection:
    """Add each layer's measured mean shift to its bias in the QDQ model, in place.

    Args:
        qdq: the quantized model, with its final weights (correct after AdaRound, not before).
        layers: its layers (:func:`~resnet_edge.quantization.qdq.quantized_layers`).
        means: the layers' mean inputs on the calibration images.

    Returns:
        What was corrected, layer by layer.
    """
    found = []
    for layer in layers:
        mean_x, mean_q = means.means(layer)
        shift = bias_shift(layer.weight, dequantized_weight(qdq, layer), mean_x, mean_q)
        current = layer.bias if layer.bias is not None else np.zeros(layer.weight.shape[0], np.float32)
        scale = float(np.abs(current).max())
        largest = float(np.abs(shift).max())
        relative = largest / scale if scale > 0 else (0.0 if largest == 0 else float("inf"))
        applied = relative <= MAX_RELATIVE_SHIFT
        if applied:
            write_bias(qdq, layer, current + shift)
            layer.bias = current + shift
        found.append(LayerBiasCorrection(layer.name, largest, float(np.abs(shift).mean()), relative, applied))
    return BiasCorrection(found)
