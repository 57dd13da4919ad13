"""Calibration: the activation ranges of an FP32 model, collected from images as onnxruntime's calibrators would.

Calibration streams: images are decoded in a background thread while the model runs, and their statistics are
reduced on the fly (:mod:`.statistics`), so memory does not grow with the number of images and holds no activation
beyond the batch that is running. The ranges then reach ``quantize_static`` through its calibration cache. Also
here: what quantizing and calibrating share (the checked model, the images for each role, which nodes ``--exclude``
names) and the silencing of onnxruntime's own output while it runs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from resnet_edge.artifacts import sha256_file
from resnet_edge.calibration.prefetch import prefetched
from resnet_edge.calibration.preprocess import PreprocessSpec
from resnet_edge.calibration.sources import (
    ImageSource,
    default_calibration_data,
    default_evaluation_data,
    iter_batches,
    open_source,
)
from resnet_edge.errors import InputFileError, OptionError, ResnetEdgeWarning
from resnet_edge.onnx.graph import is_quantized, module_path, opset_of
from resnet_edge.onnx.io import load_onnx
from resnet_edge.onnx.metadata import model_classes, preprocessing_for, read_metadata, static_input_shape
from resnet_edge.progress import Progress, ProgressCallback
from resnet_edge.quantization.configs import Int8Recipe, Method
from resnet_edge.quantization.equalize import (
    Equalization,
    absorb_biases,
    absorbable_pairs,
    equalize_model,
    pre_activation_ranges,
)
from resnet_edge.quantization.options import MIN_OPSET

if TYPE_CHECKING:
    from resnet_edge.quantization.options import QuantizeOptions

SMALL_CALIBRATION_SET = 100  # below this many images, ranges are estimated from too few samples: warn
BUNDLED_PHOTOS_NOTE = (
    "the bundled sample photos: enough to run, too few and too generic to tune ranges; pass --calib with"
    f" {SMALL_CALIBRATION_SET}+ images like your own"
)
CALIBRATION_BATCH = 8  # images per run of the statistics pass (ResNet-50: ~400 MB for the session at 8)
HELD_OUT_EVERY = 4  # with one source for both, every 4th image is held out for evaluation, never calibrated on
logger = logging.getLogger("resnet_edge")
# onnxruntime's quantization tools log through these loggers and through the root logger's module functions.
ONNXRUNTIME_LOGGER = "onnxruntime"


@dataclass(frozen=True)
class Calibration:
    """Activation ranges collected once, for several quantizations of one model that differ only in what they keep
    in FP32 (a mixed-precision search): calibration does not depend on the exclusions, so it need not be repeated.

    Attributes:
        fingerprint: the model's SHA-256 and the options that shaped the ranges (data, limit, seed, method,
            activation symmetry); :func:`quantize_onnx` refuses a calibration whose fingerprint differs.
        prepped: onnxruntime's pre-processed copy of the model, whose tensors the ranges name.
        ranges: onnxruntime's calibration cache (JSON).
        images: the calibration images used, id -> SHA-256.
        batch: images per calibration batch.
    """

    fingerprint: tuple
    prepped: Path
    ranges: Path
    images: dict[str, str]
    batch: int


def calibrate_onnx(
    source: Path | str,
    folder: Path | str,
    options: QuantizeOptions,
    *,
    on_progress: ProgressCallback | None = None,
) -> Calibration:
    """Collect activation ranges for ``quantize_onnx(..., calibration=...)``; files go to ``folder``, which the
    caller owns and keeps until the last quantization.

    Args:
        source: the FP32 model.
        folder: where the pre-processed model and the ranges are written.
        options: the quantization options (data, limit, seed, method and target shape the ranges).
        on_progress: called with ``Progress("quantize", "calibrating (METHOD)", done, total)`` as images are read.

    Returns:
        The ranges, with the images they came from.

    Raises:
        InputFileError: unreadable or already quantized model, unusable data.
        OptionError: bad limit, unknown node to exclude.
    """
    return collect_calibration(prepare_job(source, options), Path(folder), options, on_progress=on_progress)


@dataclass(frozen=True)
class Job:
    """What quantizing and calibrating share: the checked FP32 model, its preprocessing, the configuration, the
    images for each role, and the fingerprint of everything the activation ranges depend on.

    Attributes:
        fp32: the FP32 model that is calibrated and quantized: the user's, or its equalized copy.
        reference: the user's FP32 model, which the quantized one is judged against.
        equalization: what cross-layer equalization did (None when it did not run).
    """

    source: Path  # the file ``fp32`` was read from
    fp32: onnx.ModelProto
    spec: PreprocessSpec
    config: Int8Recipe
    calib_source: ImageSource
    calib_indices: list[int]
    eval_source: ImageSource
    eval_indices: list[int]
    batch: int
    fingerprint: tuple
    reference: onnx.ModelProto | None = None
    equalization: Equalization | None = None

    @property
    def source_model(self) -> onnx.ModelProto:
        """The user's FP32 model."""
        return self.reference if self.reference is not None else self.fp32


