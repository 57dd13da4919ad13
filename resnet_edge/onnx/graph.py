"""Facts read off an ONNX graph: the one index of who makes and reads each tensor (:class:`GraphIndex`), op counts,
opset, parameters, MACs, quantization, module paths of nodes."""

from __future__ import annotations

import re
from collections import Counter
from typing import NamedTuple

import numpy as np
import onnx

from resnet_edge.onnx.op_types import QUANTIZED_OPS

__all__ = [
    "GraphIndex",
    "QuantParams",
    "batch_norm_nodes",
    "count_ops",
    "graph_input",
    "is_quantized",
    "macs_by_node",
    "macs_per_image",
    "module_path",
    "opset_of",
    "output_step",
    "parameter_count",
]

# For each op that produces an integer tensor: the inputs holding that tensor's scale and zero point.
OUTPUT_QPARAMS = {
    "QuantizeLinear": (1, 2),
    "QLinearConv": (6, 7),
    "QLinearAdd": (6, 7),
    "QLinearMul": (6, 7),
    "QLinearMatMul": (6, 7),
    "QGemm": (7, 8),
    "QLinearGlobalAveragePool": (3, 4),
    "QLinearAveragePool": (3, 4),
}
# Ops that move integer values without changing their quantization (QOperator runs MaxPool and Flatten on uint8).
PASS_THROUGH_OPS = frozenset({"MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity"})


class QuantParams(NamedTuple):
    """Where an integer tensor's quantization is defined (a tuple: ``scale, zero_point, axis = ...``).

    Attributes:
        scale: the name of the tensor holding its scale.
        zero_point: the name of the tensor holding its zero point.
        axis: the ``axis`` attribute of the QuantizeLinear that made it (per-channel), else empty.
    """

    scale: str
    zero_point: str
    axis: list[onnx.AttributeProto]


class GraphIndex:
    """Look-ups over one model's graph, built once: who makes each tensor, who reads it, the initializers, and the
    quantization of integer tensors.

    Attributes:
        model: the model indexed (not copied: the index is stale once its graph changes).
        nodes: the graph's nodes, in graph (topological) order.
        producer_index: tensor name -> index in ``nodes`` of the node that outputs it.
        consumer_indices: tensor name -> indices in ``nodes`` of the nodes that read it, in graph order.
        initializers: initializer name -> tensor.
        outputs: the graph's output names.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.nodes: list[onnx.NodeProto] = list(model.graph.node)
        self.producer_index: dict[str, int] = {
            out: i for i, node in enumerate(self.nodes) for out in node.output if out
        }
        self.consumer_indices: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for name in node.input:
                self.consumer_indices.setdefault(name, []).append(i)
        self.initializers: dict[str, onnx.TensorProto] = {init.name: init for init in model.graph.initializer}
        self.outputs: list[str] = [o.name for o in model.graph.output]

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        """The node that outputs ``tensor``; None for a graph input, an initializer or an unknown name."""
        index = self.producer_index.get(tensor)
        return self.nodes[index] if index is not None else None

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        """The nodes that read ``tensor``, in graph order."""
        return [self.nodes[i] for i in self.consumer_indices.get(tensor, [])]

    def value(self, name: str) -> np.ndarray | None:
        """An initializer's value; None when ``name`` is not an initializer."""
        init = self.initializers.get(name)
        return onnx.numpy_helper.to_array(init) if init is not None else None

    def qparams(self, tensor: str) -> QuantParams | None:
        """The scale and zero point of an integer tensor (looking back through ops that only move it, such as
        MaxPool or Flatten); None for a float tensor."""
        node = self.producer(tensor)
        while node is not None and node.op_type in PASS_THROUGH_OPS:
            node = self.producer(node.input[0])
        if node is None or node.op_type not in OUTPUT_QPARAMS:
            return None
        scale, zero_point = OUTPUT_QPARAMS[node.op_type]
        if len(node.input) <= zero_point or not node.input[scale]:
            return None
        axis = [a for a in node.attribute if a.name == "axis"] if node.op_type == "QuantizeLinear" else []
        return QuantParams(node.input[scale], node.input[zero_point], axis)

    def dequantize_scale(self, tensor: str) -> str | None:
        """The scale name of the DequantizeLinear that outputs ``tensor``; None when something else makes it."""
        node = self.producer(tensor)
        return node.input[1] if node is not None and node.op_type == "DequantizeLinear" else None


