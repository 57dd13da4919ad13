"""Where INT8 loses accuracy, block by block: error attribution by residual block.

Every node of an exported ResNet carries the module scope it came from (``/layer1/layer1.0/conv1/Conv``, see
:func:`resnet_edge.onnx.graph.module_path`), and onnxruntime's quantizer keeps those names (QDQ nodes are named after
the tensor they quantize, QOperator nodes get a ``_quant`` suffix). So each node of the FP32 and of the INT8 model
maps to ``stem``, a block ``layerN.i`` (its main branch, its shortcut or downsample, the addition and its ReLU) or
``head``, by name and dataflow, never by position in the file. The tensor that leaves a block (the one consumed by
another block) is the block's output in either model, whatever the quantizer renamed.

Two measurements per block, on held-out images, at the block's output against FP32:

- **cumulative**: the INT8 model as it is; the error includes everything upstream.
- **isolated**: only this block quantized, FP32 everywhere else. Built without re-calibrating: the FP32 graph with
  the block's INT8 nodes (their weights, scales and zero points copied from the INT8 model) spliced in beside the
  FP32 block, the block's input quantized with the scale the INT8 model uses for it, and the FP32 tail fed from the
  INT8 block. One run of that graph gives the FP32 block output, the INT8 block output and the logits of a model
  where only this block is INT8. Ranking blocks by that logit error is the sensitivity measure of ZeroQ (Cai et
  al., 2020: quantize one layer, measure the output); it is what a mixed-precision search keeps in FP32 first.

Residual additions whose two inputs carry very different scales are flagged (see RESIDUAL_SCALE_RATIO).
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from resnet_edge.artifacts import (
    atomic_output,
    load_onnx,
    refuse_overwriting_inputs,
    sha256_file,
    write_json_atomic,
)
from resnet_edge.calibration.sources import default_test_images, open_source
from resnet_edge.errors import InputFileError, OptionError, ResnetEdgeWarning
from resnet_edge.jsonable import to_jsonable
from resnet_edge.onnx.graph import COMPUTE_OPS, is_quantized, module_path
from resnet_edge.onnx.metadata import (
    QUANTIZATION_KEY,
    preprocessing_for,
    read_metadata,
    read_record,
    static_input_shape,
)
from resnet_edge.onnx.parity import Parity, compare
from resnet_edge.onnx.runtime import Placement, Provider, open_session

STEM = "stem"
HEAD = "head"
DEFAULT_IMAGES = 64  # held-out images analysed by default: SQNR pools every activation value, so 64 images are plenty
ANALYSIS_BATCH = 4  # every block's output of both models is held per batch: ~200 MB at batch 4 for ResNet-50 at 224
# Adding two tensors quantized with scales s and s/r, the sum is requantized on a scale at least s, so the finer input
# keeps at most 256/r levels of its range: 8 - log2(r) bits. At 16 that is 4 bits, a branch (or shortcut) reduced to
# coarse steps. Measured ratios in healthy INT8 ResNets are far below: 1.0-2.8 (trained digits resnet20), 1.1-2.3
# (resnet18 and resnet50, random init, photos).
RESIDUAL_SCALE_RATIO = 16.0

_BLOCK_PATH = re.compile(r"^(layer(\d+)\.(\d+))(?:\.|$)")
# For each op that produces an integer tensor: the inputs holding that tensor's scale and zero point.
_OUTPUT_QPARAMS = {
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
_PASS_THROUGH = frozenset({"MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity"})
_FP32_INPUT = "\x00fp32 block input"  # placeholder for the FP32 tensor a spliced block reads; never a real name


# --------------------------------------------------------------------------------------------------------------------
# Nodes to blocks


def block_sort_key(block: str) -> tuple[int, ...]:
    """Execution order of block names: stem, layer1.0, layer1.1, ..., layer4.2, head."""
    if block == STEM:
        return (0,)
    if block == HEAD:
        return (2,)
    match = _BLOCK_PATH.match(block)
    if not match:
        raise ValueError(f"not a block name: {block!r}")
    return (1, int(match.group(2)), int(match.group(3)))


@dataclass(frozen=True)
class BlockMap:
    """Which block each node of a model belongs to.

    Attributes:
        blocks: block names in execution order (``stem``, ``layer1.0``, ..., ``head``).
        node_blocks: one block name per node, aligned with ``model.graph.node``.
    """

    blocks: list[str]
    node_blocks: list[str]

    def node_indices(self, block: str) -> list[int]:
        return [i for i, b in enumerate(self.node_blocks) if b == block]


def map_blocks(model: onnx.ModelProto) -> BlockMap:
    """Assign every node to ``stem``, a residual block ``layerN.i`` or ``head``.

    Nodes named in a block's scope (``/layer2/layer2.0/downsample/downsample.0/Conv``, ``..._quant``,
    ``..._QuantizeLinear``) belong to that block. Other scoped nodes (``/conv1/Conv``, ``/maxpool/MaxPool``,
    ``/fc/Gemm``, ``/Flatten``) are ``head`` when any block feeds them, else ``stem``. Unscoped nodes the quantizer
    added belong to the block of the node they read from (``logits_QuantizeLinear`` follows ``/fc/Gemm``) or, when
    they read only weights or the graph input (weight ``DequantizeLinear``, ``input_QuantizeLinear``), to the block
    that uses them.

    Raises:
        InputFileError: no node carries a residual block's scope (not a ResNet exported by resnet-edge).
    """
    nodes = list(model.graph.node)
    paths = [module_path(n.name) for n in nodes]
    blocks: list[str | None] = [None] * len(nodes)
    for i, path in enumerate(paths):
        match = _BLOCK_PATH.match(path or "")
        if match:
            blocks[i] = match.group(1)
    if not any(blocks):
        raise InputFileError(
            "no node is named after a residual block (like /layer1/layer1.0/conv1/Conv); block analysis needs a"
            " ResNet exported with resnet-edge's TorchScript exporter, which names nodes by module scope"
        )
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)

    def producers_of(i: int) -> list[int]:
        return [producer[t] for t in nodes[i].input if t in producer]

    # ONNX requires graph order to be topological (onnx.checker enforces it), so one forward pass sees producers first.
    after_block = [False] * len(nodes)
    for i in range(len(nodes)):
        after_block[i] = any(blocks[p] is not None or after_block[p] for p in producers_of(i))
    for i, path in enumerate(paths):
        if path is not None and blocks[i] is None:
            blocks[i] = HEAD if after_block[i] else STEM
    for i in range(len(nodes)):  # forward: an unscoped node follows the block it reads from (the latest one)
        if blocks[i] is None:
            known = [blocks[p] for p in producers_of(i) if blocks[p] is not None]
            if known:
                blocks[i] = max(known, key=block_sort_key)
    for i in reversed(range(len(nodes))):  # backward: weights and graph-input quantizers go where they are used
        if blocks[i] is None:
            known = [blocks[c] for out in nodes[i].output for c in consumers.get(out, []) if blocks[c] is not None]
            blocks[i] = min(known, key=block_sort_key) if known else (HEAD if after_block[i] else STEM)
    resolved = [b for b in blocks if b is not None]
    return BlockMap(blocks=sorted(set(resolved), key=block_sort_key), node_blocks=resolved)


def exclusion_items(model: onnx.ModelProto, block_map: BlockMap, block: str) -> list[str]:
    """What to pass as ``--exclude`` to keep ``block`` in FP32: its module path, or for the stem and head the module
    paths (or, for top-level ops such as ``/Flatten``, the node names) of their nodes."""
    if block not in (STEM, HEAD):
        return [block]
    items: list[str] = []
    for i in block_map.node_indices(block):
        name = model.graph.node[i].name
        path = module_path(name)
        if path is None:
            continue  # a quantizer's node: not in the FP32 model that --exclude names nodes of
        item = path or name
        if item not in items:
            items.append(item)
    return items


@dataclass(frozen=True)
class _Boundary:
    inputs: list[str]  # activations the block reads from outside it
    outputs: list[str]  # tensors the block produces that something outside it reads (or graph outputs)


def _constant_tensors(model: onnx.ModelProto) -> set[str]:
    """Initializers and everything computed from them alone (a weight's DequantizeLinear, a shape Constant)."""
    constants = {init.name for init in model.graph.initializer}
    for node in model.graph.node:  # graph order is topological
        if all(not name or name in constants for name in node.input):
            constants.update(node.output)
    return constants


def _boundaries(model: onnx.ModelProto, block_map: BlockMap) -> dict[str, _Boundary]:
    nodes = model.graph.node
    constants = _constant_tensors(model)
    graph_outputs = {o.name for o in model.graph.output}
    block_of_tensor = {out: block_map.node_blocks[i] for i, node in enumerate(nodes) for out in node.output}
    readers: dict[str, set[str]] = {}  # tensor -> the blocks that read it
    for node, block in zip(nodes, block_map.node_blocks, strict=True):
        for name in node.input:
            readers.setdefault(name, set()).add(block)
    result = {block: _Boundary([], []) for block in block_map.blocks}
    for node, block in zip(nodes, block_map.node_blocks, strict=True):
        bound = result[block]
        for name in node.input:
            if name and name not in constants and block_of_tensor.get(name) != block and name not in bound.inputs:
                bound.inputs.append(name)
        for name in node.output:
            if name not in constants and (name in graph_outputs or readers.get(name, set()) - {block}):
                bound.outputs.append(name)
    return result


def _single_boundaries(model: onnx.ModelProto, block_map: BlockMap, what: str) -> dict[str, tuple[str, str]]:
    """Each block's one input and one output in an FP32 ResNet.

    Raises:
        InputFileError: a block reads or produces more than one activation (not a chain of residual blocks).
    """
    found = {}
    for block, bound in _boundaries(model, block_map).items():
        if len(bound.inputs) != 1 or len(bound.outputs) != 1:
            raise InputFileError(
                f"{what}: block {block} reads {len(bound.inputs)} and produces {len(bound.outputs)} activations;"
                " a residual block reads one and produces one"
            )
        found[block] = (bound.inputs[0], bound.outputs[0])
    return found


# --------------------------------------------------------------------------------------------------------------------
# Integer tensors and graph surgery


class _Graph:
    """Look-ups over one model's graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.producer = {out: node for node in model.graph.node for out in node.output if out}
        self.initializers = {init.name: init for init in model.graph.initializer}

    def qparams(self, tensor: str) -> tuple[str, str, list[onnx.AttributeProto]] | None:
        """Scale and zero-point names of an integer tensor (with the axis attribute, if any); None for a float one."""
        node = self.producer.get(tensor)
        while node is not None and node.op_type in _PASS_THROUGH:
            node = self.producer.get(node.input[0])
        if node is None or node.op_type not in _OUTPUT_QPARAMS:
            return None
        scale, zero_point = _OUTPUT_QPARAMS[node.op_type]
        if len(node.input) <= zero_point or not node.input[scale]:
            return None
        axis = [a for a in node.attribute if a.name == "axis"] if node.op_type == "QuantizeLinear" else []
        return node.input[scale], node.input[zero_point], axis

    def value(self, name: str) -> np.ndarray | None:
        init = self.initializers.get(name)
        return onnx.numpy_helper.to_array(init) if init is not None else None


def _dequantized(graph: _Graph, tensor: str, prefix: str) -> tuple[list[onnx.NodeProto], str]:
    """Nodes that turn ``tensor`` into float (none when it already is), and the float tensor's name."""
    params = graph.qparams(tensor)
    if params is None:
        return [], tensor
    scale, zero_point, _ = params
    name = f"{prefix}{tensor}_float"
    return [helper.make_node("DequantizeLinear", [tensor, scale, zero_point], [name], name=f"{name}_node")], name


def _add_outputs(model: onnx.ModelProto, names: Sequence[str]) -> None:
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            present.add(name)


def _expose_block_outputs(model: onnx.ModelProto, block_map: BlockMap) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``model`` with each block's output (dequantized where it is an integer tensor) as a graph output."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    graph = _Graph(model)
    names: dict[str, str] = {}
    for block, bound in _boundaries(model, block_map).items():
        if not bound.outputs:
            raise InputFileError(f"block {block} produces nothing that the rest of the model reads")
        extra, name = _dequantized(graph, bound.outputs[-1], prefix="analysis/")
        exposed.graph.node.extend(extra)
        names[block] = name
    _add_outputs(exposed, list(names.values()))
    return exposed, names


def isolate_block(
    fp32: onnx.ModelProto,
    int8: onnx.ModelProto,
    block: str,
    *,
    fp32_map: BlockMap | None = None,
    int8_map: BlockMap | None = None,
) -> tuple[onnx.ModelProto, tuple[str, str, str]]:
    """The FP32 model with only ``block`` quantized, as the INT8 model quantizes it; no calibration is re-run.

    The block's INT8 nodes, weights, scales and zero points are copied from ``int8`` and spliced in beside the FP32
    block. The block's input is quantized with the scale and zero point the INT8 model gives it (a quantized block
    computes on a quantized input); everything after the block runs in FP32 from the INT8 block's output.

    Returns:
        The model, and the names of its outputs: the FP32 block output, the INT8 block output, and the logits of the
        model with only this block quantized.

    Raises:
        InputFileError: the models do not have the same blocks, or a block is not a one-in, one-out residual block.
    """
    fp32_map = fp32_map or map_blocks(fp32)
    int8_map = int8_map or map_blocks(int8)
    if block not in fp32_map.blocks or block not in int8_map.blocks:
        raise InputFileError(f"block {block} is not in both models")
    x_fp32, y_fp32 = _single_boundaries(fp32, fp32_map, "FP32 model")[block]
    int8_bound = _boundaries(int8, int8_map)[block]
    source = _Graph(int8)
    prefix = f"isolated/{block}/"
    # Copied nodes keep their INT8 names under ``prefix``; these map a name to something else instead.
    renamed = {_FP32_INPUT: x_fp32}
    new_nodes: list[onnx.NodeProto] = []
    for tensor in int8_bound.inputs:  # reproduce each input the INT8 block reads from the FP32 block input
        producer = source.producer.get(tensor)
        params = source.qparams(tensor)
        if producer is not None and producer.op_type == "DequantizeLinear":
            scale, zero_point = producer.input[1], producer.input[2]
            axis = [a for a in producer.attribute if a.name == "axis"]
            new_nodes.append(
                _node(
                    "QuantizeLinear",
                    [_FP32_INPUT, scale, zero_point],
                    [f"{tensor}_requantized"],
                    f"{producer.name}_requantize",
                    axis,
                )
            )
            new_nodes.append(
                _node("DequantizeLinear", [f"{tensor}_requantized", scale, zero_point], [tensor], producer.name, axis)
            )
        elif params is not None:
            scale, zero_point, axis = params
            new_nodes.append(
                _node("QuantizeLinear", [_FP32_INPUT, scale, zero_point], [tensor], f"{tensor}_requantize", axis)
            )
        else:
            renamed[tensor] = x_fp32  # a float input: the graph input, or the output of a block kept in FP32
    block_nodes = [int8.graph.node[i] for i in int8_map.node_indices(block)]
    new_nodes.extend(_constant_producers(source, block_nodes, _constant_tensors(int8)))
    new_nodes.extend(block_nodes)
    if not int8_bound.outputs:
        raise InputFileError(f"block {block} of the INT8 model produces nothing that the rest of the model reads")
    extra, output_float = _dequantized(source, int8_bound.outputs[-1], prefix="")
    new_nodes.extend(extra)

    copies = []
    used_initializers: list[str] = []
    for node in new_nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{prefix}{node.name}"
        for k, name in enumerate(copy.input):
            if name in source.initializers and name not in used_initializers:
                used_initializers.append(name)
            copy.input[k] = renamed.get(name, f"{prefix}{name}") if name else name
        for k, name in enumerate(copy.output):
            copy.output[k] = f"{prefix}{name}" if name else name
        copies.append(copy)

    spliced = onnx.ModelProto()
    spliced.CopyFrom(fp32)
    _merge_opsets(spliced, int8)
    for name in used_initializers:
        init = onnx.TensorProto()
        init.CopyFrom(source.initializers[name])
        init.name = f"{prefix}{name}"
        spliced.graph.initializer.append(init)
    q_output = f"{prefix}{output_float}"
    fp32_block = set(fp32_map.node_indices(block))
    nodes = list(spliced.graph.node)
    for i, node in enumerate(nodes):
        if i not in fp32_block:
            for k, name in enumerate(node.input):
                if name == y_fp32:
                    node.input[k] = q_output
    # The copies read only the block input and initializers: right after the input's producer keeps the graph
    # topologically sorted, whatever order the nodes after it are in.
    at = next((i + 1 for i, node in enumerate(nodes) if x_fp32 in node.output), 0)
    del spliced.graph.node[:]
    spliced.graph.node.extend([*nodes[:at], *copies, *nodes[at:]])
    logits = q_output if y_fp32 in {o.name for o in fp32.graph.output} else fp32.graph.output[0].name
    del spliced.graph.output[:]
    _add_outputs(spliced, [y_fp32, q_output, logits])
    return spliced, (y_fp32, q_output, logits)


def _constant_producers(graph: _Graph, nodes: list[onnx.NodeProto], constants: set[str]) -> list[onnx.NodeProto]:
    """Nodes outside ``nodes`` that compute constants they read: a DequantizeLinear of a bias that deduplication
    made one initializer for several blocks is placed with the first of them. In dependency order."""
    inside = {id(node) for node in nodes}
    found: list[onnx.NodeProto] = []

    def pull(tensor: str) -> None:
        node = graph.producer.get(tensor)
        if node is None or id(node) in inside or any(node is f for f in found):
            return
        for name in node.input:
            pull(name)
        found.append(node)

    for node in nodes:
        for name in node.input:
            if name in constants:
                pull(name)
    return found


def _node(
    op: str, inputs: list[str], outputs: list[str], name: str, attributes: Sequence[onnx.AttributeProto] = ()
) -> onnx.NodeProto:
    node = helper.make_node(op, inputs, outputs, name=name)
    node.attribute.extend(attributes)
    return node


def _merge_opsets(target: onnx.ModelProto, other: onnx.ModelProto) -> None:
    """Import every domain ``other`` uses, at the higher of the two versions (the quantizer may raise the opset)."""
    versions = {o.domain: o.version for o in target.opset_import}
    for o in other.opset_import:
        versions[o.domain] = max(versions.get(o.domain, 0), o.version)
    del target.opset_import[:]
    target.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in versions.items())
    target.ir_version = max(target.ir_version, other.ir_version)


