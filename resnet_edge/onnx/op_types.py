"""The ONNX op types this package sorts nodes by: which ones mean a model is quantized, which do the arithmetic.

One list for every reader (graph facts, quantization checks, the sensitivity analysis, the session opener). Imports
nothing, so the device runner ships it beside :mod:`resnet_edge.onnx.runtime` (Python 3.8).
"""

from __future__ import annotations

# Any of these in a graph means it was quantized (QDQ or QOperator form).
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
# The quantized forms of the compute ops, as the quantizer writes them into a graph (QOperator, integer-accumulate).
INTEGER_COMPUTE_OPS = frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger"})
# The ops that mark a graph whose activations are INT8 (QDQ or QOperator): TensorRT then runs in its INT8 mode. Not
# every quantized op: a graph with only DequantizeLinear has INT8 weights and float activations.
INT8_ACTIVATION_OPS = frozenset({"QuantizeLinear", "QLinearConv"})
