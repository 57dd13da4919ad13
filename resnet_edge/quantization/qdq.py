"""The quantized layers of a QDQ model, read and rewritten in place: what accuracy recovery works on.

onnxruntime's QDQ quantizer writes each Conv/Gemm as ``DequantizeLinear(x_q) -> Conv <- DequantizeLinear(w_q)``,
with the bias as int32 on the scale ``s_x * s_w`` (the integer accumulator's unit, as NPUs and onnxruntime's
QLinearConv take it). A :class:`QuantizedLayer` pairs such a node with the FP32 model it was quantized from (the same
node name): the FP32 weights and bias, the tensor the layer reads and writes there, and the quantization of its input.
:func:`write_weights` and :func:`write_bias` replace a layer's integers and scales, int4 and blocked scales
(opset 21) included; :func:`power_of_two_activations` moves every activation scale to a power of two.

Weights are handled in one canonical layout, output channel first: a Conv's (out, in, kh, kw) as it is, a Gemm's as
(out, in) whatever its ``transB``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import onnx
from onnx import numpy_helper

from resnet_edge.onnx.graph import GraphIndex, opset_of

__all__ = [
    "INT4_OPSET",
    "QuantizedLayer",
    "fake_quantize",
    "power_of_two_activations",
    "quantized_layers",
    "require_opset",
    "write_bias",
    "write_weights",
]

INT4_OPSET = 21  # DequantizeLinear takes int4 and blocked scales (block_size) from opset 21
_INT4_IR_VERSION = 10  # the IR version opset 21 needs
_INT_TYPES = {
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.INT4: ml_dtypes.int4,
    onnx.TensorProto.UINT4: ml_dtypes.uint4,
}
_INT32 = np.iinfo(np.int32)


@dataclass
class QuantizedLayer:
    """One quantized Conv or Gemm of a QDQ model, with its FP32 original.

    Attributes:
        name: the node's name (the same in both models).
        op_type: Conv or Gemm.
        weight: the FP32 weights, output channel first.
        bias: the FP32 bias (None when the layer has none).
        input_tensor, output_tensor: what the layer reads and writes in the FP32 model.
        relu: the FP32 model applies a Relu to the output and nothing else reads it (the loss AdaRound minimises
            is after it).
        input_scale, input_zero_point, input_type: the quantization of the layer's input in the QDQ model.
        strides, pads, dilations, group: a Conv's geometry (pads as begin_h, begin_w, end_h, end_w).
        transposed: a Gemm whose stored weight is (in, out), ``transB`` 0.
        weight_dq: the weight's DequantizeLinear node in the QDQ model.
        bias_dq: the bias's DequantizeLinear node, or None when the bias is stored in FP32.
    """

    name: str
    op_type: str
    weight: np.ndarray = field(repr=False)
    bias: np.ndarray | None = field(repr=False)
    input_tensor: str
    output_tensor: str
    relu: bool
    input_scale: float
    input_zero_point: int
    input_type: type
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    group: int = 1
    transposed: bool = False
    weight_dq: onnx.NodeProto | None = field(default=None, repr=False)
    bias_dq: onnx.NodeProto | None = field(default=None, repr=False)

    @property
    def kernel(self) -> tuple[int, int]:
        return (self.weight.shape[2], self.weight.shape[3]) if self.weight.ndim == 4 else (1, 1)

    @property
    def fan_in(self) -> int:
        """Inputs each output sums over (the width of one im2col row)."""
        return int(np.prod(self.weight.shape[1:]))

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """``x`` as the QDQ model feeds it to the layer: quantized on the layer's input grid and dequantized."""
        return fake_quantize(x, self.input_scale, self.input_zero_point, self.input_type)


def fake_quantize(x: np.ndarray, scale: float, zero_point: int, dtype: type) -> np.ndarray:
    """QuantizeLinear then DequantizeLinear, as onnxruntime computes them (round half to even, saturate)."""
    info = np.iinfo(dtype)
    q = np.clip(np.rint(x / np.float32(scale)) + zero_point, info.min, info.max)
    return ((q - zero_point) * np.float32(scale)).astype(np.float32)