# --------------------------------------------------------------------------------------------------------------------
# Residual additions


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
    graph = _Graph(model)
    index = {id(node): i for i, node in enumerate(model.graph.node)}

    def is_shortcut(tensor: str) -> bool:
        """Whether ``tensor`` reaches the addition by the shortcut: from outside the block, or via its downsample."""
        node = graph.producer.get(tensor)
        while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node = graph.producer.get(node.input[0])
        if node is None:
            return True
        return block_map.node_blocks[index[id(node)]] != block or ".downsample" in f".{module_path(node.name)}"

    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for i in block_map.node_indices(block):
        node = model.graph.node[i]
        if node.op_type == "QLinearAdd":
            scales = [graph.value(node.input[1]), graph.value(node.input[4])]
            out_scale = graph.value(node.input[6])
            sources = [node.input[0], node.input[3]]
        elif node.op_type == "Add" and len(node.input) == 2:
            params = [_dequantize_params(graph, name) for name in node.input]
            if any(p is None for p in params):
                return None
            scales = [graph.value(p) for p in params]
            quantizer = next((r for r in readers.get(node.output[0], []) if r.op_type == "QuantizeLinear"), None)
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


def _dequantize_params(graph: _Graph, tensor: str) -> str | None:
    node = graph.producer.get(tensor)
    return node.input[1] if node is not None and node.op_type == "DequantizeLinear" else None


