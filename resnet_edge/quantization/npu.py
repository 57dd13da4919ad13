"""The strict-integer target, ``--target npu-int8``: its rules, whose accelerators they follow, and their check.

NPUs and DSPs run a network only when every layer is integer; a layer left in floating point either fails to
compile or falls back to the host CPU, which costs more than the accelerator saves. What this target writes:

- **Weights**: int8, symmetric (zero point 0), **one scale per tensor**; int32 biases on the scale
  ``s_input * s_weight``. Per-tensor is what the strictest accelerators take: AMD/Xilinx's Vitis AI DPU quantizes
  with "power-of-2 scales, symmetry, per-tensor quantizers" (Vitis AI User Guide UG1414), and onnxruntime's own
  configuration for Qualcomm's QNN EP (``get_qnn_qdq_config``) defaults to per-tensor weights. Accelerators that
  take per-channel weights are more accurate with them: pass ``--per-channel`` with this target.
- **Activations**: uint8, asymmetric, one scale and zero point per tensor (``get_qnn_qdq_config``'s default).
  TFLite's int8 activations (the form Arm's Ethos-U and the Edge TPU compile) are the same grid shifted by 128, so
  a converter maps one to the other without loss.
- **Every Conv, Gemm and Add integer**: all their inputs come from DequantizeLinear and their outputs go only to
  QuantizeLinear (:func:`strict_integer_violations`), and onnxruntime's CPU EP runs every Conv/Gemm as an integer
  kernel; either falling short fails the quantization. ``--exclude`` (blocks kept in FP32) is refused.
- **Power-of-two scales** (``--power-of-two-scales``): every activation and weight scale a power of two, for
  fixed-point accelerators that requantize by shifting (the Vitis AI DPU).

What it does not follow: the graph's input and output stay FP32 with a Quantize/Dequantize at each end (an NPU
compiler folds them or runs them on the host); the Vitis AI DPU also wants symmetric activations (zero point 0),
which this target does not write, so with power-of-two scales its zero points remain; QNN's default stores weights
as asymmetric uint8 where this target writes symmetric int8; int16 activations (QNN's A16W8) are not offered; and
the model stays ONNX: TFLite-based toolchains (Ethos-U's Vela, the Edge TPU compiler) need a conversion this
project does not do. Requantization limits of particular hardware (a multiplier below 1, shift ranges) are not
checked.
"""

from __future__ import annotations

import onnx

from resnet_edge.onnx.graph import GraphIndex

__all__ = ["STRICT_INTEGER_OPS", "strict_integer_violations"]

STRICT_INTEGER_OPS = frozenset({"Conv", "Gemm", "Add"})


def strict_integer_violations(model: onnx.ModelProto) -> list[str]:
    """Each Conv, Gemm and Add of a QDQ model that is not integer end to end, with why.

    Integer end to end: every input that is not a constant comes from a DequantizeLinear of an 8-bit tensor, the
    weights from a DequantizeLinear of int8 (a bias from int32), and the output goes only to QuantizeLinear nodes.

    Returns:
        One ``node: reason`` line per node that breaks the rule; empty when all hold.
    """
    index = GraphIndex(model)
    graph_outputs = set(index.outputs)
    found = []
    for node in model.graph.node:
        if node.op_type not in STRICT_INTEGER_OPS:
            continue
        reasons = []
        for position, name in enumerate(node.input):
            if not name:
                continue
            producer = index.producer(name)
            if producer is None or producer.op_type != "DequantizeLinear":
                reasons.append(f"input {position} is FP32")
                continue
            stored = index.initializers.get(producer.input[0])
            wanted = {onnx.TensorProto.INT32} if position == 2 else {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
            if stored is not None and stored.data_type not in wanted:
                kind = onnx.TensorProto.DataType.Name(stored.data_type).lower()
                reasons.append(f"input {position} is {kind}")
        readers = index.consumers(node.output[0])
        if node.output[0] in graph_outputs or not readers or any(r.op_type != "QuantizeLinear" for r in readers):
            reasons.append("its output is not quantized")
        if reasons:
            found.append(f"{node.name or node.op_type}: {', '.join(reasons)}")
    return found
