"""What running an ONNX model will take in memory, from its shape-inferred activation sizes."""

from __future__ import annotations

import math

import onnx

from resnet_edge.memory import _FLOAT_BYTES, _ONNX_DTYPE_BYTES, LIVE_ACTIVATIONS, WEIGHT_COPIES, MemoryEstimate


def onnx_estimate(model: onnx.ModelProto) -> MemoryEstimate:
    """Memory per image of running ``model`` in onnxruntime, from its shape-inferred activation sizes.

    A fixed batch dimension is divided out; a symbolic one counts as 1.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort: without it, count the graph's inputs and outputs only
        inferred = model
    graph = inferred.graph
    sizes: dict[str, int] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        dims = tensor.shape.dim
        if not dims:
            continue
        known = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
        per_image = math.prod(known[1:]) if len(known) > 1 else 1
        sizes[value.name] = per_image * _ONNX_DTYPE_BYTES.get(tensor.elem_type, _FLOAT_BYTES)
    initializers = {i.name for i in graph.initializer}
    activations = [size for name, size in sizes.items() if name not in initializers]
    ends = sum(sizes.get(v.name, 0) for v in [*graph.input, *graph.output])
    largest = max(activations, default=0)
    weights = sum(len(i.raw_data) or _tensor_bytes(i) for i in graph.initializer)
    return MemoryEstimate(per_image=LIVE_ACTIVATIONS * largest + ends, fixed=WEIGHT_COPIES * weights)


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    return math.prod(tensor.dims) * _ONNX_DTYPE_BYTES.get(tensor.data_type, _FLOAT_BYTES)
