"""Integer coverage: how much of an INT8 model's arithmetic runs in integer kernels, on the platform that runs it.

An INT8 file is not INT8 execution. When onnxruntime optimises a QDQ model it fuses DequantizeLinear -> Conv ->
QuantizeLinear into QLinearConv only where its kernels for *that* platform support the quantization form; whatever
it cannot fuse runs as DequantizeLinear -> FP32 op -> QuantizeLinear, slower than plain FP32 and invisible in the
file. Measured on the digits resnet20: a signed-activation (``arm64``) model runs 10 of its 21 convolutions as
integer kernels on x86 and 21 of 21 on aarch64, where 19 Relus stay as DQ -> Relu -> Q.

How it is read: from what the session really executed. onnxruntime's profiler records every kernel of one inference
with its node name, op type, provider and input element types; a node that a fusion produced keeps the name of the
node it replaced, with a ``_token_N`` suffix (``/layer1/layer1.0/conv1/Conv_token_4`` is a QLinearConv). Those are
the same events the provider placement audit reads, and they need only onnxruntime, so a device measures its own
coverage. The MACs of each Conv/Gemm come from the model file, on the host, and each executed kernel is matched to
the file's node by name. ``optimized_model_filepath`` would show the same fusions for the CPU EP, but it needs the
onnx package to read and cannot be saved once an EP compiled part of the graph.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx

from resnet_edge.onnx.graph import macs_by_node, module_path
from resnet_edge.onnx.op_types import COMPUTE_OPS, INTEGER_COMPUTE_OPS
from resnet_edge.onnx.placement import ExecutedNode

# Kernels that multiply integers: the fused QDQ forms (QLinearConv, QGemm), the integer-accumulate forms
# (ConvInteger, MatMulInteger) and the contrib ops onnxruntime fuses them into on some platforms.
INTEGER_KERNELS = INTEGER_COMPUTE_OPS | {"NhwcQLinearConv", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}
# What a Conv/Gemm/MatMul left in FP32 runs as on the CPU EP (plain, or fused with its activation, or NCHWc).
FLOAT_KERNELS = frozenset(COMPUTE_OPS) | {"FusedConv", "FusedGemm", "FusedMatMul", "NhwcFusedConv"}
QUANTIZE_OPS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear"})
DEQUANTIZE_OPS = frozenset({"DequantizeLinear"})
# Layout and shape ops carry no arithmetic worth naming among the FP32 ops.
_LAYOUT_OPS = frozenset(
    {
        "Transpose",
        "Flatten",
        "Reshape",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "ReorderInput",
        "ReorderOutput",
        "MemcpyToHost",
        "MemcpyFromHost",
    }
)
_FUSED_SUFFIX = re.compile(r"_token_\d+$")
_BLOCK = re.compile(r"^(layer\d+\.\d+)(?:\.|$)")
STEM = "stem"
HEAD = "head"


@dataclass(frozen=True)
class ComputeNode:
    """A Conv/Gemm/MatMul of the model file and how it really ran."""

    name: str  # the node's name in the file
    block: str
    macs: int  # per image
    kernel: str | None  # the op type that ran it; None when no executed kernel carries its name
    integer: bool


@dataclass(frozen=True)
class IntegerCoverage:
    """How much of a model's arithmetic ran in integer kernels on one session.

    Attributes:
        integer_macs, float_macs: MACs per image of the Conv/Gemm/MatMul nodes that ran as integer, or FP32, kernels.
        unobserved_macs: MACs of nodes no executed kernel is named after, such as those an EP compiled into a
            subgraph (OpenVINO, TensorRT): their precision is the EP's business and cannot be read from here.
        quantize_nodes, dequantize_nodes: standalone QuantizeLinear/DequantizeLinear kernels that ran. A fully
            integer model has one of each, at the graph's input and output.
        float_ops: FP32 kernels by residual block (``stem``, ``layer1.0``, ..., ``head``), as ``op name`` strings:
            what runs between a DequantizeLinear and a QuantizeLinear. Layout ops are left out.
        nodes: every compute node, in file order.
    """

    integer_macs: int
    float_macs: int
    unobserved_macs: int
    quantize_nodes: int
    dequantize_nodes: int
    float_ops: dict[str, list[str]] = field(default_factory=dict)
    nodes: list[ComputeNode] = field(default_factory=list)

    @property
    def fraction(self) -> float | None:
        """Integer MACs over observed MACs; None when nothing was observed."""
        observed = self.integer_macs + self.float_macs
        return self.integer_macs / observed if observed else None

    @property
    def complete(self) -> bool:
        return self.float_macs == 0 and self.integer_macs > 0

    @property
    def float_compute(self) -> list[str]:
        return [n.name for n in self.nodes if n.kernel is not None and not n.integer]

    def describe(self) -> str:
        """``integer: 100.0% of 40.6 MMAC (21 of 21 Conv/Gemm); standalone Q/DQ: 1/1``."""
        if self.fraction is None:
            return "integer: not observable (no compute kernel ran under its own name)"
        ran = [n for n in self.nodes if n.kernel is not None]
        text = (
            f"integer: {100 * self.fraction:.1f}% of {(self.integer_macs + self.float_macs) / 1e6:.1f} MMAC"
            f" ({sum(n.integer for n in ran)} of {len(ran)} Conv/Gemm); standalone Q/DQ:"
            f" {self.quantize_nodes}/{self.dequantize_nodes}"
        )
        if self.unobserved_macs:
            text += f"; {self.unobserved_macs / 1e6:.1f} MMAC compiled out of sight"
        return text


def integer_coverage(model: onnx.ModelProto, executed: Sequence[ExecutedNode]) -> IntegerCoverage:
    """Match the kernels a session ran to the model's compute nodes and count integer and FP32 MACs.

    Args:
        model: the model file the session was opened on (its node names and shapes give each node's MACs).
        executed: the kernels of one profiled inference (``Session.executed``).
    """
    compute_names = [n.name for n in model.graph.node if n.op_type in COMPUTE_OPS or n.op_type in INTEGER_KERNELS]
    by_file_name: dict[str, ExecutedNode] = {}
    for node in executed:
        original = _FUSED_SUFFIX.sub("", node.name)
        by_file_name.setdefault(original, node)
    # Older onnxruntime (1.19, measured) names a fused kernel after its op ("QLinearConv_token_3"), not after the
    # node it replaced: pair such kernels with the unmatched compute nodes in order (execution order follows the
    # file's topological order in these graphs; an approximation only where integer and FP32 kernels mix).
    unnamed = [
        n
        for n in executed
        if (n.op_type in INTEGER_KERNELS or n.op_type in FLOAT_KERNELS)
        and _FUSED_SUFFIX.sub("", n.name) not in compute_names
    ]
    unmatched = [name for name in compute_names if name not in by_file_name]
    by_file_name.update(zip(unmatched, unnamed, strict=False))
    # The element count of an output is the same in NCHW and NHWC, which is all a MAC count needs of its shape.
    seen_shapes = {name: list(node.output_shape) for name, node in by_file_name.items() if node.output_shape}
    macs = macs_by_node(model, output_shapes=seen_shapes)

    blocks = _blocks_in_order(executed)
    nodes = []
    for name in compute_names:
        ran = by_file_name.get(name)
        kernel = ran.op_type if ran is not None else None
        integer = kernel in INTEGER_KERNELS or (ran is not None and kernel not in FLOAT_KERNELS and not ran.float_input)
        block = blocks.get(name) or _block_of(name) or "unknown"
        nodes.append(ComputeNode(name, block, macs.get(name, 0), kernel, integer))

    float_ops: dict[str, list[str]] = {}
    for node in executed:
        if node.op_type in QUANTIZE_OPS | DEQUANTIZE_OPS | _LAYOUT_OPS or node.op_type in INTEGER_KERNELS:
            continue
        if node.float_input or node.op_type in FLOAT_KERNELS:
            float_ops.setdefault(blocks[_FUSED_SUFFIX.sub("", node.name)], []).append(f"{node.op_type} {node.name}")
    return IntegerCoverage(
        integer_macs=sum(n.macs for n in nodes if n.kernel is not None and n.integer),
        float_macs=sum(n.macs for n in nodes if n.kernel is not None and not n.integer),
        unobserved_macs=sum(n.macs for n in nodes if n.kernel is None),
        quantize_nodes=sum(n.op_type in QUANTIZE_OPS for n in executed),
        dequantize_nodes=sum(n.op_type in DEQUANTIZE_OPS for n in executed),
        float_ops=float_ops,
        nodes=nodes,
    )


def coverage_of(model: onnx.ModelProto, executed: Sequence[ExecutedNode]) -> IntegerCoverage | None:
    """:func:`integer_coverage` for a quantized model whose session was audited; None otherwise."""
    from resnet_edge.onnx.graph import is_quantized

    return integer_coverage(model, executed) if executed and is_quantized(model) else None


def _block_of(name: str) -> str | None:
    match = _BLOCK.match(module_path(_FUSED_SUFFIX.sub("", name)) or "")
    return match.group(1) if match else None


def _blocks_in_order(executed: Sequence[ExecutedNode]) -> dict[str, str]:
    """Each executed node's residual block: its own scope's, else the block that ran before it (``stem`` before the
    first block; ``head`` after the last)."""
    blocks: dict[str, str] = {}
    current = STEM
    for node in executed:
        name = _FUSED_SUFFIX.sub("", node.name)
        block = _block_of(name)
        if block is not None:
            current = block
        elif current != STEM and module_path(name) is not None and not _BLOCK.match(module_path(name) or ""):
            current = HEAD  # a scoped node outside every block, after one: /avgpool, /fc
        blocks[name] = block or current
    return blocks
