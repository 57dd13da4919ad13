"""What each layer sees on the calibration images: the inputs of the FP32 model's Conv/Gemm layers, batch by batch.

Bias correction and AdaRound both learn from the activations entering each quantized layer. They are read here in
one pass of onnxruntime over the FP32 model with those tensors added as outputs, one batch at a time: each batch's
activations go to the consumers (:class:`LayerConsumer`) and are dropped, so memory holds one batch of activations
(about 45 MB an image for ResNet-50 at 224, all layers together) plus what the consumers keep. The patches of an
input a convolution reads at each output position (im2col) are computed here too.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import onnx

from resnet_edge.calibration.preprocess import PreprocessSpec
from resnet_edge.calibration.sources import ImageSource, iter_batches
from resnet_edge.onnx.runtime import open_session
from resnet_edge.progress import Progress, ProgressCallback
from resnet_edge.quantization.qdq import QuantizedLayer

__all__ = ["LAYER_DATA_BATCH", "LayerConsumer", "mean_patch", "output_positions", "patches", "read_layer_inputs"]

LAYER_DATA_BATCH = 4  # images per pass: every layer's input of a batch is in memory at once


class LayerConsumer(Protocol):
    """Takes each batch's input of each layer, FP32, as the FP32 model computes it."""

    def add(self, layer: QuantizedLayer, x: np.ndarray) -> None: ...


def read_layer_inputs(
    model: onnx.ModelProto,
    layers: Sequence[QuantizedLayer],
    source: ImageSource,
    spec: PreprocessSpec,
    indices: Sequence[int],
    consumers: Sequence[LayerConsumer],
    *,
    batch: int | None = None,
    step: str = "reading layer inputs",
    on_progress: ProgressCallback | None = None,
) -> int:
    """Run the FP32 ``model`` over the images and hand every layer's input, batch by batch, to each consumer.

    Args:
        model: the FP32 model the layers were quantized from.
        layers: the layers whose inputs are wanted.
        source, spec, indices: the images (the calibration images) and their preprocessing.
        consumers: called with (layer, input batch) for each layer of each batch.
        batch: images per run; the model's fixed batch if it has one, else :data:`LAYER_DATA_BATCH`.
        step, on_progress: progress as ``Progress("quantize", step, images done, images)``.

    Returns:
        The number of images read.
    """
    names = list(dict.fromkeys(layer.input_tensor for layer in layers))
    exposed = copy.deepcopy(model)
    present = {o.name for o in exposed.graph.output}
    for name in names:
        if name not in present:
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = open_session(exposed, classifier=False, audit=False)
    size = session.fixed_batch or batch or LAYER_DATA_BATCH
    done = 0
    for images, _ in iter_batches(source, spec, list(indices), size):
        values = dict(zip(names, session.predict(images, names), strict=True))
        for layer in layers:
            for consumer in consumers:
                consumer.add(layer, values[layer.input_tensor])
        done += len(images)
        if on_progress is not None:
            on_progress(Progress("quantize", step, done, len(indices), unit="img"))
    return done


def output_positions(layer: QuantizedLayer, height: int, width: int) -> tuple[int, int]:
    """A convolution's output height and width for an input of ``height`` x ``width``."""
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel, layer.strides, layer.dilations
    top, left, bottom, right = layer.pads
    return (
        (height + top + bottom - dh * (kh - 1) - 1) // sh + 1,
        (width + left + right - dw * (kw - 1) - 1) // sw + 1,
    )


def patches(
    layer: QuantizedLayer, x: np.ndarray, where: tuple[np.ndarray, np.ndarray, np.ndarray] | None
) -> np.ndarray:
    """The rows a layer multiplies its (flattened) weights with: for a Conv the input patch at each chosen output
    position (zero padding included), for a Gemm the input itself.

    Args:
        layer: a Conv with ``group`` 1, or a Gemm.
        x: the layer's input batch, NCHW (Conv) or (N, features) (Gemm).
        where: the output positions as (image, row, column) index arrays; None for a Gemm.

    Returns:
        Shape (positions, fan_in), ordered as the weights' (in, kh, kw).
    """
    if layer.op_type == "Gemm":
        return x.reshape(len(x), -1).astype(np.float32)
    n, y, c = where
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel, layer.strides, layer.dilations
    top, left, bottom, right = layer.pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    rows = y[:, None, None] * sh + (np.arange(kh) * dh)[None, :, None]  # (P, kh, 1)
    cols = c[:, None, None] * sw + (np.arange(kw) * dw)[None, None, :]  # (P, 1, kw)
    picked = padded[n[:, None, None], :, rows, cols]  # (P, kh, kw, C)
    return np.ascontiguousarray(np.moveaxis(picked, 3, 1)).reshape(len(n), -1).astype(np.float32)


def mean_patch(layer: QuantizedLayer, x: np.ndarray) -> tuple[np.ndarray, int]:
    """The sum over every image and output position of the layer's input patch (see :func:`patches`), and the
    number of positions summed: the mean patch is their ratio. Exact, padding included, without forming patches."""
    if layer.op_type == "Gemm":
        return x.reshape(len(x), -1).sum(axis=0, dtype=np.float64), len(x)
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel, layer.strides, layer.dilations
    top, left, bottom, right = layer.pads
    height, width = output_positions(layer, x.shape[2], x.shape[3])
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    total = np.empty((x.shape[1], kh, kw))
    for i in range(kh):
        for j in range(kw):
            window = padded[
                :, :, i * dh : i * dh + sh * (height - 1) + 1 : sh, j * dw : j * dw + sw * (width - 1) + 1 : sw
            ]
            total[:, i, j] = window.sum(axis=(0, 2, 3), dtype=np.float64)
    return total.reshape(-1), len(x) * height * width