def prepare_job(model_path: Path | str, options: QuantizeOptions) -> Job:
    """The checked FP32 model, its recipe and its images, for ``options``.

    Raises:
        InputFileError: unreadable, already quantized or too old a model; unusable data.
        OptionError: bad limit.
    """
    model_path = Path(model_path)
    fp32 = load_onnx(model_path)
    if is_quantized(fp32):
        raise InputFileError(f"{model_path} is already quantized; quantize the FP32 (simplified) model")
    if opset_of(fp32) < MIN_OPSET:
        raise InputFileError(
            f"{model_path} is opset {opset_of(fp32)}; INT8 needs opset {MIN_OPSET} or later (onnxruntime writes"
            f" per-channel DequantizeLinear nodes): re-export with --opset {MIN_OPSET} or later"
        )
    _check_weights_and_batch(fp32, model_path)
    config = options.recipe()
    calib_source, calib_indices, eval_source, eval_indices = _choose_images(options, fp32)
    spec = preprocessing_for(fp32, source=str(model_path))
    # Equalization rewrites the FP32 model before anything is calibrated on it (its activation ranges change).
    equalization = None
    if config.equalize:
        started = time.perf_counter()
        equalization = equalize_model(fp32)
        if exact := absorbable_pairs(equalization):
            batch = static_input_shape(fp32)[0] or CALIBRATION_BATCH
            images = (x for x, _ in iter_batches(calib_source, spec, calib_indices, batch))
            equalization = absorb_biases(equalization, pre_activation_ranges(equalization.model, exact, images))
        equalization = replace(equalization, seconds=time.perf_counter() - started)  # the data pass included
    return Job(
        source=model_path,
        fp32=equalization.model if equalization is not None else fp32,
        reference=fp32,
        equalization=equalization,
        spec=spec,
        config=config,
        calib_source=calib_source,
        calib_indices=calib_indices,
        eval_source=eval_source,
        eval_indices=eval_indices,
        batch=static_input_shape(fp32)[0] or CALIBRATION_BATCH,
        fingerprint=_calibration_fingerprint(model_path, options, config),
    )


def _check_weights_and_batch(fp32: onnx.ModelProto, model_path: Path) -> None:
    """Refuse, before calibrating, weights that are not finite (onnxruntime's quantizer fails on them with
    ``AssertionError: scale issue``) and a fixed batch too large for this machine's memory (as benchmark does).

    Raises:
        InputFileError: a NaN or infinite weight, naming the tensor.
        OptionError: the model's fixed batch needs more memory than is available.
    """
    from onnx import numpy_helper

    from resnet_edge.memory import check_fits
    from resnet_edge.onnx.memory import onnx_estimate

    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
    for init in fp32.graph.initializer:
        if init.data_type in floats and not np.isfinite(numpy_helper.to_array(init)).all():
            raise InputFileError(f"{model_path}: weight {init.name} holds NaN or Inf values; no scale can be chosen")
    batch = static_input_shape(fp32)[0] or CALIBRATION_BATCH
    check_fits(
        f"{model_path.name} at its batch {batch}", onnx_estimate(fp32), batch, hint="export it with a smaller --batch"
    )


def _calibration_fingerprint(model_path: Path, options: QuantizeOptions, config: Int8Recipe) -> tuple:
    return (
        sha256_file(model_path),
        options.calib,
        options.eval_data,
        options.limit,
        options.seed,
        options.method.value,
        config.symmetric_activations,
        config.equalize,
    )


