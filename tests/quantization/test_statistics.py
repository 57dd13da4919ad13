"""Calibration statistics reduced on the fly: the same ranges as onnxruntime's calibrators, without their memory."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from resnet_edge.calibration.prefetch import prefetched
from resnet_edge.onnx.runtime import open_session
from resnet_edge.quantization import statistics
from resnet_edge.quantization.calibrate import _untyped_tensors, pre_process
from resnet_edge.quantization.configs import Method

IMAGES = 12
SIZE = 8
# Where the session's kernels differ from onnxruntime's calibrator in the last float bits (level "all"): the share of
# values that may land in a neighbouring bin, and how far a threshold may move for it, in bins.
HISTOGRAM_MOVED = 1e-3
THRESHOLD_BINS = 2


def small_cnn(path: Path, *, batch: int | str = "batch") -> Path:
    """Conv -> Relu -> Conv -> residual Add -> Relu -> GlobalAveragePool -> Flatten -> Gemm: a ResNet block in small,
    with every tensor typed (ONNX shape inference) and a tensor (the first Relu's) that two nodes read."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.normal(0, 0.5, (4, 3, 3, 3)),
        "b1": rng.normal(0, 0.1, 4),
        "w2": rng.normal(0, 0.5, (4, 4, 3, 3)),
        "b2": rng.normal(0, 0.1, 4),
        "fc_w": rng.normal(0, 0.5, (5, 4)),
        "fc_b": rng.normal(0, 0.1, 5),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_cnn(tmp_path_factory.mktemp("stats") / "small.onnx")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    # Heavy-tailed values, so that percentile and entropy thresholds fall inside the range, not at its ends.
    return np.random.default_rng(1).standard_t(3, (IMAGES, 3, SIZE, SIZE)).astype(np.float32)


def feed_of(images: np.ndarray):
    def feed(size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(images), size):
            yield images[start : start + size]

    return feed


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over the same images, one at a time."""

    def __init__(self, images: np.ndarray) -> None:
        self.batches = iter(images[i : i + 1] for i in range(len(images)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {"input": batch}


def onnxruntime_ranges(model: Path, images: np.ndarray, method: Method, tmp: Path, **extra: object) -> tuple:
    """The reference: onnxruntime's own calibrator, every image in one ``collect_data`` (as ``quantize_static``)."""
    from onnxruntime.quantization.calibrate import create_calibrator

    with contextlib.redirect_stdout(io.StringIO()):
        calibrator = create_calibrator(
            model, None, augmented_model_path=str(tmp / "ort.onnx"), calibrate_method=method.onnxruntime,
            extra_options=extra,
        )  # fmt: skip
        calibrator.collect_data(_Reader(images))
        return calibrator.compute_data(), getattr(calibrator, "collector", None)


def ours(
    model: Path,
    images: np.ndarray,
    method: Method,
    tmp: Path,
    *,
    symmetric: bool,
    bins: int = 0,
    optimization: str = statistics.STATISTICS_OPTIMIZATION,
):
    absolute = method is Method.PERCENTILE and symmetric
    feed = feed_of(images)
    extremes = statistics.collect_extremes(model, tmp, feed, batch=1, magnitude=absolute, optimization=optimization)
    if method is Method.MINMAX:
        return statistics.minmax_ranges(extremes, symmetric=symmetric), {}
    histograms = {n: statistics.histogram_bins(extremes, n, bins, absolute=absolute) for n in extremes.lowest}
    statistics.collect_histograms(model, tmp, feed, histograms, optimization=optimization)
    return statistics.histogram_ranges(extremes, histograms, method, symmetric=symmetric), histograms


@pytest.mark.parametrize("symmetric", [False, True])
def test_minmax_ranges_equal_onnxruntimes(model: Path, images: np.ndarray, tmp_path: Path, symmetric: bool) -> None:
    reference, _ = onnxruntime_ranges(model, images, Method.MINMAX, tmp_path, symmetric=symmetric)
    ranges, _ = ours(model, images, Method.MINMAX, tmp_path, symmetric=symmetric)
    assert set(ranges.keys()) == set(reference.keys()) and len(ranges.keys()) == 9  # input, 7 inner, logits
    for name in reference:
        for mine, theirs in zip(ranges[name].range_value, reference[name].range_value, strict=True):
            assert mine.shape == theirs.shape == (1,) and mine.dtype == theirs.dtype == np.float32
            np.testing.assert_allclose(mine, theirs, rtol=1e-6, err_msg=name)
    assert not np.allclose(*ranges["c1"].range_value)  # a real range, not a degenerate one
    # The Relu outputs and the Flatten were not reduced in the graph but derived from their inputs, exactly.
    tensors = statistics.calibrated_tensors(onnx.load(str(model)))
    derived = statistics.derived_tensors(onnx.load(str(model)), tensors)
    assert derived == {"r1": ("c1", True), "r2": ("s", True), "f": ("p", False)}


@pytest.mark.parametrize("optimization", ["basic", statistics.STATISTICS_OPTIMIZATION])
@pytest.mark.parametrize(
    ("method", "symmetric"), [(Method.ENTROPY, False), (Method.PERCENTILE, False), (Method.PERCENTILE, True)]
)
def test_histogram_methods_equal_onnxruntimes_one_shot_collector(
    model: Path, images: np.ndarray, tmp_path: Path, method: Method, symmetric: bool, optimization: str
) -> None:
    # Fewer entropy bins than ours keep onnxruntime's slow search short; the method is the same at any count.
    bins = 256 if method is Method.ENTROPY else statistics.PERCENTILE_BINS
    extra = {"symmetric": symmetric, "num_bins": bins}
    reference, collector = onnxruntime_ranges(model, images, method, tmp_path, **extra)
    ranges, histograms = ours(
        model, images, method, tmp_path, symmetric=symmetric, bins=bins, optimization=optimization
    )
    assert set(ranges.keys()) == set(reference.keys())
    exact = optimization == "basic"  # the values of onnxruntime's calibrator (level disabled), bit for bit
    inside = 0
    for name in reference:
        counts, edges = collector.histogram_dict[name][:2]
        if exact:
            np.testing.assert_array_equal(histograms[name].counts, counts, err_msg=name)  # same bins, same counts
            np.testing.assert_array_equal(histograms[name].edges, edges, err_msg=name)
        else:  # blocked-layout kernels: a value may round across a bin edge
            assert np.abs(histograms[name].counts - counts).sum() <= HISTOGRAM_MOVED * counts.sum(), name
        for mine, theirs in zip(ranges[name].range_value, reference[name].range_value, strict=True):
            tolerance = 0 if exact else THRESHOLD_BINS * float(edges[1] - edges[0])
            np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=tolerance, err_msg=name)
        _, high = ranges[name].range_value
        inside += bool(high < collector.histogram_dict[name][3])  # clipped below the maximum
    assert inside >= 3  # the thresholds clip: the comparison is not minmax in disguise