def graph_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The model's first real input (old exporters also list initializers as graph inputs)."""
    initializers = {init.name for init in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in initializers)


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Number of nodes of each op type, most frequent first."""
    return dict(Counter(node.op_type for node in model.graph.node).most_common())


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain (ai.onnx) opset the model imports."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


# Inputs that hold quantization scales and zero points, by op: not parameters of the network.
_SCALE_INPUTS = {
    "QuantizeLinear": {1, 2},
    "DequantizeLinear": {1, 2},
    "QLinearConv": {1, 2, 4, 5, 6, 7},
    "QLinearMatMul": {1, 2, 4, 5, 6, 7},
    "QGemm": {1, 2, 4, 5, 7, 8},
    "QLinearAdd": {1, 2, 4, 5, 6, 7},
    "QLinearGlobalAveragePool": {1, 2, 3, 4},
    "ConvInteger": {2, 3},
    "MatMulInteger": {2, 3},
}
# Reduction-dimension lookup for the ops that do a ResNet's arithmetic: (weight input index, op family).
_WEIGHTED_OPS = {
    "Conv": 1,
    "ConvInteger": 1,
    "QLinearConv": 3,
    "Gemm": 1,
    "QGemm": 3,
    "MatMul": 1,
    "MatMulInteger": 1,
    "QLinearMatMul": 3,
}


def parameter_count(model: onnx.ModelProto) -> int:
    """Weights and biases in the graph (FP32 or quantized), not counting scales, zero points or shape constants."""
    scale_names = {
        name
        for node in model.graph.node
        for index, name in enumerate(node.input)
        if index in _SCALE_INPUTS.get(node.op_type, ())
    }
    return sum(
        int(np.prod(init.dims)) if init.dims else 1
        for init in model.graph.initializer
        if init.name not in scale_names and init.data_type != onnx.TensorProto.INT64
    )


def is_quantized(model: onnx.ModelProto) -> bool:
    return any(node.op_type in QUANTIZED_OPS for node in model.graph.node)


def output_step(model: onnx.ModelProto) -> float | None:
    """The quantization step of the model's output: the scale of the DequantizeLinear (or of the QLinear op) that
    produces the logits, looked up through Flatten/Reshape/Identity/Squeeze; the largest one when per-channel. It is
    the unit in which two INT8 runs of one file differ, and the unit of the logit-error bar for random weights
    (``onnx.parity.logit_error_shortfalls``). None when the output is not made from a quantized tensor."""
    index = GraphIndex(model)
    node = index.producer(model.graph.output[0].name)
    for _ in range(4):
        if node is None:
            return None
        if node.op_type == "DequantizeLinear":
            scale_at = 1
        elif node.op_type in OUTPUT_QPARAMS and node.op_type != "QuantizeLinear":
            scale_at = OUTPUT_QPARAMS[node.op_type][0]
        elif node.op_type in ("Flatten", "Reshape", "Identity", "Squeeze"):
            node = index.producer(node.input[0])
            continue
        else:
            return None
        scale = index.value(node.input[scale_at]) if len(node.input) > scale_at else None
        return float(scale.max()) if scale is not None and scale.size else None
    return None


def macs_per_image(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of the convolutions and matrix products for one image, FP32 or quantized."""
    return sum(macs_by_node(model).values())


def macs_by_node(model: onnx.ModelProto, *, output_shapes: dict[str, list[int]] | None = None) -> dict[str, int]:
    """Multiply-accumulates for one image of each convolution and matrix product, by node name (FP32 or quantized).

    Args:
        output_shapes: node name -> output shape seen elsewhere (a runtime profile), for nodes whose shape onnx's
            inference cannot reach (those after a contrib op such as QLinearAdd in a QOperator model).
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        value.name: [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        for value in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
    }
    index = GraphIndex(model)
    weights = {name: list(init.dims) for name, init in index.initializers.items()}
    found: dict[str, int] = {}
    for node in model.graph.node:
        weight_at = _WEIGHTED_OPS.get(node.op_type)
        if weight_at is None or len(node.input) <= weight_at:
            continue
        w_shape = _weight_shape(node.input[weight_at], weights, index)
        out_shape = shapes.get(node.output[0])
        if (not out_shape or any(d is None for d in out_shape[1:])) and output_shapes:
            out_shape = output_shapes.get(node.name)
        if w_shape is None or not out_shape or any(d is None for d in out_shape[1:]):
            continue
        if "Conv" in node.op_type:
            reduction = int(np.prod(w_shape[1:]))  # (Cin / groups) * kh * kw per output element
        elif "Gemm" in node.op_type and any(a.name == "transB" and a.i == 1 for a in node.attribute):
            reduction = w_shape[1]
        else:
            reduction = w_shape[0]
        found[node.name or node.output[0]] = int(np.prod(out_shape[1:])) * reduction
    return found


def _weight_shape(name: str, weights: dict[str, list[int]], index: GraphIndex) -> list[int] | None:
    """A weight's shape, looking through a DequantizeLinear (QDQ models), Transpose or Identity."""
    for _ in range(3):
        if name in weights:
            return weights[name]
        node = index.producer(name)
        if node is None or node.op_type not in ("DequantizeLinear", "Transpose", "Identity"):
            return None
        name = node.input[0]
    return None


def batch_norm_nodes(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """Each BatchNormalization node's name with what feeds it, e.g. ``Add`` or ``Conv (output shared)``.

    A BatchNormalization folds into a Conv only when that Conv feeds nothing else; "output shared" says why one
    that follows a Conv did not fold (a pre-activation block's input also feeds the skip connection).
    """
    index = GraphIndex(model)
    found = []
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            producer = index.producer(node.input[0])
            what = producer.op_type if producer else "graph input"
            if producer is not None and len(index.consumer_indices[node.input[0]]) > 1:
                what += " (output shared)"
            found.append((node.name or node.output[0], what))
    return found


_SCOPE = re.compile(r"^/((?:[^/]+/)*)[^/]+$")


def module_path(node_name: str) -> str | None:
    """The PyTorch module path a node was exported from, e.g. ``layer1.0.conv1``, from its TorchScript scope name.

    ``/layer1/layer1.0/conv1/Conv`` gives ``layer1.0.conv1``; ``/fc/Gemm`` gives ``fc``; names that quantization
    derived from such a name (``/layer1/layer1.0/conv1/Conv_quant``) map to the same module. Top-level ops
    (``/Flatten``) give ``""``; names without a scope give None.
    """
    match = _SCOPE.match(node_name)
    if not match:
        return None
    path = ""
    previous = ""
    for part in (p for p in match.group(1).split("/") if p):
        # A child of an nn.Sequential is scoped "<parent>.<index>" (``layer1`` then ``layer1.0``, ``downsample`` then
        # ``downsample.0``); other children by their attribute name alone (``conv1``). Attribute names hold no dots.
        tail = part[len(previous) + 1 :] if previous and part.startswith(previous + ".") else part
        path = f"{path}.{tail}" if path else tail
        previous = part
    return path