def quantized_layers(qdq: onnx.ModelProto, float_model: onnx.ModelProto) -> list[QuantizedLayer]:
    """Every Conv/Gemm of ``qdq`` whose input and weights come through DequantizeLinear, in graph order.

    Args:
        qdq: the QDQ model (onnxruntime's quantizer keeps the float model's node names).
        float_model: the FP32 model ``qdq`` was quantized from.

    Raises:
        ValueError: a quantized node has no counterpart in ``float_model``, or reads a weight that is not a constant.
    """
    index, float_index = GraphIndex(qdq), GraphIndex(float_model)
    float_nodes = {node.name: node for node in float_model.graph.node}
    layers = []
    for node in qdq.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        x_dq, w_dq = index.producer(node.input[0]), index.producer(node.input[1])
        if x_dq is None or w_dq is None or x_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
            continue  # kept in FP32
        original = float_nodes.get(node.name)
        if original is None or original.input[1] not in float_index.initializers:
            raise ValueError(f"quantized node {node.name} has no FP32 counterpart with constant weights")
        transposed = node.op_type == "Gemm" and not _attribute(node, "transB", 0)
        weight = float_index.value(original.input[1]).astype(np.float32)
        weight = weight.T if transposed else weight
        has_bias = len(original.input) > 2 and bool(original.input[2])
        bias = float_index.value(original.input[2]).astype(np.float32) if has_bias else None
        readers = float_index.consumers(original.output[0])
        bias_dq = index.producer(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        scale, zero_point = index.value(x_dq.input[1]), index.value(x_dq.input[2])
        pads = tuple(_attribute(node, "pads", [0, 0, 0, 0]))
        layers.append(
            QuantizedLayer(
                name=node.name,
                op_type=node.op_type,
                weight=weight,
                bias=bias,
                input_tensor=original.input[0],
                output_tensor=original.output[0],
                relu=len(readers) == 1 and readers[0].op_type == "Relu",
                input_scale=float(scale),
                input_zero_point=int(zero_point),
                input_type=zero_point.dtype.type,
                strides=tuple(_attribute(node, "strides", [1, 1])),
                pads=(pads[0], pads[1], pads[2], pads[3]),
                dilations=tuple(_attribute(node, "dilations", [1, 1])),
                group=int(_attribute(node, "group", 1)),
                transposed=transposed,
                weight_dq=w_dq,
                bias_dq=bias_dq if bias_dq is not None and bias_dq.op_type == "DequantizeLinear" else None,
            )
        )
    return layers


def weight_scale(qdq: onnx.ModelProto, layer: QuantizedLayer) -> np.ndarray:
    """The layer's weight scale as stored: a scalar, one per output channel, or blocked."""
    return numpy_helper.to_array(_initializer(qdq, layer.weight_dq.input[1])).astype(np.float32)


def dequantized_weight(qdq: onnx.ModelProto, layer: QuantizedLayer) -> np.ndarray:
    """The weights the QDQ model computes with, in FP32, output channel first."""
    q = numpy_helper.to_array(_initializer(qdq, layer.weight_dq.input[0])).astype(np.float32)
    scale = weight_scale(qdq, layer)
    zero = numpy_helper.to_array(_initializer(qdq, layer.weight_dq.input[2])).astype(np.float32)
    axis = _attribute(layer.weight_dq, "axis", 1)
    block = _attribute(layer.weight_dq, "block_size", 0)
    w = (q - _broadcast(zero, q.shape, axis, block)) * _broadcast(scale, q.shape, axis, block)
    return w.T if layer.transposed else w


def write_weights(
    qdq: onnx.ModelProto,
    layer: QuantizedLayer,
    integers: np.ndarray,
    scale: np.ndarray,
    *,
    bits: int,
    block: int | None,
) -> None:
    """Replace a layer's integer weights and their scale (zero points 0: symmetric), in place.

    Args:
        qdq: the QDQ model, changed in place.
        layer: from :func:`quantized_layers` on ``qdq``.
        integers: the integer weights, output channel first, within the ``bits`` signed range.
        scale: a scalar (per tensor), one per output channel, or, with ``block``, one per block of ``block`` input
            channels: shape (out, ceil(in / block), ...) for the canonical weight.
        bits: 8 or 4; 4 needs opset 21 (see :func:`require_opset`).
        block: the block size along the input channels, or None.
    """
    dtype = {8: np.int8, 4: ml_dtypes.int4}[bits]
    stored, stored_scale = (integers.T, scale.T) if layer.transposed else (integers, scale)
    out_axis, in_axis = (1, 0) if layer.transposed else (0, 1)
    dq = layer.weight_dq
    q_name, s_name, z_name = dq.input[0], dq.input[1], dq.input[2] if len(dq.input) > 2 else f"{dq.input[0]}_zero"
    _replace(qdq, numpy_helper.from_array(stored.astype(np.int8).astype(dtype), q_name))
    # np.asarray, not np.ascontiguousarray: that makes a scalar (per-tensor) scale of shape (1,), and onnxruntime then
    # no longer fuses a Gemm into QGemm.
    _replace(qdq, numpy_helper.from_array(np.array(stored_scale, dtype=np.float32), s_name))
    _replace(qdq, numpy_helper.from_array(np.zeros(stored_scale.shape, np.int8).astype(dtype), z_name))
    while len(dq.input) < 3:
        dq.input.append("")
    dq.input[2] = z_name
    kept = [a for a in dq.attribute if a.name not in ("axis", "block_size")]
    del dq.attribute[:]
    dq.attribute.extend(kept)
    if block is not None:
        dq.attribute.extend(
            [onnx.helper.make_attribute("axis", in_axis), onnx.helper.make_attribute("block_size", block)]
        )
    elif scale.ndim == 1:
        dq.attribute.append(onnx.helper.make_attribute("axis", out_axis))


def write_bias(qdq: onnx.ModelProto, layer: QuantizedLayer, bias: np.ndarray) -> None:
    """Set a layer's bias (FP32 values), in place: as int32 on the scale input scale x weight scale (per output
    channel; the largest block's for blocked weights) where the QDQ model stores it that way, else as FP32."""
    bias = np.asarray(bias, np.float32)
    if layer.bias_dq is None:
        node = next(n for n in qdq.graph.node if n.name == layer.name)
        name = node.input[2] if len(node.input) > 2 and node.input[2] else f"{layer.name}_bias"
        _replace(qdq, numpy_helper.from_array(bias, name))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        return
    per_out = weight_scale(qdq, layer)
    if per_out.ndim > 1:  # blocked: the scales of output channel o lie along the canonical layout's first axis
        per_out = (per_out.T if layer.transposed else per_out).reshape(layer.weight.shape[0], -1).max(axis=1)
    scale = (np.float32(layer.input_scale) * per_out).astype(np.float32)
    integers = np.clip(np.rint(bias / np.where(scale > 0, scale, 1.0)), _INT32.min, _INT32.max).astype(np.int32)
    dq = layer.bias_dq
    _replace(qdq, numpy_helper.from_array(integers, dq.input[0]))
    _replace(qdq, numpy_helper.from_array(scale, dq.input[1]))
    _replace(qdq, numpy_helper.from_array(np.zeros(scale.shape, np.int32), dq.input[2]))
    kept = [a for a in dq.attribute if a.name != "axis"]
    del dq.attribute[:]
    dq.attribute.extend(kept)
    if scale.ndim == 1:
        dq.attribute.append(onnx.helper.make_attribute("axis", 0))


def power_of_two_activations(qdq: onnx.ModelProto) -> int:
    """Round every activation scale up to a power of two, in place, keeping each tensor's range.

    An activation's range ``[(qmin - z) s, (qmax - z) s]`` is kept: the scale becomes ``2^ceil(log2 s)`` (never
    smaller, so nothing the calibration saw saturates) and the zero point is recomputed for the same minimum. Bias
    scales depend on the input scales: rewrite the biases afterwards (:func:`write_bias`).

    Returns:
        The number of activation scales changed.
    """
    index = GraphIndex(qdq)
    changed = 0
    for node in qdq.graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[1] not in index.initializers:
            continue
        scale_init, zero_init = index.initializers[node.input[1]], index.initializers.get(node.input[2])
        scale = numpy_helper.to_array(scale_init).astype(np.float64)
        if scale.size != 1 or zero_init is None or not scale > 0:
            continue
        zero = numpy_helper.to_array(zero_init)
        info = np.iinfo(zero.dtype)
        power = 2.0 ** math.ceil(math.log2(float(scale)))
        if power == float(scale):
            continue
        low = (info.min - int(zero)) * float(scale)
        new_zero = int(np.clip(round(info.min - low / power), info.min, info.max))
        scale_init.CopyFrom(numpy_helper.from_array(np.array(power, np.float32), scale_init.name))
        zero_init.CopyFrom(numpy_helper.from_array(np.array(new_zero, zero.dtype), zero_init.name))
        changed += 1
    return changed


def require_opset(model: onnx.ModelProto, opset: int) -> None:
    """Raise the model's default-domain opset (and IR version) to at least ``opset``, in place.

    For the ops of a quantized ResNet (Conv, Gemm, Add, Relu, pooling, Flatten, Q/DQ) opsets 13 to 21 differ only in
    the types Q/DQ accept, so the graph stays as it is.
    """
    if opset_of(model) >= opset:
        return
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = opset
    model.ir_version = max(model.ir_version, _INT4_IR_VERSION)


def _broadcast(values: np.ndarray, shape: tuple[int, ...], axis: int, block: int) -> np.ndarray:
    """A DequantizeLinear's scale or zero point spread over its input's ``shape``."""
    if values.size == 1 and not block:
        return values.reshape(())
    if block:
        return np.repeat(values, block, axis=axis)[tuple(slice(0, n) for n in shape)]
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return values.reshape(view)


def _initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(init for init in model.graph.initializer if init.name == name)


def _replace(model: onnx.ModelProto, tensor: onnx.TensorProto) -> None:
    for init in model.graph.initializer:
        if init.name == tensor.name:
            init.CopyFrom(tensor)
            return
    model.graph.initializer.append(tensor)


def _attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default