# --------------------------------------------------------------------------------------------------------------------
# Measuring


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


@dataclass(frozen=True)
class AnalysisOptions:
    """What to analyse on.

    Attributes:
        data: held-out images (folder, .npy/.npz, builtin:NAME); default: the model's built-in test split, else the
            bundled photos. Images the INT8 model was calibrated on (by the hashes in its record) are dropped.
        limit: analyse at most this many images, drawn with ``seed``; None for all.
        seed: seed of the draw.
        provider: the execution provider every session runs on (validate's ``--providers`` syntax); the CPU EP
            when None.
        strict_ep: fail (ProviderError) instead of falling back to the CPU, or when the provider leaves compute ops
            of the analysed graphs to another.
    """

    data: str | None = None
    limit: int | None = DEFAULT_IMAGES
    seed: int = 0
    provider: Provider | None = None
    strict_ep: bool = False


@dataclass(frozen=True)
class Analysis:
    """INT8 error by block, with the blocks ranked most sensitive first.

    Attributes:
        blocks: per block, in execution order.
        ranking: quantized blocks, most sensitive first (lowest ``sensitivity_db``; ties in execution order).
        parity: the INT8 model's logits against FP32's on the analysed images.
        flagged_additions: blocks whose residual addition's input scales differ by RESIDUAL_SCALE_RATIO or more.
        chart, report: the PNG and JSON written, if any.
        provider, ran_on: the provider asked for and the one the sessions ran on.
        placement: where each node of the two analysed graphs ran (``fp32``, ``int8``; every block output exposed,
            so an EP may fuse less than in the deployed model).
    """

    fp32_model: Path | None
    int8_model: Path | None
    format: str  # "qdq" or "qoperator"
    data_source: str
    images: int
    calibration_images_dropped: int
    parity: Parity
    blocks: list[BlockError]
    ranking: list[str]
    flagged_additions: list[str]
    residual_scale_ratio: float
    isolated_models: int
    seconds: float
    chart: Path | None = None
    report: Path | None = None
    notes: list[str] = field(default_factory=list)
    provider: str = "cpu"
    ran_on: str = "cpu"
    placement: dict[str, Placement | None] = field(default_factory=dict)

    def block(self, name: str) -> BlockError:
        return next(b for b in self.blocks if b.block == name)


