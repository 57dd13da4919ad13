"""The graph index on a hand-built graph: who makes and reads each tensor, the initializers, the QDQ parameters."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from resnet_edge.onnx.graph import GraphIndex, batch_norm_nodes, is_quantized
from resnet_edge.onnx.op_types import COMPUTE_OPS, QUANTIZED_OPS


def qdq_model() -> onnx.ModelProto:
    """x -> QuantizeLinear -> DequantizeLinear -> Conv (weight through its own DQ) -> Relu -> MaxPool -> y, and the
    Conv's output also read by an Identity (two readers)."""
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
        numpy_helper.from_array(np.ones((4, 3, 1, 1), np.int8), "w_q"),
        numpy_helper.from_array(np.full(4, 0.02, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="x_QuantizeLinear"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="x_DequantizeLinear"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="w_DequantizeLinear", axis=0),
        helper.make_node("Conv", ["x_dq", "w"], ["conv"], name="/conv1/Conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="/relu/Relu"),
        helper.make_node("Identity", ["conv"], ["conv_copy"], name="/copy/Identity"),
        helper.make_node("QuantizeLinear", ["relu", "x_scale", "x_zp"], ["relu_q"], name="relu_QuantizeLinear"),
        helper.make_node("MaxPool", ["relu_q"], ["pooled_q"], name="/pool/MaxPool", kernel_shape=[1, 1]),
        helper.make_node("DequantizeLinear", ["pooled_q", "x_scale", "x_zp"], ["y"], name="y_DequantizeLinear"),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("conv_copy", TensorProto.FLOAT, None),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_producers_and_consumers() -> None:
    index = GraphIndex(qdq_model())
    assert index.producer("conv").name == "/conv1/Conv"
    assert index.producer("x") is None and index.producer("w_q") is None  # graph input, initializer
    assert [n.name for n in index.consumers("conv")] == ["/relu/Relu", "/copy/Identity"]
    assert [n.name for n in index.consumers("x_scale")] == [
        "x_QuantizeLinear",
        "x_DequantizeLinear",
        "relu_QuantizeLinear",
        "y_DequantizeLinear",
    ]
    assert index.consumers("y") == [] and index.outputs == ["y", "conv_copy"]
    assert index.nodes[index.producer_index["relu"]].op_type == "Relu"


def test_initializers_and_values() -> None:
    index = GraphIndex(qdq_model())
    assert set(index.initializers) == {"x_scale", "x_zp", "w_q", "w_scale", "w_zp"}
    assert index.value("w_scale").tolist() == np.full(4, 0.02, np.float32).tolist()
    assert index.value("x") is None


def test_quantization_parameters() -> None:
    index = GraphIndex(qdq_model())
    scale, zero_point, axis = index.qparams("x_q")
    assert (scale, zero_point, axis) == ("x_scale", "x_zp", [])
    # Through an op that only moves integer values (MaxPool) to the QuantizeLinear that set them.
    assert index.qparams("pooled_q").scale == "x_scale"
    assert index.qparams("x_dq") is None and index.qparams("x") is None  # float tensors
    assert index.dequantize_scale("w") == "w_scale" and index.dequantize_scale("conv") is None


def test_one_list_of_op_types() -> None:
    model = qdq_model()
    assert is_quantized(model)
    assert {"QuantizeLinear", "DequantizeLinear", "QLinearConv"} <= QUANTIZED_OPS and "Conv" in COMPUTE_OPS
    float_only = onnx.ModelProto()
    float_only.CopyFrom(model)
    kept = [n for n in float_only.graph.node if n.op_type not in QUANTIZED_OPS]
    del float_only.graph.node[:]
    float_only.graph.node.extend(kept)
    assert not is_quantized(float_only)


def test_batch_norm_that_shares_its_conv_output_is_told() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2])
    params = [numpy_helper.from_array(np.ones(2, np.float32), n) for n in ("s", "b", "m", "v")]
    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Add", ["c", "bn"], ["y"], name="add"),
    ]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w, *params]))
    assert batch_norm_nodes(model) == [("bn", "Conv (output shared)")]
