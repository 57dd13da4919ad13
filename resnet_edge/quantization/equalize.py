"""Cross-layer equalization: rescale channel pairs across conv -> ReLU -> conv so that per-tensor weights fit.

Nagel, van Baalen, Blankevoort and Welling, "Data-Free Quantization Through Weight Equalization and Bias
Correction", ICCV 2019, section 4.1. A ReLU commutes with a positive scale, ``relu(x / s) = relu(x) / s``, so
dividing output channel ``i`` of the first convolution (weights and bias) by ``s_i`` and multiplying input channel
``i`` of the second by ``s_i`` leaves the network's function unchanged. Choosing ``s_i = sqrt(r1_i / r2_i)`` (``r1_i``
the largest weight magnitude of the first layer's output channel ``i``, ``r2_i`` of the second layer's input channel
``i``) gives both layers the same range ``sqrt(r1_i r2_i)`` in that channel, which maximises the precision a
per-tensor weight grid leaves each channel (the paper's theorem). Per-channel weights need it far less; NPUs that
take only per-tensor weights are where it matters (onnxruntime#6545: ResNet-18 moved 2 points with granularity).

Where it applies: only a Conv whose output feeds nothing but one Relu, which feeds nothing but one Conv. In a ResNet
that is conv1 -> conv2 inside a basic block's branch, conv1 -> conv2 -> conv3 inside a bottleneck's; never across a
residual addition (both inputs of an Add must keep one scale, and a block's output feeds the next block and its
shortcut), never at the stem (its output feeds a block and its shortcut). Grouped convolutions are left alone. A
chain of three (a bottleneck) is equalized pair by pair, repeated until the scales settle, as in the paper.

Bias absorption (section 4.1.2) moves a constant ``c_i`` out of a channel that is always above ``c_i``: the first
layer's bias drops by ``c_i`` and the second's rises by ``W2 c``. It is exact only when the second convolution has
no zero padding (a padded border would see ``-c_i`` instead of 0), so it runs only there: a bottleneck's
conv2 -> conv3, never in a basic block. ``c_i`` comes from the calibration images (the smallest pre-activation of the
channel seen), not from BatchNorm statistics, which an exported, folded model no longer has; and a pair is absorbed
only where that narrows the per-tensor range of the second layer's input, the one thing it can gain.

The functions here take and return ONNX models; only :func:`pre_activation_ranges` reads data.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import numpy_helper

from resnet_edge.onnx.graph import GraphIndex

__all__ = [
    "EQUALIZE_SWEEPS",
    "Equalization",
    "EqualizationRecord",
    "EqualizedLayer",
    "EqualizedPair",
    "absorb_biases",
    "absorbable_pairs",
    "equalization_pairs",
    "equalize_model",
    "pre_activation_ranges",
]

EQUALIZE_SWEEPS = 20  # chains of three (bottlenecks) are re-equalized until the scales settle; 2-4 sweeps in practice
SETTLED = 1e-4  # a sweep whose scales are all within this of 1 changes nothing worth another sweep
# A channel whose weights are all (almost) zero in either layer has no range to balance: its scale stays 1.
_NO_RANGE = 1e-12


@dataclass(frozen=True)
class EqualizedPair:
    """One conv -> ReLU -> conv pair and what equalization did to it.

    Attributes:
        first, second: the two Conv node names.
        relu: the Relu between them.
        channels: channels rescaled (the first's outputs, the second's inputs).
        precision_before, precision_after: per layer (first, second), the mean over channels of the channel's
            weight range over the tensor's range: the share of a per-tensor grid a channel uses on average (the
            paper's measure; 1 is perfect).
        scale_min, scale_max: the extreme channel scales applied (product over sweeps).
        absorbed: channels whose constant part moved into the second layer's bias (bias absorption).
    """

    first: str
    second: str
    relu: str
    channels: int
    precision_before: tuple[float, float]
    precision_after: tuple[float, float]
    scale_min: float
    scale_max: float
    absorbed: int = 0


@dataclass(frozen=True)
class Equalization:
    """An equalized copy of a model and the pairs it rescaled.

    Attributes:
        model: the equalized model (the input is not changed).
        pairs: every pair rescaled, in graph order.
        sweeps: passes over the pairs until the scales settled.
        seconds: time taken.
    """

    model: onnx.ModelProto = field(repr=False)
    pairs: list[EqualizedPair]
    sweeps: int
    seconds: float = 0.0

    def record(self) -> EqualizationRecord:
        """What the calibration record keeps of it (the equalization step's ``details``)."""
        return EqualizationRecord(
            pairs=len(self.pairs),
            sweeps=self.sweeps,
            absorbed_channels=sum(p.absorbed for p in self.pairs),
            mean_precision_before=_mean([v for p in self.pairs for v in p.precision_before]),
            mean_precision_after=_mean([v for p in self.pairs for v in p.precision_after]),
            layers=tuple(
                EqualizedLayer(
                    first=p.first,
                    second=p.second,
                    precision_before=p.precision_before,
                    precision_after=p.precision_after,
                    scale_range=(p.scale_min, p.scale_max),
                    absorbed=p.absorbed,
                )
                for p in self.pairs
            ),
        )


@dataclass(frozen=True)
class EqualizedLayer:
    """One equalized pair as the record keeps it."""

    first: str
    second: str
    precision_before: tuple[float, float]
    precision_after: tuple[float, float]
    scale_range: tuple[float, float]  # the extreme channel scales applied
    absorbed: int


@dataclass(frozen=True)
class EqualizationRecord:
    """What the calibration record keeps of an equalization: the pairs rescaled, how evenly each layer's channels use a
    per-tensor grid before and after (the means over both layers of every pair), and each pair."""

    pairs: int
    sweeps: int
    absorbed_channels: int
    mean_precision_before: float | None
    mean_precision_after: float | None
    layers: tuple[EqualizedLayer, ...]


def equalization_pairs(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto]]:
    """The (first Conv, Relu, second Conv) triples where equalization is exact, in graph order (see the module)."""
    index = GraphIndex(model)
    graph_outputs = set(index.outputs)
    pairs = []
    for first in model.graph.node:
        if not _equalizable_conv(first, index):
            continue
        readers = index.consumers(first.output[0])
        if len(readers) != 1 or readers[0].op_type != "Relu" or first.output[0] in graph_outputs:
            continue
        relu = readers[0]
        after = index.consumers(relu.output[0])
        if len(after) != 1 or relu.output[0] in graph_outputs:
            continue
        second = after[0]
        if _equalizable_conv(second, index) and second.input[0] == relu.output[0]:
            pairs.append((first, relu, second))
    return pairs