def analyze_quantization(
    fp32: onnx.ModelProto,
    int8: onnx.ModelProto,
    options: AnalysisOptions = AnalysisOptions(),
    *,
    images: np.ndarray | None = None,
    fp32_path: Path | None = None,
    int8_path: Path | None = None,
    progress: Callable[[str], object] | None = None,
) -> Analysis:
    """Measure, block by block, the error an INT8 model shows against its FP32 source.

    Cost: one run of each model with every block output exposed, then one run per quantized block of the FP32 model
    with that block spliced in from the INT8 model (:func:`isolate_block`); no calibration.

    Args:
        fp32, int8: the FP32 model and its INT8 quantization (QDQ or QOperator), both exported by resnet-edge.
        options: which held-out images.
        images: preprocessed NCHW images to use instead of ``options.data``.
        fp32_path, int8_path: recorded in the result.
        progress: called with a short description before each model is run.

    Raises:
        InputFileError: a model is not of the expected kind, the two do not match, or no held-out image is left.
        OptionError: a bad limit.
    """
    started = time.perf_counter()
    if is_quantized(fp32):
        raise InputFileError("the first model is quantized; give the FP32 model first, then the INT8 one")
    if not is_quantized(int8):
        raise InputFileError("the second model is not quantized; give the FP32 model first, then the INT8 one")
    fp32_map, int8_map = map_blocks(fp32), map_blocks(int8)
    if fp32_map.blocks != int8_map.blocks:
        differ = sorted(set(fp32_map.blocks) ^ set(int8_map.blocks), key=block_sort_key)
        raise InputFileError(
            f"the models have different blocks ({', '.join(differ[:4])}); is the INT8 model a"
            " quantization of this FP32 model?"
        )
    if HEAD not in fp32_map.blocks:
        raise InputFileError("the FP32 model has no head (pooling and fc) after its last block")
    _single_boundaries(fp32, fp32_map, "FP32 model")  # fail early on a graph that is not a chain of blocks
    source_name, dropped = "given images", 0
    if images is None:
        images, source_name, dropped = _held_out_images(fp32, int8, options)
    fixed_batch = static_input_shape(fp32)[0]
    batch = fixed_batch or ANALYSIS_BATCH
    batches = [images[i : i + batch] for i in range(0, len(images), batch)]

    # Cumulative: both models whole, every block output exposed; the logits are the head's output.
    fp32_exposed, fp32_names = _expose_block_outputs(fp32, fp32_map)
    int8_exposed, int8_names = _expose_block_outputs(int8, int8_map)
    cumulative = {b: _ErrorAccumulator() for b in fp32_map.blocks}
    fp32_logits, int8_logits = [], []
    if progress:
        progress("FP32 and INT8 models, every block output")
    asked = options.provider or Provider.CPU
    fp32_session = open_session(fp32_exposed, asked, strict=options.strict_ep, classifier=False)
    int8_session = open_session(int8_exposed, asked, strict=options.strict_ep, classifier=False)
    placement = {"fp32": fp32_session.placement, "int8": int8_session.placement}
    ran_on = int8_session.ran_on
    provider = asked if not int8_session.fell_back else Provider.CPU  # warned once above; no warning per block
    for x in batches:
        refs = fp32_session.predict(x, [fp32_names[b] for b in fp32_map.blocks])
        cands = int8_session.predict(x, [int8_names[b] for b in fp32_map.blocks])
        for block, ref, cand in zip(fp32_map.blocks, refs, cands, strict=True):
            cumulative[block].add(ref, cand)
        fp32_logits.append(refs[-1])
        int8_logits.append(cands[-1])
    del fp32_session, int8_session
    reference_logits = np.concatenate(fp32_logits)

    # Isolated: one spliced model per quantized block, each run once over the same batches.
    blocks: list[BlockError] = []
    for block in fp32_map.blocks:
        quantized, total = _compute_nodes(int8, int8_map, block)
        isolated = isolated_logits = agreement = None
        if quantized:
            if progress:
                progress(f"only {block} quantized")
            model, names = isolate_block(fp32, int8, block, fp32_map=fp32_map, int8_map=int8_map)
            session = open_session(model, provider, strict=options.strict_ep, classifier=False, audit=False)
            at_block, at_logits = _ErrorAccumulator(), _ErrorAccumulator()
            logits = []
            for x, ref_logits in zip(batches, fp32_logits, strict=True):
                ref, cand, out = session.predict(x, list(names))
                at_block.add(ref, cand)
                at_logits.add(ref_logits, out)
                logits.append(out)
            del session
            isolated, isolated_logits = at_block.result(), at_logits.result()
            agreement = compare(reference_logits, np.concatenate(logits)).top1_agreement
        blocks.append(
            BlockError(
                block=block,
                quantized_compute_nodes=quantized,
                compute_nodes=total,
                cumulative=cumulative[block].result(),
                isolated=isolated,
                isolated_logits=isolated_logits,
                isolated_top1_agreement=agreement,
                residual=residual_scales(int8, int8_map, block),
                exclude=exclusion_items(fp32, fp32_map, block),
            )
        )
    ranked = sorted(
        (b for b in blocks if b.sensitivity_db is not None), key=lambda b: (b.sensitivity_db, block_sort_key(b.block))
    )
    return Analysis(
        fp32_model=fp32_path,
        int8_model=int8_path,
        format="qoperator"
        if any(n.op_type in _OUTPUT_QPARAMS and n.op_type != "QuantizeLinear" for n in int8.graph.node)
        else "qdq",
        data_source=source_name,
        images=len(images),
        calibration_images_dropped=dropped,
        parity=compare(reference_logits, np.concatenate(int8_logits)),
        blocks=blocks,
        ranking=[b.block for b in ranked],
        flagged_additions=[b.block for b in blocks if b.residual is not None and b.residual.flagged],
        residual_scale_ratio=RESIDUAL_SCALE_RATIO,
        isolated_models=sum(b.isolated is not None for b in blocks),
        seconds=time.perf_counter() - started,
        provider=asked.value,
        ran_on=ran_on,
        placement=placement,
    )