def test_entropy_threshold_equals_onnxruntimes_search() -> None:
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(2)
    for values in (rng.standard_t(4, 50_000), np.maximum(rng.normal(0, 1, 50_000), 0) ** 2):
        collector = HistogramCollector("entropy", False, 512, 128, 99.999, "same")
        with contextlib.redirect_stdout(io.StringIO()):
            collector.collect({"t": values.astype(np.float32)})
            expected = collector.get_entropy_threshold(collector.histogram_dict["t"], 128)
        counts, edges, lowest, highest, _ = collector.histogram_dict["t"]
        assert statistics.entropy_threshold(counts, edges, lowest, highest, 128) == expected


@pytest.mark.parametrize("optimization", ["basic", statistics.STATISTICS_OPTIMIZATION])
def test_reductions_run_right_after_their_tensor(model: Path, tmp_path: Path, optimization: str) -> None:
    # The memory claim: onnxruntime runs each tensor's ReduceMin/ReduceMax before the next layer, so no activation
    # outlives its reductions (appended in tensor order instead, they ran after the whole network).
    augmented = onnx.load(str(model))
    tensors = statistics.calibrated_tensors(augmented)
    outputs = statistics.add_reductions(augmented, tensors, magnitude=True)
    assert len(outputs) == 3 * len(tensors)
    onnx.save(augmented, str(tmp_path / "aug.onnx"))
    # Audited: the profile lists the kernels in the order they ran (level "all" renames and adds some of them).
    session = open_session(tmp_path / "aug.onnx", classifier=False, optimization=optimization)
    layers = 0  # the model's own kernels run so far: the small CNN makes its k-th tensor with its k-th kernel
    reduced_after: dict[str, int] = {}
    for node in session.executed:
        if node.name.startswith("resnet_edge_stat"):
            reduced_after[node.name] = layers
        elif not node.op_type.startswith("Reorder"):  # layout copies onnxruntime inserts
            layers += 1
    assert layers == len(tensors) - 1  # the graph input is made by no kernel
    for k, name in enumerate(tensors):
        assert {reduced_after[out] for out in outputs[3 * k : 3 * k + 3]} == {k}, name


