"""Facts read off an ONNX graph: op counts, opset, parameters, MACs, quantization, module paths of nodes."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import onnx

QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "QGemm",
        "ConvInteger",
        "MatMulInteger",
        "QLinearAdd",
        "QLinearGlobalAveragePool",
    }
)
# The ops that carry a ResNet's weights and arithmetic: these are the ones INT8 quantization must reach.
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")


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
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    found: dict[str, int] = {}
    for node in model.graph.node:
        index = _WEIGHTED_OPS.get(node.op_type)
        if index is None or len(node.input) <= index:
            continue
        w_shape = _weight_shape(node.input[index], weights, producers)
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


def _weight_shape(name: str, weights: dict[str, list[int]], producers: dict[str, onnx.NodeProto]) -> list[int] | None:
    """A weight's shape, looking through a DequantizeLinear (QDQ models), Transpose or Identity."""
    for _ in range(3):
        if name in weights:
            return weights[name]
        node = producers.get(name)
        if node is None or node.op_type not in ("DequantizeLinear", "Transpose", "Identity"):
            return None
        name = node.input[0]
    return None


def batch_norm_nodes(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """Each BatchNormalization node's name with what feeds it, e.g. ``Add`` or ``Conv (output shared)``.

    A BatchNormalization folds into a Conv only when that Conv feeds nothing else; "output shared" says why one
    that follows a Conv did not fold (a pre-activation block's input also feeds the skip connection).
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    uses: Counter[str] = Counter(name for node in model.graph.node for name in node.input)
    found = []
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            producer = producers.get(node.input[0])
            what = producer.op_type if producer else "graph input"
            if producer is not None and uses[node.input[0]] > 1:
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