def _compute_nodes(int8: onnx.ModelProto, block_map: BlockMap, block: str) -> tuple[int, int]:
    """(quantized, all) compute nodes of ``block`` in the INT8 model: integer ops, or Conv/Gemm fed by DQ."""
    producer = {out: node for node in int8.graph.node for out in node.output}
    quantized = total = 0
    for i in block_map.node_indices(block):
        node = int8.graph.node[i]
        if node.op_type in ("QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger"):
            quantized += 1
            total += 1
        elif node.op_type in COMPUTE_OPS:
            total += 1
            feeds = [producer.get(name) for name in node.input[:2]]
            quantized += all(f is not None and f.op_type == "DequantizeLinear" for f in feeds)
    return quantized, total


def _held_out_images(
    fp32: onnx.ModelProto, int8: onnx.ModelProto, options: AnalysisOptions
) -> tuple[np.ndarray, str, int]:
    """Up to ``options.limit`` preprocessed images, none of which the INT8 model was calibrated on (by the hashes in
    its record); with the source's name and the number of calibration images passed over."""
    if options.limit is not None and options.limit < 1:
        raise OptionError(f"limit must be at least 1, got {options.limit}")
    spec = preprocessing_for(fp32, source="FP32 model")
    source = open_source(options.data or default_test_images(read_metadata(fp32).dataset))
    record = read_record(int8, QUANTIZATION_KEY) or {}
    calibrated = {f["sha256"] for f in record.get("calibration", {}).get("files", [])}
    # Draw in a seeded random order and stop at the limit, so a large folder is not loaded whole.
    order = np.random.default_rng(options.seed).permutation(len(source)) if options.limit else range(len(source))
    kept: list[tuple[int, np.ndarray]] = []
    dropped = 0
    for index in order:
        sample = source.load(int(index), spec)
        if sample.sha256 in calibrated:
            dropped += 1
            continue
        kept.append((int(index), sample.tensor))
        if options.limit is not None and len(kept) == options.limit:
            break
    if not kept:
        raise InputFileError(f"{source.name}: every image was used to calibrate the INT8 model; give held-out --data")
    return np.stack([t for _, t in sorted(kept, key=lambda item: item[0])]), source.name, dropped