def collect_calibration(
    job: Job, folder: Path, options: QuantizeOptions, *, on_progress: ProgressCallback | None = None
) -> Calibration:
    """Pre-process ``job``'s model into ``folder`` and collect its activation ranges there."""
    indices = job.calib_indices
    # The bundled photos are the default only so that an ImageNet model quantizes out of the box; their size is
    # stated where the result is shown (BUNDLED_PHOTOS_NOTE) instead of warning about the tool's own default.
    bundled_default = options.calib is None and job.calib_source.name == "builtin:photos"
    if len(indices) < SMALL_CALIBRATION_SET and not bundled_default:
        warnings.warn(
            f"calibrating on only {len(indices)} images; {SMALL_CALIBRATION_SET} or more give steadier ranges",
            ResnetEdgeWarning,
            stacklevel=3,
        )
    prepped_path = folder / "prepped.onnx"
    model_path = job.source
    if job.equalization is not None:
        # The equalized model exists only in memory; what is calibrated and quantized must be it, not the user's
        # file (pre_process takes a path: a merge that passed the file lost equalization without a trace).
        model_path = folder / "equalized.onnx"
        onnx.save(job.fp32, str(model_path))
    pre_process(model_path, prepped_path, exclude=options.exclude)
    seen = _calibrate(
        prepped_path,
        folder,
        job.calib_source,
        job.spec,
        indices,
        job.config,
        options.method,
        batch=job.batch,
        on_progress=on_progress,
    )
    return Calibration(
        fingerprint=job.fingerprint, prepped=prepped_path, ranges=folder / "ranges.json", images=seen, batch=job.batch
    )


def pre_process(model: Path, output: Path, *, exclude: Sequence[str] = ()) -> None:
    """onnxruntime's ``quant_pre_process`` of the model file ``model`` into ``output``, without its symbolic shape
    inference where ONNX's own shape inference types every tensor (a CNN's always): that step copies the model several
    times in Python (ResNet-50: 817 MB peak for the whole pre-process, 481 MB without it) and adds nothing then. A path,
    not a ModelProto: without symbolic shape inference, ``quant_pre_process`` moves a ModelProto's weights out of it.

    Raises:
        OptionError: a name in ``exclude`` matches no node (checked here, before calibrating).
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with quiet_onnxruntime():
            quant_pre_process(model, str(output), skip_symbolic_shape=True)
        prepped: onnx.ModelProto | None = onnx.load(str(output))
        untyped = _untyped_tensors(prepped)
    except Exception as exc:  # ONNX's shape inference gave up where the symbolic one may not: the full run decides
        prepped, untyped = None, [f"({type(exc).__name__}: {str(exc)[:120]})"]
    if untyped:
        logger.debug("%d tensors untyped without symbolic shape inference (%s): running it", len(untyped), untyped[0])
        prepped = None
        with quiet_onnxruntime():
            quant_pre_process(model, str(output))
        prepped = onnx.load(str(output))
    resolve_exclusions(prepped, exclude)


def _untyped_tensors(model: onnx.ModelProto) -> list[str]:
    """Node outputs whose element type the model does not state (neither a value_info nor a graph output)."""
    typed = {
        vi.name
        for vi in (*model.graph.value_info, *model.graph.output)
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type
    }
    return [name for node in model.graph.node for name in node.output if name and name not in typed]


def _choose_images(
    options: QuantizeOptions, fp32: onnx.ModelProto
) -> tuple[ImageSource, list[int], ImageSource, list[int]]:
    """The calibration images and the held-out images, the latter labelled in the model's classes (issue 21: read
    without them, class folders were numbered alphabetically and quantize printed another model's accuracy)."""
    dataset = read_metadata(fp32).dataset
    classes = model_classes(fp32, label_map=options.label_map)
    calib_name = options.calib or default_calibration_data(dataset)
    eval_name = options.eval_data or (default_evaluation_data(dataset) if not options.calib else None)
    one_source = eval_name is None or eval_name == calib_name
    calib = open_source(calib_name, classes=classes if one_source else None)
    if one_source:
        # One source for both: hold out every HELD_OUT_EVERY-th image for evaluation, calibrate on the rest.
        held_out = list(range(HELD_OUT_EVERY - 1, len(calib), HELD_OUT_EVERY))
        if not held_out or len(held_out) == len(calib):
            raise InputFileError(f"{calib.name}: {len(calib)} images are too few to calibrate and also evaluate")
        return calib, calib.indices(limit=options.limit, seed=options.seed, exclude=held_out), calib, held_out
    evaluation = open_source(eval_name, classes=classes)
    return calib, calib.indices(limit=options.limit, seed=options.seed), evaluation, evaluation.indices()


