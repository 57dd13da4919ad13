"""Graph surgery: the FP32 model with one block spliced in from the INT8 model, and block outputs exposed.

The isolated measurement of a block needs a model where only that block is quantized. It is built without
re-calibrating: the FP32 graph with the block's INT8 nodes (their weights, scales and zero points copied from the INT8
model) spliced in beside the FP32 block, the block's input quantized with the scale the INT8 model uses for it, and
the FP32 tail fed from the INT8 block. One run of that graph gives the FP32 block output, the INT8 block output and
the logits of a model where only this block is INT8.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import helper

from resnet_edge.errors import InputFileError
from resnet_edge.onnx.graph import GraphIndex
from resnet_edge.quantization.sensitivity.blocks import (
    BlockMap,
    _boundaries,
    _constant_tensors,
    _single_boundaries,
    map_blocks,
)

_FP32_INPUT = "\x00fp32 block input"  # placeholder for the FP32 tensor a spliced block reads; never a real name


def _dequantized(graph: GraphIndex, tensor: str, prefix: str) -> tuple[list[onnx.NodeProto], str]:
    """Nodes that turn ``tensor`` into float (none when it already is), and the float tensor's name."""
    params = graph.qparams(tensor)
    if params is None:
        return [], tensor
    scale, zero_point, _ = params
    name = f"{prefix}{tensor}_float"
    return [helper.make_node("DequantizeLinear", [tensor, scale, zero_point], [name], name=f"{name}_node")], name


def _add_outputs(model: onnx.ModelProto, names: Sequence[str]) -> None:
    present = set(GraphIndex(model).outputs)
    for name in names:
        if name not in present:
            model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            present.add(name)


def _expose_block_outputs(model: onnx.ModelProto, block_map: BlockMap) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``model`` with each block's output (dequantized where it is an integer tensor) as a graph output."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    graph = GraphIndex(model)
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
    source = GraphIndex(int8)
    prefix = f"isolated/{block}/"
    # Copied nodes keep their INT8 names under ``prefix``; these map a name to something else instead.
    renamed = {_FP32_INPUT: x_fp32}
    new_nodes = _requantized_inputs(source, int8_bound.inputs, x_fp32, renamed)
    block_nodes = [int8.graph.node[i] for i in int8_map.node_indices(block)]
    new_nodes.extend(_constant_producers(source, block_nodes, _constant_tensors(int8)))
    new_nodes.extend(block_nodes)
    if not int8_bound.outputs:
        raise InputFileError(f"block {block} of the INT8 model produces nothing that the rest of the model reads")
    extra, output_float = _dequantized(source, int8_bound.outputs[-1], prefix="")
    new_nodes.extend(extra)
    copies, used_initializers = _prefixed_copies(new_nodes, source, renamed, prefix)

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


def _requantized_inputs(
    source: GraphIndex, inputs: Sequence[str], x_fp32: str, renamed: dict[str, str]
) -> list[onnx.NodeProto]:
    """Nodes that reproduce each input the INT8 block reads from the FP32 block input ``_FP32_INPUT``, with the
    scale and zero point the INT8 model gives it; a float input is renamed to ``x_fp32`` in ``renamed`` instead."""
    nodes: list[onnx.NodeProto] = []
    for tensor in inputs:
        producer = source.producer(tensor)
        params = source.qparams(tensor)
        if producer is not None and producer.op_type == "DequantizeLinear":
            scale, zero_point = producer.input[1], producer.input[2]
            axis = [a for a in producer.attribute if a.name == "axis"]
            nodes.append(
                _node(
                    "QuantizeLinear",
                    [_FP32_INPUT, scale, zero_point],
                    [f"{tensor}_requantized"],
                    f"{producer.name}_requantize",
                    axis,
                )
            )
            nodes.append(
                _node("DequantizeLinear", [f"{tensor}_requantized", scale, zero_point], [tensor], producer.name, axis)
            )
        elif params is not None:
            scale, zero_point, axis = params
            nodes.append(
                _node("QuantizeLinear", [_FP32_INPUT, scale, zero_point], [tensor], f"{tensor}_requantize", axis)
            )
        else:
            renamed[tensor] = x_fp32  # a float input: the graph input, or the output of a block kept in FP32
    return nodes


def _prefixed_copies(
    nodes: list[onnx.NodeProto], source: GraphIndex, renamed: dict[str, str], prefix: str
) -> tuple[list[onnx.NodeProto], list[str]]:
    """Copies of ``nodes`` with every name under ``prefix`` (but those in ``renamed``), and the INT8 initializers
    they read, in first-use order."""
    copies = []
    used_initializers: list[str] = []
    for node in nodes:
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
    return copies, used_initializers


def _constant_producers(graph: GraphIndex, nodes: list[onnx.NodeProto], constants: set[str]) -> list[onnx.NodeProto]:
    """Nodes outside ``nodes`` that compute constants they read: a DequantizeLinear of a bias that deduplication
    made one initializer for several blocks is placed with the first of them. In dependency order."""
    inside = {id(node) for node in nodes}
    found: list[onnx.NodeProto] = []

    def pull(tensor: str) -> None:
        node = graph.producer(tensor)
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