def analyze_onnx(
    fp32_path: Path | str,
    int8_path: Path | str,
    options: AnalysisOptions = AnalysisOptions(),
    *,
    output_dir: Path | str | None = None,
    progress: Callable[[str], object] | None = None,
) -> Analysis:
    """Load two model files, analyse them (:func:`analyze_quantization`) and write the chart and JSON report.

    Writes ``<output_dir>/<INT8 name>.analysis.png`` and ``.analysis.json``, each atomically; nothing when
    ``output_dir`` is None.

    Raises:
        InputFileError: unreadable models, a missing output folder, or see :func:`analyze_quantization`.
    """
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    if output_dir is not None and not Path(output_dir).is_dir():
        raise InputFileError(f"output folder does not exist: {output_dir}")
    stem = int8_path.name.removesuffix(".onnx")
    if output_dir is not None:
        refuse_overwriting_inputs(
            [Path(output_dir, f"{stem}.analysis.png"), Path(output_dir, f"{stem}.analysis.json")],
            [fp32_path, int8_path, options.data],
            command="analyze output",
        )
    fp32, int8 = load_onnx(fp32_path), load_onnx(int8_path)
    analysis = analyze_quantization(fp32, int8, options, fp32_path=fp32_path, int8_path=int8_path, progress=progress)
    notes = []
    source_sha = (read_record(int8, QUANTIZATION_KEY) or {}).get("source_model_sha256")
    if source_sha and source_sha != sha256_file(fp32_path):
        # Said only now that the analysis found the same blocks in both.
        notes.append(f"{int8_path.name} was quantized from another file than {fp32_path.name}; its blocks match")
        warnings.warn(notes[-1], ResnetEdgeWarning, stacklevel=2)
    analysis = replace(analysis, notes=notes)
    if output_dir is None:
        return analysis
    analysis = replace(
        analysis, chart=Path(output_dir, f"{stem}.analysis.png"), report=Path(output_dir, f"{stem}.analysis.json")
    )
    write_chart(analysis, analysis.chart)
    write_json_atomic(analysis.report, to_jsonable(analysis))
    return analysis