def equalize_model(model: onnx.ModelProto, *, sweeps: int = EQUALIZE_SWEEPS) -> Equalization:
    """Equalize every conv -> ReLU -> conv pair of ``model`` (a copy; ``model`` is unchanged).

    Args:
        model: an FP32 model with its BatchNorms folded (the simplified model).
        sweeps: at most this many passes over the pairs (a chain of three needs several to settle).

    Returns:
        The equalized model, which computes the same function, and what was done.
    """
    started = time.perf_counter()
    model = copy.deepcopy(model)
    triples = equalization_pairs(model)
    _own_parameters(model, [node for first, _, second in triples for node in (first, second)])
    weights = {init.name: init for init in model.graph.initializer}
    values = {name: numpy_helper.to_array(init).astype(np.float32) for name, init in weights.items()}

    def tensors(node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray | None]:
        bias = values[node.input[2]] if len(node.input) > 2 and node.input[2] else None
        return values[node.input[1]], bias

    before = [(_precision(tensors(a)[0], axis=0), _precision(tensors(b)[0], axis=1)) for a, _, b in triples]
    total = [np.ones(tensors(a)[0].shape[0], np.float32) for a, _, _ in triples]
    done = 0
    while done < sweeps:
        done += 1
        largest = 0.0
        for k, (first, _, second) in enumerate(triples):
            w1, b1 = tensors(first)
            w2, _ = tensors(second)
            scale = equalizing_scales(w1, w2)
            values[first.input[1]] = w1 / scale[:, None, None, None]
            if b1 is not None:
                values[first.input[2]] = b1 / scale
            values[second.input[1]] = w2 * scale[None, :, None, None]
            total[k] *= scale
            largest = max(largest, float(np.max(np.abs(np.log(scale)))) if scale.size else 0.0)
        if largest < SETTLED:
            break
    for name, init in weights.items():
        if name in values and init.data_type == onnx.TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(values[name], name))
    pairs = [
        EqualizedPair(
            first=a.name,
            second=b.name,
            relu=r.name,
            channels=int(total[k].size),
            precision_before=before[k],
            precision_after=(_precision(tensors(a)[0], axis=0), _precision(tensors(b)[0], axis=1)),
            scale_min=float(total[k].min()) if total[k].size else 1.0,
            scale_max=float(total[k].max()) if total[k].size else 1.0,
        )
        for k, (a, r, b) in enumerate(triples)
    ]
    return Equalization(model=model, pairs=pairs, sweeps=done if triples else 0, seconds=time.perf_counter() - started)


