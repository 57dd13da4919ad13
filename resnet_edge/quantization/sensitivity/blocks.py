"""Which residual block each node of an exported ResNet belongs to, and where a block's activations cross in and out.

Every node of an exported ResNet carries the module scope it came from (``/layer1/layer1.0/conv1/Conv``, see
:func:`resnet_edge.onnx.graph.module_path`), and onnxruntime's quantizer keeps those names (QDQ nodes are named after
the tensor they quantize, QOperator nodes get a ``_quant`` suffix). So each node of the FP32 and of the INT8 model
maps to ``stem``, a block ``layerN.i`` (its main branch, its shortcut or downsample, the addition and its ReLU) or
``head``, by name and dataflow, never by position in the file. The tensor that leaves a block (the one consumed by
another block) is the block's output in either model, whatever the quantizer renamed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import onnx

from resnet_edge.errors import InputFileError
from resnet_edge.onnx.graph import GraphIndex, module_path

STEM = "stem"
HEAD = "head"

_BLOCK_PATH = re.compile(r"^(layer(\d+)\.(\d+))(?:\.|$)")


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
    index = GraphIndex(model)
    producer, consumers = index.producer_index, index.consumer_indices

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
    graph_outputs = set(GraphIndex(model).outputs)
    index = GraphIndex(model)
    block_of_tensor = {name: block_map.node_blocks[i] for name, i in index.producer_index.items()}
    # tensor -> the blocks that read it
    readers = {name: {block_map.node_blocks[i] for i in at} for name, at in index.consumer_indices.items()}
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