def write_chart(analysis: Analysis, path: Path | str) -> Path:
    """A horizontal bar chart of SQNR by block, most sensitive block on top, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    order = analysis.ranking + [b.block for b in analysis.blocks if b.block not in analysis.ranking]
    rows = [analysis.block(name) for name in order]
    series = [
        ("only this block INT8: logits", lambda b: b.isolated_logits.sqnr_db if b.isolated_logits else None, "#d62728"),
        ("only this block INT8: block output", lambda b: b.isolated.sqnr_db if b.isolated else None, "#ff9896"),
        ("whole model INT8: block output", lambda b: b.cumulative.sqnr_db, "#1f77b4"),
    ]
    finite = [v for b in rows for _, get, _ in series if (v := get(b)) is not None and math.isfinite(v)]
    cap, floor = max(finite, default=60.0) + 5, min([0.0, *finite])  # where to draw inf (no error) and -inf
    height = 0.8 / len(series)  # bar thickness: a block's bars fill 80% of its row
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.75 * len(rows)))
    y = np.arange(len(rows))
    for k, (label, get, color) in enumerate(series):
        values = [get(b) for b in rows]
        widths = [0.0 if v is None or math.isnan(v) else min(max(v, floor), cap) for v in values]
        ax.barh(y + (k - 1) * height, widths, height=height, color=color, label=label)
    for i, b in enumerate(rows):
        notes = []
        if b.residual is not None and b.residual.flagged:
            notes.append(f"add scales differ {b.residual.ratio:.0f}x")
        if b.isolated is None:
            notes.append("kept FP32")
        if notes:
            ax.text(cap - 0.5, y[i], "; ".join(notes), va="center", ha="right", fontsize=8, color="black")
    ax.set_xlim(floor, cap)
    ax.set_yticks(y, [b.block for b in rows])
    ax.invert_yaxis()  # most sensitive on top
    ax.set_xlabel("SQNR against FP32 (dB); shorter bar = more INT8 error")
    model = analysis.int8_model.name if analysis.int8_model else "INT8 model"
    ax.set_title(
        f"{model}: INT8 error by block, most sensitive first\n"
        f"{analysis.images} held-out images from {analysis.data_source};"
        f" top-1 agreement {100 * analysis.parity.top1_agreement:.1f}%",
        fontsize=10,
    )
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.6 / fig.get_figheight()),
        ncol=len(series),
        fontsize=8,
        frameon=False,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


__all__ = [
    "HEAD",
    "RESIDUAL_SCALE_RATIO",
    "STEM",
    "Analysis",
    "AnalysisOptions",
    "BlockError",
    "BlockMap",
    "ResidualScales",
    "TensorError",
    "analyze_onnx",
    "analyze_quantization",
    "exclusion_items",
    "isolate_block",
    "map_blocks",
    "residual_scales",
    "write_chart",
]
