"""Activation statistics reduced on the fly: onnxruntime's calibration ranges without keeping any activation.

onnxruntime's calibrators run an augmented copy of the model and keep its outputs in Python: MinMax keeps per-batch
ReduceMin/ReduceMax outputs (small), the histogram methods keep every intermediate tensor of every image until
``collect_data`` returns. Measured on ResNet-50 (106 MB of calibrated tensors per 224x224 image) the MinMax session
alone grew by 840 MB on one batch of 8: its default execution order runs the added ReduceMin/ReduceMax nodes after
most of the network, so every activation of the batch is alive at once. Here:

* **Pass 1, every method**: ReduceMin and ReduceMax of every calibrated tensor inside the graph (``keepdims=0``, so
  each batch returns two scalars per tensor), appended in the reverse order of the tensors they reduce. onnxruntime's
  default order (a depth-first walk back from the outputs, taking the last output first) then runs each reduction
  right after its tensor is made, so the session holds what the plain model holds (measured: a batch of 8 on
  ResNet-50 peaks at 403 MB at level basic, 507 MB at all, instead of 1.9 GB for the same nodes appended in tensor
  order); a test reads that order from a real session's profile. A Relu's output and a reshape's are not reduced:
  their extremes follow exactly from their input's (:func:`derived_tensors`). Minima and maxima merge across batches.
* **Pass 2, entropy and percentile**: the calibrated tensors as outputs, ``HISTOGRAM_BATCH`` images at a time, each
  added to a histogram whose bins pass 1 fixed: the range onnxruntime's collector derives from all images at once
  (``[-T, T]`` with ``T`` the largest magnitude, or ``[min |x|, max |x|]`` for symmetric percentile). A histogram of
  fixed bins is a sum over images, so the merged histogram is the one onnxruntime builds when it holds every tensor
  of every image (:class:`onnxruntime.quantization.calibrate.HistogramCollector`, one ``collect`` call), and the
  thresholds come from its own percentile code and an exact, faster transcription of its entropy search
  (:func:`entropy_threshold`).

So the ranges are those of ``create_calibrator(...)`` with one ``collect_data`` over every image. Computed at level
basic they are equal bit for bit (the tests); at ``STATISTICS_OPTIMIZATION`` the kernels round differently in the last
bits: minmax ranges stay equal within float tolerance, while a histogram value may land in the neighbouring bin and
move a threshold by a bin. Measured on the trained digits resnet20 (200 images, 53 tensors), every threshold of all
three methods was within 7e-7 relative of onnxruntime's; a percentile of 99.999% sits in the sparse tail, where one
count moved can move it to the next occupied bin (17 of 2048 bins at most in one comparison: under 2% of the range).
"""

from __future__ import annotations

import contextlib
import io
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper

from resnet_edge.onnx.runtime import Session, open_session
from resnet_edge.quantization.configs import Method

if TYPE_CHECKING:
    from onnxruntime.quantization.calibrate import TensorsData

