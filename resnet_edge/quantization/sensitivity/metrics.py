"""What the analysis measures: the error of a tensor against FP32, a block's error, and the scales of a residual
addition's two inputs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from resnet_edge.onnx.graph import GraphIndex, module_path
from resnet_edge.onnx.op_types import COMPUTE_OPS, INTEGER_COMPUTE_OPS
from resnet_edge.quantization.sensitivity.blocks import BlockMap

# Adding two tensors quantized with scales s and s/r, the sum is requantized on a scale at least s, so the finer input
# keeps at most 256/r levels of its range: 8 - log2(r) bits. At 16 that is 4 bits, a branch (or shortcut) reduced to
# coarse steps. Measured ratios in healthy INT8 ResNets are far below: 1.0-2.8 (trained digits resnet20), 1.1-2.3
# (resnet18 and resnet50, random init, photos).
RESIDUAL_SCALE_RATIO = 16.0


@dataclass(frozen=True)
class ResidualScales:
    """The scales of a residual addition's two inputs in the INT8 model.

    Attributes:
        node: the addition's node name.
        branch_scale: scale of the residual branch F(x).
        skip_scale: scale of the shortcut (identity or downsample).
        output_scale: scale of the sum, where the model quantizes it.
        ratio: larger input scale over smaller: the finer input keeps about ``8 - log2(ratio)`` bits in the sum.
        flagged: ``ratio`` is at least RESIDUAL_SCALE_RATIO.
    """

    node: str
    branch_scale: float
    skip_scale: float
    output_scale: float | None
    ratio: float
    flagged: bool


def residual_scales(model: onnx.ModelProto, block_map: BlockMap, block: str) -> ResidualScales | None:
    """The input scales of ``block``'s residual addition in an INT8 model; None where it is not quantized."""
    graph = GraphIndex(model)
    index = {id(node): i for i, node in enumerate(model.graph.node)}

    def is_shortcut(tensor: str) -> bool:
        """Whether ``tensor`` reaches the addition by the shortcut: from outside the block, or via its downsample."""
        node = graph.producer(tensor)
        while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node = graph.producer(node.input[0])
        if node is None:
            return True
        return block_map.node_blocks[index[id(node)]] != block or ".downsample" in f".{module_path(node.name)}"

    for i in block_map.node_indices(block):
        node = model.graph.node[i]
        if node.op_type == "QLinearAdd":
            scales = [graph.value(node.input[1]), graph.value(node.input[4])]
            out_scale = graph.value(node.input[6])
            sources = [node.input[0], node.input[3]]
        elif node.op_type == "Add" and len(node.input) == 2:
            params = [graph.dequantize_scale(name) for name in node.input]
            if any(p is None for p in params):
                return None
            scales = [graph.value(p) for p in params]
            quantizer = next((r for r in graph.consumers(node.output[0]) if r.op_type == "QuantizeLinear"), None)
            out_scale = graph.value(quantizer.input[1]) if quantizer is not None else None
            sources = list(node.input)
        else:
            continue
        if any(s is None for s in scales):
            return None
        is_skip = [is_shortcut(name) for name in sources]
        if is_skip[0] == is_skip[1]:
            return None  # not a branch-plus-shortcut addition
        branch, skip = (
            (float(np.max(scales[1])), float(np.max(scales[0])))
            if is_skip[0]
            else (float(np.max(scales[0])), float(np.max(scales[1])))
        )
        ratio = max(branch, skip) / min(branch, skip) if min(branch, skip) > 0 else math.inf
        return ResidualScales(
            node=node.name,
            branch_scale=branch,
            skip_scale=skip,
            output_scale=float(np.max(out_scale)) if out_scale is not None else None,
            ratio=ratio,
            flagged=ratio >= RESIDUAL_SCALE_RATIO,
        )
    return None


@dataclass(frozen=True)
class TensorError:
    """One tensor of a candidate model against the same tensor of the reference, over all analysed images.

    Attributes:
        sqnr_db: signal-to-quantization-noise ratio, ``10 log10(sum ref^2 / sum (ref - cand)^2)`` over every value
            (onnxruntime's ``qdq_loss_debug`` definition); higher is better, inf for no error.
        relative_l2: mean over images of ``||ref - cand|| / ||ref||``.
        cosine: mean over images of the cosine similarity of the flattened tensors.
    """

    sqnr_db: float
    relative_l2: float
    cosine: float


class _ErrorAccumulator:
    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0
        self.relative: list[float] = []
        self.cosines: list[float] = []

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        ref = reference.reshape(len(reference), -1).astype(np.float64)
        diff = ref - candidate.reshape(len(candidate), -1).astype(np.float64)
        self.signal += float((ref * ref).sum())
        self.noise += float((diff * diff).sum())
        ref_norm = np.linalg.norm(ref, axis=1)
        cand_norm = np.linalg.norm(ref - diff, axis=1)
        self.relative.extend(
            np.where(ref_norm > 0, np.linalg.norm(diff, axis=1) / np.maximum(ref_norm, 1e-300), 0.0).tolist()
        )
        dot = (ref * (ref - diff)).sum(axis=1)
        both = ref_norm * cand_norm
        self.cosines.extend(np.where(both > 0, dot / np.maximum(both, 1e-300), 1.0).tolist())

    def result(self) -> TensorError:
        if self.noise == 0:
            sqnr = math.inf
        elif self.signal == 0:
            sqnr = -math.inf
        else:
            sqnr = 10 * math.log10(self.signal / self.noise)
        return TensorError(sqnr_db=sqnr, relative_l2=float(np.mean(self.relative)), cosine=float(np.mean(self.cosines)))


@dataclass(frozen=True)
class BlockError:
    """How much error INT8 shows at one block's output.

    Attributes:
        block: ``stem``, ``layerN.i`` or ``head``.
        quantized_compute_nodes, compute_nodes: the block's Conv/Gemm nodes that are INT8 in the INT8 model, of all.
        cumulative: the INT8 model as it is, at the block's output.
        isolated: only this block quantized, at the block's output; None where no compute node of it is quantized.
        isolated_logits: only this block quantized, at the logits.
        isolated_top1_agreement: top-1 agreement with FP32 with only this block quantized.
        residual: the residual addition's input scales, where there is a quantized one.
        exclude: the ``--exclude`` items that keep this block in FP32.
    """

    block: str
    quantized_compute_nodes: int
    compute_nodes: int
    cumulative: TensorError
    isolated: TensorError | None
    isolated_logits: TensorError | None
    isolated_top1_agreement: float | None
    residual: ResidualScales | None
    exclude: list[str]

    @property
    def sensitivity_db(self) -> float | None:
        """The ranking key: logit SQNR with only this block quantized (lower: the block costs more accuracy)."""
        return self.isolated_logits.sqnr_db if self.isolated_logits is not None else None


def _compute_nodes(int8: onnx.ModelProto, block_map: BlockMap, block: str) -> tuple[int, int]:
    """(quantized, all) compute nodes of ``block`` in the INT8 model: integer ops, or Conv/Gemm fed by DQ."""
    graph = GraphIndex(int8)
    quantized = total = 0
    for i in block_map.node_indices(block):
        node = int8.graph.node[i]
        if node.op_type in INTEGER_COMPUTE_OPS:
            quantized += 1
            total += 1
        elif node.op_type in COMPUTE_OPS:
            total += 1
            feeds = [graph.producer(name) for name in node.input[:2]]
            quantized += all(f is not None and f.op_type == "DequantizeLinear" for f in feeds)
    return quantized, total