def test_fixed_batch_model_pads_without_counting_the_padding(tmp_path: Path, images: np.ndarray) -> None:
    fixed = small_cnn(tmp_path / "b4.onnx", batch=4)
    extremes = statistics.collect_extremes(fixed, tmp_path, feed_of(images[:6]), batch=8)
    histograms = {n: statistics.histogram_bins(extremes, n, 64, absolute=False) for n in extremes.lowest}
    statistics.collect_histograms(fixed, tmp_path, feed_of(images[:6]), histograms)
    assert histograms["input"].counts.sum() == 6 * 3 * SIZE * SIZE
    assert histograms["c1"].counts.sum() == 6 * 4 * SIZE * SIZE and histograms["logits"].counts.sum() == 6 * 5
    np.testing.assert_allclose(extremes.highest["input"], images[:6].max())


def test_pre_process_matches_onnxruntimes_and_needs_no_symbolic_inference_for_a_cnn(
    model: Path, tmp_path: Path
) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre_process(model, tmp_path / "ours.onnx")
    with contextlib.redirect_stdout(io.StringIO()):
        quant_pre_process(str(model), str(tmp_path / "theirs.onnx"))
    mine, theirs = onnx.load(str(tmp_path / "ours.onnx")), onnx.load(str(tmp_path / "theirs.onnx"))
    assert mine.graph.node == theirs.graph.node and mine.graph.initializer == theirs.graph.initializer
    assert statistics.calibrated_tensors(mine) == statistics.calibrated_tensors(theirs)
    assert _untyped_tensors(mine) == []
    bare = onnx.load(str(model))
    del bare.graph.value_info[:]
    assert _untyped_tensors(bare) == ["c1", "r1", "c2", "s", "r2", "p", "f"]


def test_pre_process_runs_symbolic_shape_inference_where_onnx_leaves_a_tensor_untyped(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime.quantization.shape_inference as shape_inference

    from resnet_edge.quantization import calibrate

    calls = []
    real = shape_inference.quant_pre_process

    def spy(*args: object, **kwargs: object) -> None:
        calls.append(kwargs)
        real(*args, **kwargs)

    monkeypatch.setattr(shape_inference, "quant_pre_process", spy)
    monkeypatch.setattr(calibrate, "_untyped_tensors", lambda prepped: ["c1"])
    pre_process(model, tmp_path / "p.onnx")
    assert calls == [{"skip_symbolic_shape": True}, {}] and onnx.load(str(tmp_path / "p.onnx")).graph.node


def test_prefetch_keeps_order_and_raises_where_the_failure_was() -> None:
    assert list(prefetched(range(50), depth=3)) == list(range(50))

    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("image 3 is broken")

    got = []
    with pytest.raises(ValueError, match="image 3 is broken"):
        for item in prefetched(failing()):
            got.append(item)
    assert got == [1, 2]


def test_prefetch_runs_ahead_only_depth_items_and_stops_with_its_consumer() -> None:
    made = []

    def items() -> Iterator[int]:
        for i in range(1000):
            made.append(i)
            yield i

    before = threading.active_count()
    stream = prefetched(items(), depth=2)
    assert next(stream) == 0
    time.sleep(0.3)
    assert len(made) <= 4  # the one taken, two waiting, one blocked on the full queue
    stream.close()
    assert threading.active_count() == before and len(made) <= 5