# onnxruntime's calibrator defaults, so that the ranges are the ones its calibrators give (create_calibrator)...
PERCENTILE_BINS = 2048
PERCENTILE = 99.999
ENTROPY_QUANTIZED_BINS = 128
# ... except one: its entropy default, 128 bins, leaves the KL search a single candidate (the whole range, i.e.
# minmax) when the histogram is built from all images at once. 2048 is TensorRT's choice (Migacz, "8-bit Inference
# with TensorRT", GTC 2017) and gives the search 961 thresholds.
ENTROPY_BINS = 2048
# Pass 2 returns every calibrated tensor of a batch (ResNet-50: 106 MB per image); one image at a time bounds that.
HISTOGRAM_BATCH = 1
# onnxruntime's graph optimisation level for both passes. Its calibrators run at "disabled"; "basic" computes the same
# values (it neither fuses nor changes layouts: tests compare the two exactly there), "all" runs the convolutions in
# its blocked layout, 15-20% faster on ResNet-50 with the reductions in place (measured, batch 8), with values that
# differ in the last float bits.
STATISTICS_OPTIMIZATION = "all"
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)
# Ops whose output's extremes follow from their input's exactly (derived_tensors).
_DERIVED_OPS = frozenset({"Relu", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity"})
_STAT = "resnet_edge_stat"  # the prefix of the nodes and outputs pass 1 adds


@dataclass
class Extremes:
    """The running minimum and maximum of every calibrated tensor (and of its magnitude, where asked)."""

    lowest: dict[str, np.ndarray]
    highest: dict[str, np.ndarray]
    lowest_magnitude: dict[str, np.ndarray]

    def magnitude(self, name: str) -> np.ndarray:
        """The largest ``|x|`` seen, in the tensor's dtype."""
        return np.maximum(np.abs(self.lowest[name]), np.abs(self.highest[name]))

    def derive(self, name: str, source: str, *, relu: bool) -> None:
        """``name``'s extremes from ``source``'s: the same values (a reshape), or ``max(x, 0)`` of them (a Relu)."""
        low, high = self.lowest[source], self.highest[source]
        if relu:
            zero = np.zeros_like(low)
            self.lowest[name], self.highest[name] = np.maximum(low, zero), np.maximum(high, zero)
        else:
            self.lowest[name], self.highest[name] = low, high
        if source in self.lowest_magnitude:  # min |max(x, 0)| is 0 once some x <= 0, else min |x|
            magnitude = self.lowest_magnitude[source]
            self.lowest_magnitude[name] = np.where(low <= 0, np.zeros_like(magnitude), magnitude) if relu else magnitude


def calibrated_tensors(model: onnx.ModelProto) -> list[str]:
    """The tensors onnxruntime's calibrators calibrate (``CalibraterBase.select_tensors_to_calibrate`` without an op
    filter): every float or float16 input and output of a node that has a known type and is not an initializer, in
    the order the graph makes them."""
    value_infos = {vi.name: vi for vi in model.graph.value_info}
    value_infos.update({vi.name: vi for vi in model.graph.output})
    value_infos.update({vi.name: vi for vi in model.graph.input})
    initializers = {init.name for init in model.graph.initializer}
    chosen: dict[str, None] = {}
    for name in itertools.chain.from_iterable(itertools.chain(n.input, n.output) for n in model.graph.node):
        info = value_infos.get(name)
        if (
            info is not None
            and name not in initializers
            and info.type.HasField("tensor_type")
            and info.type.tensor_type.elem_type in _FLOAT_TYPES
        ):
            chosen.setdefault(name)
    return list(chosen)


def add_reductions(model: onnx.ModelProto, tensors: Sequence[str], *, magnitude: bool = False) -> list[str]:
    """Make ``model`` (in place) output the minimum and maximum of each of ``tensors`` instead of its own outputs.

    Args:
        model: the model; its outputs are replaced.
        tensors: the tensors to reduce, in the order the graph makes them.
        magnitude: also output the minimum of ``|x|`` (symmetric percentile's histogram starts there).

    Returns:
        The new output names, per tensor: ``min``, ``max`` (and ``min |x|``), tensor after tensor.
    """
    elem_types = _elem_types(model)
    del model.graph.output[:]
    outputs: list[str] = []
    nodes = []
    for i, name in enumerate(tensors):
        reductions = [("ReduceMin", name, "min"), ("ReduceMax", name, "max")]
        if magnitude:
            absolute = f"{_STAT}_{i}_abs"
            nodes.append([helper.make_node("Abs", [name], [absolute], name=absolute)])
            reductions.append(("ReduceMin", absolute, "absmin"))
        else:
            nodes.append([])
        for op, source, what in reductions:
            out = f"{_STAT}_{i}_{what}"
            nodes[-1].append(helper.make_node(op, [source], [out], keepdims=0, name=out))
            outputs.append(out)
            model.graph.output.append(helper.make_tensor_value_info(out, elem_types[name], []))
    # Reverse order: onnxruntime walks back from the last output first, so the first tensor's reductions run first.
    for group in reversed(nodes):
        model.graph.node.extend(group)
    return outputs


def expose_tensors(model: onnx.ModelProto, tensors: Sequence[str]) -> None:
    """Make ``model`` (in place) output ``tensors`` instead of its own outputs (each needs a known type)."""
    value_infos = {vi.name: vi for vi in itertools.chain(model.graph.value_info, model.graph.output)}
    del model.graph.output[:]
    model.graph.output.extend(value_infos[name] for name in tensors)


def derived_tensors(model: onnx.ModelProto, tensors: Sequence[str]) -> dict[str, tuple[str, bool]]:
    """Tensors of ``tensors`` whose extremes follow exactly from another one's, so that they need no reduction of their
    own: ``name -> (source, relu)``, ``source`` reduced itself and ``relu`` whether a Relu (``max(x, 0)``) lies on the
    way. Relu outputs are a third of a ResNet's tensors; ops that only reshape (Flatten, ...) keep every value."""
    wanted = set(tensors)
    derived: dict[str, tuple[str, bool]] = {}
    for node in model.graph.node:
        if node.op_type in _DERIVED_OPS and node.input and node.output[0] in wanted and node.input[0] in wanted:
            source, relu = derived.get(node.input[0], (node.input[0], False))
            derived[node.output[0]] = (source, relu or node.op_type == "Relu")
    return derived


def collect_extremes(
    model_path: Path,
    work: Path,
    feed: Callable[[int], Iterable[np.ndarray]],
    *,
    batch: int,
    magnitude: bool = False,
    optimization: str = STATISTICS_OPTIMIZATION,
) -> Extremes:
    """Pass 1: the minimum and maximum of every calibrated tensor (:func:`calibrated_tensors`) over every image.

    Args:
        model_path: the (pre-processed) FP32 model.
        work: a folder for the augmented copy.
        feed: ``feed(size)`` gives the images as NCHW float batches of at most ``size``.
        batch: images per run (a model with a fixed batch size runs that instead).
        magnitude: also the minimum of ``|x|``.
        optimization: onnxruntime's graph optimisation level for the run.

    Raises:
        ValueError: ``feed`` gave no image.
    """
    model = onnx.load(str(model_path))
    tensors = calibrated_tensors(model)
    derived = derived_tensors(model, tensors)
    reduced = [name for name in tensors if name not in derived]
    outputs = add_reductions(model, reduced, magnitude=magnitude)
    onnx.save(model, str(work / "statistics.onnx"))
    del model
    session = _open(work / "statistics.onnx", optimization)
    per_tensor = 3 if magnitude else 2
    merged: list[np.ndarray] | None = None
    for images in feed(session.fixed_batch or batch):
        padded, _ = _pad(images, session.fixed_batch)  # repeated images change no minimum or maximum
        values = session.session.run(outputs, {session.input_name: padded})
        if merged is None:
            merged = [np.asarray(v) for v in values]
        else:  # fmin/fmax skip NaN, as onnxruntime's nanmin/nanmax over batches do
            merged = [
                np.fmax(old, new) if k % per_tensor == 1 else np.fmin(old, new)
                for k, (old, new) in enumerate(zip(merged, values, strict=True))
            ]
    if merged is None:
        raise ValueError("no calibration image")
    extremes = Extremes(
        lowest={name: merged[per_tensor * i] for i, name in enumerate(reduced)},
        highest={name: merged[per_tensor * i + 1] for i, name in enumerate(reduced)},
        lowest_magnitude={name: merged[per_tensor * i + 2] for i, name in enumerate(reduced)} if magnitude else {},
    )
    for name, (source, relu) in derived.items():
        extremes.derive(name, source, relu=relu)
    return extremes


def minmax_ranges(extremes: Extremes, *, symmetric: bool) -> TensorsData:
    """onnxruntime's MinMax ranges from the extremes: ``(min, max)``, or ``(-m, m)`` with ``m`` the largest ``|x|``.

    Each bound is a one-element array, as onnxruntime's ``MinMaxCalibrater.compute_data`` leaves it.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    ranges = {}
    for name in extremes.lowest:
        if symmetric:
            bound = extremes.magnitude(name).reshape(1)
            ranges[name] = (-bound, bound)
        else:
            ranges[name] = (extremes.lowest[name].reshape(1), extremes.highest[name].reshape(1))
    return TensorsData(CalibrationMethod.MinMax, ranges)


@dataclass
class Histogram:
    """One tensor's histogram over fixed bins, as onnxruntime's ``HistogramCollector`` keeps it."""

    counts: np.ndarray  # int64
    edges: np.ndarray  # the tensor's dtype
    first: np.ndarray  # the range the bins cover: 0-d, the tensor's dtype (np.histogram computes edges in it)
    last: np.ndarray
    absolute: bool  # a histogram of |x| (symmetric percentile) rather than of x

    def add(self, values: np.ndarray) -> None:
        flat = values.ravel()
        counts, _ = np.histogram(np.abs(flat) if self.absolute else flat, len(self.counts), (self.first, self.last))
        self.counts += counts


def histogram_bins(extremes: Extremes, name: str, bins: int, *, absolute: bool) -> Histogram:
    """Empty bins for ``name``: those onnxruntime's collector picks when it sees every value at once.

    ``collect_value`` (entropy; percentile, asymmetric) bins ``x`` over ``[-T, T]``, ``T`` the largest ``|x|``;
    ``collect_absolute_value`` (symmetric percentile) bins ``|x|`` over ``[min |x|, max |x|]``.
    """
    if absolute:
        first, last = extremes.lowest_magnitude[name], extremes.magnitude(name)
    else:
        last = extremes.magnitude(name)
        first = -last
    dtype = extremes.highest[name].dtype
    # The edges np.histogram would compute for these data: the same range, in the data's dtype.
    _, edges = np.histogram(np.zeros(0, dtype), bins, (first, last))
    return Histogram(np.zeros(bins, np.int64), edges.astype(dtype), first, last, absolute)


def collect_histograms(
    model_path: Path,
    work: Path,
    feed: Callable[[int], Iterable[np.ndarray]],
    histograms: dict[str, Histogram],
    *,
    optimization: str = STATISTICS_OPTIMIZATION,
) -> None:
    """Pass 2: add every value of each tensor in ``histograms`` over every image to its histogram.

    Args:
        model_path: the (pre-processed) FP32 model.
        work: a folder for the augmented copy.
        feed: ``feed(size)`` gives the images as NCHW float batches of at most ``size`` (``HISTOGRAM_BATCH``, or
            the model's fixed batch size).
        histograms: the tensors' histograms (:func:`histogram_bins`), added to in place.
        optimization: onnxruntime's graph optimisation level for the run.
    """
    model = onnx.load(str(model_path))
    graph_inputs = {i.name for i in model.graph.input}
    # A graph input is binned from the batch itself; onnxruntime need not return it.
    exposed = [name for name in histograms if name not in graph_inputs]
    fed = [name for name in histograms if name in graph_inputs]
    expose_tensors(model, exposed)
    onnx.save(model, str(work / "tensors.onnx"))
    del model
    session = _open(work / "tensors.onnx", optimization)
    for images in feed(session.fixed_batch or HISTOGRAM_BATCH):
        padded, real = _pad(images, session.fixed_batch)
        values = session.session.run(exposed, {session.input_name: padded})
        for name, value in itertools.chain(((n, images) for n in fed), zip(exposed, values, strict=True)):
            # Padding repeated the last image: drop it where the batch is the first dimension.
            histograms[name].add(value[:real] if value.ndim and value.shape[0] == len(padded) else value)
        del values


def histogram_ranges(
    extremes: Extremes, histograms: dict[str, Histogram], method: Method, *, symmetric: bool
) -> TensorsData:
    """onnxruntime's entropy or percentile thresholds from the merged histograms, as its ``compute_data`` gives them
    (``(low, high, counts, edges)`` per tensor)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, HistogramCollector, TensorsData

    if method is Method.ENTROPY:
        data = {}
        for name, h in histograms.items():
            low, high = entropy_threshold(
                h.counts, h.edges, extremes.lowest[name], extremes.highest[name], ENTROPY_QUANTIZED_BINS
            )
            data[name] = (low, high, h.counts, h.edges)
        return TensorsData(CalibrationMethod.Entropy, data)
    collector = HistogramCollector(
        method="percentile",
        symmetric=symmetric,
        num_bins=PERCENTILE_BINS,
        num_quantized_bins=ENTROPY_QUANTIZED_BINS,
        percentile=PERCENTILE,
        scenario="same",
    )
    for name, h in histograms.items():
        low, high = extremes.lowest[name], extremes.highest[name]
        threshold = extremes.magnitude(name)
        collector.histogram_dict[name] = (
            (h.counts, h.edges, low, high) if h.absolute else (h.counts, h.edges, low, high, threshold)
        )
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
        return TensorsData(CalibrationMethod.Percentile, collector.compute_percentile())


def entropy_threshold(
    counts: np.ndarray, edges: np.ndarray, lowest: np.ndarray, highest: np.ndarray, quantized_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """The KL-divergence threshold of onnxruntime's ``HistogramCollector.get_entropy_threshold``, computed the same way
    (its own ``smooth_distribution`` and ``entropy``, the same integer arithmetic) with its Python loops over bins
    vectorised: about 7x faster on 2048 bins, and equal (checked by the tests against onnxruntime's)."""
    from onnxruntime.quantization.calibrate import entropy
    from onnxruntime.quantization.quant_utils import smooth_distribution

    bins = counts.size
    zero = bins // 2
    half = quantized_bins // 2
    below = np.concatenate(([0], np.cumsum(counts)))  # below[k]: the count of bins 0..k-1
    total = below[-1]
    divergence = np.zeros(zero - half + 1, edges.dtype)
    for k, i in enumerate(range(half, zero + 1)):
        start, end = zero - i, min(zero + i + 1, bins)
        sliced = counts[start:end]
        p = sliced.copy()
        p[0] += below[start]  # the outliers fold into the end bins
        p[-1] += total - below[end]
        merged = sliced.size // quantized_bins
        body = quantized_bins * merged
        quantized = sliced[:body].reshape(quantized_bins, merged).sum(axis=1)
        quantized[-1] += sliced[body:].sum()
        nonzero = (p[:body] != 0).reshape(quantized_bins, merged).sum(axis=1)
        q = np.zeros(p.size, np.int64)  # onnxruntime's q is int64: its division truncates
        q[:body] = np.repeat(np.where(nonzero > 0, quantized // np.maximum(nonzero, 1), 0), merged)
        p_smooth, q_smooth = smooth_distribution(p), smooth_distribution(q)
        divergence[k] = np.inf if p_smooth is None or q_smooth is None else entropy(p_smooth, q_smooth)
    i = int(np.argmin(divergence)) + half
    low, high = edges[zero - i], edges[min(zero + i + 1, bins)]
    return (lowest if low < lowest else low), (highest if high > highest else high)


def _pad(batch: np.ndarray, fixed: int | None) -> tuple[np.ndarray, int]:
    """``batch`` filled up to a fixed batch size with copies of its last image, and its real size."""
    real = len(batch)
    if fixed is None or real == fixed:
        return batch, real
    return np.concatenate([batch, np.repeat(batch[-1:], fixed - real, axis=0)]), real


def _open(path: Path, optimization: str) -> Session:
    """A session of the augmented model saved at ``path``: opened from the file once the caller has dropped its own
    copy, so that only onnxruntime's copy of the weights stays."""
    return open_session(path, classifier=False, audit=False, optimization=optimization)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    return {
        vi.name: vi.type.tensor_type.elem_type
        for vi in itertools.chain(model.graph.value_info, model.graph.output, model.graph.input)
    }