def equalizing_scales(w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """``s_i = sqrt(r1_i / r2_i)`` for each channel between two convolutions (1 where either range is ~0).

    Args:
        w1: the first convolution's weights (out, in, kh, kw); channel ``i`` is its output ``i``.
        w2: the second's (out, in, kh, kw); channel ``i`` is its input ``i``.
    """
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
    r2 = np.abs(np.moveaxis(w2, 1, 0)).reshape(w2.shape[1], -1).max(axis=1)
    usable = (r1 > _NO_RANGE) & (r2 > _NO_RANGE)
    scale = np.ones_like(r1)
    scale[usable] = np.sqrt(r1[usable] / r2[usable])
    return scale.astype(np.float32)


def absorbable_pairs(equalization: Equalization) -> list[EqualizedPair]:
    """The pairs whose second convolution has no zero padding: where bias absorption is exact."""
    nodes = {node.name: node for node in equalization.model.graph.node}
    index = GraphIndex(equalization.model)
    return [
        pair
        for pair in equalization.pairs
        if not any(_pads(nodes[pair.second]))
        and len(nodes[pair.first].input) > 2
        and nodes[pair.first].input[2] in index.initializers
    ]


def pre_activation_ranges(
    model: onnx.ModelProto, pairs: list[EqualizedPair], batches: Iterable[np.ndarray]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each pair's first Conv output (before the ReLU), per channel: its smallest and largest value over ``batches``.

    One onnxruntime pass over the images with those tensors made graph outputs; memory holds one batch.
    """
    from resnet_edge.onnx.runtime import open_session

    nodes = {node.name: node for node in model.graph.node}
    tensors = {pair.first: nodes[pair.first].output[0] for pair in pairs}
    exposed = copy.deepcopy(model)
    exposed.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in tensors.values()
    )
    session = open_session(exposed, classifier=False, audit=False)
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for images in batches:
        for (first, _), values in zip(tensors.items(), session.predict(images, list(tensors.values())), strict=True):
            low, high = values.min(axis=(0, 2, 3)), values.max(axis=(0, 2, 3))
            if first in found:
                low, high = np.minimum(found[first][0], low), np.maximum(found[first][1], high)
            found[first] = (low, high)
    return found


def absorb_biases(equalization: Equalization, ranges: dict[str, tuple[np.ndarray, np.ndarray]]) -> Equalization:
    """Move each always-positive channel's constant part from the first layer of a pair into the second's bias,
    where that narrows the second layer's input range (the per-tensor activation grid).

    Exact where applied: only pairs whose second Conv has no zero padding (:func:`absorbable_pairs`) are touched,
    and only channels whose pre-activation never went below ``c_i`` on the data ``ranges`` came from, so the ReLU
    does the same thing. A pair is left alone when absorbing would not lower the largest value of the ReLU's output
    over all channels: a per-tensor grid would not get finer, and nothing is gained.

    Args:
        equalization: from :func:`equalize_model`.
        ranges: first Conv's node name -> the smallest and largest value of each output channel before the ReLU,
            over the calibration images (:func:`pre_activation_ranges`); pairs without an entry are left alone.

    Returns:
        The model with the biases moved (a copy), and the count of channels absorbed per pair.
    """
    model = copy.deepcopy(equalization.model)
    index = GraphIndex(model)
    nodes = {node.name: node for node in model.graph.node}
    exact = {pair.first for pair in absorbable_pairs(equalization)}
    pairs = []
    for pair in equalization.pairs:
        first, second = nodes[pair.first], nodes[pair.second]
        absorbed = 0
        if pair.first in exact and pair.first in ranges:
            low, high = ranges[pair.first]
            shift = np.where(low > 0, low, 0.0).astype(np.float32)
            if np.max(np.maximum(high, 0) - shift) < np.max(np.maximum(high, 0)):
                absorbed = int(np.count_nonzero(shift))
                b1 = index.value(first.input[2]).astype(np.float32)
                w2 = index.value(second.input[1]).astype(np.float32)
                moved = np.einsum("oihw,i->o", w2, shift).astype(np.float32)
                index.initializers[first.input[2]].CopyFrom(numpy_helper.from_array(b1 - shift, first.input[2]))
                _set_bias(model, index, second, moved)
        pairs.append(replace(pair, absorbed=absorbed))
    return replace(equalization, model=model, pairs=pairs)


def _set_bias(model: onnx.ModelProto, index: GraphIndex, conv: onnx.NodeProto, added: np.ndarray) -> None:
    if len(conv.input) > 2 and conv.input[2]:
        init = index.initializers[conv.input[2]]
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32) + added, init.name))
        return
    name = f"{conv.name}_absorbed_bias"
    model.graph.initializer.append(numpy_helper.from_array(added, name))
    while len(conv.input) < 3:
        conv.input.append("")
    conv.input[2] = name


def _equalizable_conv(node: onnx.NodeProto, index: GraphIndex) -> bool:
    if node.op_type != "Conv" or len(node.input) < 2:
        return False
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    params = [name for name in node.input[1:3] if name]
    return (
        group == 1
        and all(name in index.initializers for name in params)
        and index.initializers[node.input[1]].data_type == onnx.TensorProto.FLOAT
        and len(index.initializers[node.input[1]].dims) == 4
    )


def _own_parameters(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> None:
    """Give each node a private copy of any weight or bias another node also reads: rescaling a shared tensor would
    change the other layer too. (Exporters share identical tensors: every zero bias of a freshly initialised
    ResNet-50 is one initializer.)"""
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    inits = {init.name: init for init in model.graph.initializer}
    for node in nodes:
        for position in (1, 2):
            name = node.input[position] if len(node.input) > position else ""
            if name and uses.get(name, 0) > 1:
                private = onnx.TensorProto()
                private.CopyFrom(inits[name])
                private.name = f"{node.name}_{'weight' if position == 1 else 'bias'}_equalized"
                model.graph.initializer.append(private)
                uses[name] -= 1
                node.input[position] = private.name


def _pads(node: onnx.NodeProto) -> list[int]:
    pads = next((list(a.ints) for a in node.attribute if a.name == "pads"), [])
    auto = next((a.s for a in node.attribute if a.name == "auto_pad"), b"NOTSET")
    return pads + ([1] if auto not in (b"NOTSET", b"VALID") else [])


def _precision(weight: np.ndarray, *, axis: int) -> float:
    """Mean over the channels along ``axis`` of the channel's range over the tensor's (1: all channels alike)."""
    ranges = np.abs(np.moveaxis(weight, axis, 0)).reshape(weight.shape[axis], -1).max(axis=1)
    top = float(ranges.max()) if ranges.size else 0.0
    return float(ranges.mean() / top) if top > 0 else 1.0


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None