def resolve_exclusions(model: onnx.ModelProto, requested: Sequence[str]) -> list[str]:
    """Node names for ``requested`` node names or module paths (``layer1.0`` names every node of that block).

    Raises:
        OptionError: a name matches no node.
    """
    names = [n.name for n in model.graph.node]
    chosen: list[str] = []
    for item in requested:
        matches = [n for n in names if n == item or _in_module(n, item)]
        if not matches:
            examples = ", ".join(n for n in names if n)[:160]
            raise OptionError(f"--exclude {item!r} matches no node; give a node name or module path, e.g. {examples}")
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


def _in_module(node_name: str, module: str) -> bool:
    path = module_path(node_name)
    return path is not None and (path == module or path.startswith(module + "."))


class _FromOnnxruntime(logging.Filter):
    """Drops the records that onnxruntime's own source files log (below ERROR) through the root logger."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not record.pathname.startswith(self.folder)


@contextlib.contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """Silence onnxruntime.quantization's prints and warnings while it runs (we report what matters ourselves).

    Only onnxruntime's own output: its ``onnxruntime`` loggers are raised to ERROR, and the records its files log
    through the root logger's module functions (``logging.warning(...)``) are filtered out at the root logger, whose
    level is left alone. Both are restored on the way out.
    """
    import onnxruntime

    ort_logger = logging.getLogger(ONNXRUNTIME_LOGGER)
    level = ort_logger.level
    ort_logger.setLevel(logging.ERROR)
    from_ort = _FromOnnxruntime(str(Path(onnxruntime.__file__).parent))
    root = logging.getLogger()
    root.addFilter(from_ort)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(from_ort)
        ort_logger.setLevel(level)


def _calibrate(
    prepped_path: Path,
    tmp: Path,
    source: ImageSource,
    spec: PreprocessSpec,
    indices: list[int],
    config: Int8Recipe,
    method: Method,
    *,
    batch: int,
    on_progress: ProgressCallback | None = None,
) -> dict[str, str]:
    """Collect activation ranges into ``tmp/ranges.json`` (:mod:`.statistics`: reduced on the fly, equal to
    onnxruntime's calibrators'); returns the images used (id -> sha256)."""
    from onnxruntime.quantization.calibrate import save_tensors_data

    from resnet_edge.quantization import statistics

    seen: dict[str, str] = {}
    symmetric = config.symmetric_activations
    histogram = method is not Method.MINMAX
    step = f"calibrating ({method.value})"

    def feed(name: str) -> Callable[[int], Iterator[np.ndarray]]:
        def batches(size: int) -> Iterator[np.ndarray]:
            done = 0
            for images, samples in prefetched(iter_batches(source, spec, indices, size)):
                for sample in samples:
                    seen.setdefault(sample.id, sample.sha256)
                done += len(samples)
                if on_progress is not None:
                    on_progress(Progress("quantize", name, done, len(indices), unit="img"))
                yield images

        return batches

    absolute = method is Method.PERCENTILE and symmetric  # onnxruntime bins |x| for symmetric percentile
    extremes = statistics.collect_extremes(
        prepped_path, tmp, feed(f"{step}: ranges" if histogram else step), batch=batch, magnitude=absolute
    )
    if histogram:
        bins = statistics.ENTROPY_BINS if method is Method.ENTROPY else statistics.PERCENTILE_BINS
        histograms = {
            name: statistics.histogram_bins(extremes, name, bins, absolute=absolute) for name in extremes.lowest
        }
        statistics.collect_histograms(prepped_path, tmp, feed(f"{step}: histograms"), histograms)
        ranges = statistics.histogram_ranges(extremes, histograms, method, symmetric=symmetric)
    else:
        ranges = statistics.minmax_ranges(extremes, symmetric=symmetric)
    save_tensors_data(ranges, tmp / "ranges.json")
    return seen
