"""Static INT8 quantization with onnxruntime, configured per target by measurement.

Defaults by measurement (ResNet-50, batch 1, 2 threads, this project's CPU: Xeon with AVX-512 VNNI and AMX,
onnxruntime 1.32; ``benchmarks/int8_configs.py`` reproduces it): onnxruntime's own defaults (QDQ, signed int8
activations) ran no faster than FP32, per-channel even slower, while unsigned activations with signed per-channel
weights ran about 3x faster. So ``x86-vnni`` uses U8S8 per-channel QDQ. Without VNNI, onnxruntime's guidance adds
``reduce_range`` (7-bit weights) against the saturation of the U8S8 AVX2 instruction. ``arm64`` is chosen by integer
coverage on onnxruntime's aarch64 kernels (emulated timings mean nothing): signed int8 with asymmetric activations
is the form whose Relus fuse too (see :mod:`resnet_edge.quantization.coverage`). TensorRT follows NVIDIA's guidance
(symmetric signed int8), not measured here.

Calibration streams: images are fed to onnxruntime's calibrator in chunks and the collected ranges or histograms are
merged chunk by chunk, so memory does not grow with the number of images (onnxruntime's ``quantize_static`` keeps
every intermediate output of every image for the histogram methods). The ranges then reach ``quantize_static``
through its calibration cache.
"""

from __future__ import annotations

import contextlib
import enum
import io
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from resnet_edge import __version__
from resnet_edge.artifacts import (
    atomic_output,
    load_onnx,
    refuse_overwriting_inputs,
    require_writable_destination,
    sha256_file,
)
from resnet_edge.calibration.preprocess import PreprocessSpec
from resnet_edge.calibration.reader import ImageCalibrationReader
from resnet_edge.calibration.sources import (
    ImageSource,
    default_calibration_data,
    default_evaluation_data,
    iter_batches,
    open_source,
)
from resnet_edge.environment import cpu_info
from resnet_edge.errors import CheckFailedError, InputFileError, OptionError, ResnetEdgeWarning
from resnet_edge.onnx.graph import COMPUTE_OPS, graph_input, is_quantized, module_path, opset_of
from resnet_edge.onnx.metadata import (
    QUANTIZATION_KEY,
    preprocessing_for,
    read_metadata,
    read_props,
    static_input_shape,
    write_props,
)
from resnet_edge.onnx.parity import Accuracy, Parity, accuracy, compare, int8_shortfalls
from resnet_edge.onnx.runtime import Provider, open_session
from resnet_edge.quantization.coverage import IntegerCoverage, integer_coverage

SMALL_CALIBRATION_SET = 100  # below this many images, ranges are estimated from too few samples: warn
BUNDLED_PHOTOS_NOTE = (
    "the bundled sample photos: enough to run, too few and too generic to tune ranges; pass --calib with"
    f" {SMALL_CALIBRATION_SET}+ images like your own"
)
CALIBRATION_CHUNK = 16  # images per calibrator pass; bounds memory (ResNet-50 keeps ~45 MB of activations/image)
CALIBRATION_BATCH = 8
HELD_OUT_EVERY = 4  # with one source for both, every 4th image is held out for evaluation, never calibrated on
SPEED_ITERATIONS = 30
# Below opset 13, onnxruntime's quantizer wrote models it could not load itself (measured with opsets 7 to 12:
# INVALID_GRAPH at a DequantizeLinear), after the whole calibration had run; refused up front instead.
MIN_OPSET = 13


class Target(enum.StrEnum):
    AUTO = "auto"
    X86_VNNI = "x86-vnni"
    X86_AVX2 = "x86-avx2"
    ARM64 = "arm64"
    GPU_TENSORRT = "gpu-tensorrt"


class Method(enum.StrEnum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"

    @property
    def onnxruntime(self) -> object:
        """onnxruntime's ``CalibrationMethod`` for this method."""
        from onnxruntime.quantization import CalibrationMethod

        return {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[self.value]


class Format(enum.StrEnum):
    QDQ = "qdq"
    QOPERATOR = "qoperator"


@dataclass(frozen=True)
class QuantConfig:
    """A resolved quantization configuration and why it was chosen."""

    target: Target
    format: Format
    activation_type: str  # "uint8" or "int8"
    weight_type: str
    per_channel: bool
    reduce_range: bool
    symmetric_activations: bool
    reason: str


_TARGETS: dict[Target, QuantConfig] = {
    Target.X86_VNNI: QuantConfig(
        Target.X86_VNNI,
        Format.QDQ,
        "uint8",
        "int8",
        per_channel=True,
        reduce_range=False,
        symmetric_activations=False,
        reason="U8S8 per-channel QDQ: ~3x faster than FP32 on AVX-512 VNNI; signed activations were no faster",
    ),
    Target.X86_AVX2: QuantConfig(
        Target.X86_AVX2,
        Format.QDQ,
        "uint8",
        "int8",
        per_channel=True,
        reduce_range=True,
        symmetric_activations=False,
        reason="U8S8 with 7-bit weights (reduce_range): avoids the 16-bit saturation of AVX2's u8s8 multiply-add",
    ),
    Target.ARM64: QuantConfig(
        Target.ARM64,
        Format.QDQ,
        "int8",
        "int8",
        per_channel=True,
        reduce_range=False,
        # Asymmetric: a Relu's output range then starts at the zero point (-128), so onnxruntime drops the Relu into
        # the preceding QLinearConv. With symmetric activations (zero point 0) 19 of resnet20's Relus stayed as
        # DequantizeLinear -> Relu -> QuantizeLinear on aarch64 (onnxruntime 1.32 under QEMU: cortex-a72,
        # neoverse-n1 and max alike); asymmetric ran all 22 Conv/Gemm as integer kernels with one Q/DQ pair.
        symmetric_activations=False,
        reason="S8S8 per-channel QDQ with asymmetric activations: every Conv/Gemm and Relu fused into integer kernels"
        " on aarch64 (checked under emulation; not timed on ARM hardware)",
    ),
    Target.GPU_TENSORRT: QuantConfig(
        Target.GPU_TENSORRT,
        Format.QDQ,
        "int8",
        "int8",
        per_channel=True,
        reduce_range=False,
        symmetric_activations=True,
        reason="symmetric int8 QDQ with per-channel weights, the form TensorRT builds INT8 engines from",
    ),
}


def detect_target() -> Target:
    """The CPU target of this machine: x86 with or without VNNI, or 64-bit ARM."""
    cpu = cpu_info()
    if cpu.architecture in ("aarch64", "arm64"):
        return Target.ARM64
    return Target.X86_VNNI if cpu.has_vnni else Target.X86_AVX2


def resolve_config(target: Target, *, per_channel: bool | None = None, format: Format | None = None) -> QuantConfig:
    """The configuration for ``target`` (``auto``: this machine's), with explicit choices overriding it."""
    base = _TARGETS[detect_target() if target is Target.AUTO else target]
    changes: dict[str, object] = {}
    if per_channel is not None and per_channel != base.per_channel:
        changes["per_channel"] = per_channel
    if format is not None and format != base.format:
        changes["format"] = format
    if not changes:
        return base
    overridden = ", ".join(f"{k}={getattr(v, 'value', v)}" for k, v in changes.items())
    return QuantConfig(**(asdict(base) | changes | {"reason": f"{base.reason}; overridden: {overridden}"}))


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantize.

    Attributes:
        calib: calibration images (folder, .npy/.npz, builtin:NAME); default: the model's built-in calibration
            split, else the bundled photos.
        eval_data: held-out images to judge INT8 against FP32; default: the model's built-in test split, else the
            calibration source's held-out quarter. Images also used for calibration are always dropped (by hash).
        method: minmax, entropy or percentile calibration.
        per_channel, format: override the target's choice when set.
        target: auto (this machine), x86-vnni, x86-avx2, arm64 or gpu-tensorrt.
        exclude: node names or module paths (``layer1.0``, ``fc``) to keep in FP32.
        limit: calibrate on this many images, drawn with ``seed``.
        measure_speed: time FP32 against INT8 (batch 1, CPU) after quantizing.
        config: a fully explicit configuration, overriding target, per_channel and format (for benchmarks).
        provider: the execution provider the INT8 model is checked on against FP32 (FP32 runs on the CPU);
            ``strict_ep``: fail when it is missing or takes only part of the compute ops.
        require_int8: fail (rather than warn) when a Conv/Gemm that was not excluded runs as an FP32 kernel on that
            provider (integer coverage below 100%); ``strict_ep`` implies it.
        allow_accuracy_drop: write the INT8 model even when, on the held-out images, it misses validate's INT8
            bar (top-1 agreement with FP32, labelled top-1 drop); otherwise that fails, and nothing is written.
    """

    calib: str | None = None
    eval_data: str | None = None
    method: Method = Method.MINMAX
    per_channel: bool | None = None
    format: Format | None = None
    target: Target = Target.AUTO
    exclude: tuple[str, ...] = ()
    limit: int | None = None
    seed: int = 0
    measure_speed: bool = True
    config: QuantConfig | None = None
    provider: Provider = Provider.CPU
    strict_ep: bool = False
    require_int8: bool = False
    allow_accuracy_drop: bool = False


@dataclass(frozen=True)
class SpeedComparison:
    fp32_p50_ms: float
    int8_p50_ms: float
    iterations: int
    threads: int

    @property
    def speedup(self) -> float:
        return self.fp32_p50_ms / self.int8_p50_ms


@dataclass(frozen=True)
class QuantizeResult:
    output: Path
    sidecar: Path
    config: QuantConfig
    method: str
    calibration_source: str
    calibration_images: int
    skipped_files: int
    evaluation_source: str
    evaluation_images: int
    overlap_excluded: int
    parity: Parity  # INT8 against FP32 on the held-out images
    fp32_accuracy: Accuracy | None
    int8_accuracy: Accuracy | None
    quantized_nodes: int
    fp32_nodes: list[str]  # compute nodes left in FP32 (excluded ones)
    bytes_before: int
    bytes_after: int
    speed: SpeedComparison | None
    seconds: float
    record: dict = field(repr=False)
    coverage: IntegerCoverage | None = None  # integer kernels on the provider checked; None when not observable

    @property
    def top1_drop_points(self) -> float | None:
        """Labelled top-1 accuracy lost, in percentage points (negative: INT8 did better)."""
        if self.fp32_accuracy is None or self.int8_accuracy is None:
            return None
        return 100.0 * (self.fp32_accuracy.top1 - self.int8_accuracy.top1)


def quantize_onnx(
    model_path: Path | str,
    output: Path | str,
    options: QuantizeOptions = QuantizeOptions(),
    *,
    progress: bool = False,
    calibration: Calibration | None = None,
) -> QuantizeResult:
    """Quantize an FP32 model to INT8 from calibration images, and judge it on held-out images.

    Writes ``output`` and a JSON sidecar ``output + ".json"`` with the calibration record, both atomically.

    Args:
        calibration: ranges already collected by :func:`calibrate_onnx` for this model and these options (only
            ``exclude``, ``per_channel``, ``format`` and ``measure_speed`` may differ); calibrates afresh when None.

    Raises:
        InputFileError: unreadable or already quantized model, unusable data, unwritable output.
        OptionError: bad limit, unknown node to exclude.
        CheckFailedError: a compute node that was not excluded stayed FP32, or the INT8 model misses validate's
            INT8 bar on the held-out images (unless ``options.allow_accuracy_drop``).
    """
    started = time.perf_counter()
    output = require_writable_destination(output)
    sidecar = require_writable_destination(Path(f"{output}.json"))
    refuse_overwriting_inputs(
        [output, sidecar], [model_path, options.calib, options.eval_data], command="quantize output"
    )
    job = _prepare(model_path, options)
    fp32, spec, config = job.fp32, job.spec, job.config
    calib_source, eval_source, eval_indices = job.calib_source, job.eval_source, job.eval_indices

    with tempfile.TemporaryDirectory(prefix="resnet-edge-quantize-") as tmp:
        if calibration is None:
            calibration = _collect_calibration(job, Path(tmp), options, progress=progress)
        elif calibration.fingerprint != job.fingerprint:
            raise ValueError("the calibration was collected for another model or other calibration options")
        prepped = onnx.load(str(calibration.prepped))
        excluded = resolve_exclusions(prepped, options.exclude)
        seen = calibration.images
        int8_path = Path(tmp, "int8.onnx")
        _quantize_static(calibration.prepped, int8_path, calibration.ranges, config, options.method, excluded)
        int8 = onnx.load(str(int8_path))

    fp32_kept = check_coverage(prepped, int8, excluded)
    quantized_nodes = sum(n.op_type in COMPUTE_OPS for n in prepped.graph.node) - len(fp32_kept)
    evaluation = evaluate_against(
        fp32,
        int8,
        eval_source,
        eval_indices,
        spec,
        exclude_hashes=set(seen.values()),
        provider=options.provider,
        strict_ep=options.strict_ep,
    )
    coverage = evaluation.coverage
    check_integer_coverage(coverage, excluded=fp32_kept, strict=options.require_int8 or options.strict_ep)
    misses = int8_shortfalls(evaluation.parity, evaluation.fp32_accuracy, evaluation.int8_accuracy)
    if misses and not options.allow_accuracy_drop:
        raise CheckFailedError(
            f"INT8 model misses validate's bar on {evaluation.images} held-out images of {eval_source.name}:"
            f" {'; '.join(misses)}; nothing was written (pass --allow-accuracy-drop to keep it, or keep blocks in"
            " FP32 with --max-top1-drop / --min-agreement)"
        )
    speed = compare_speed(fp32, int8, evaluation.first_image) if options.measure_speed else None

    record = {
        "target": config.target.value,
        "target_requested": options.target.value,
        "format": config.format.value,
        "activation_type": config.activation_type,
        "weight_type": config.weight_type,
        "per_channel": config.per_channel,
        "reduce_range": config.reduce_range,
        "symmetric_activations": config.symmetric_activations,
        "reason": config.reason,
        "method": options.method.value,
        "calibration": {
            "source": calib_source.name,
            "images": len(seen),
            "limit": options.limit,
            "seed": options.seed,
            "batch": job.batch,
            "files": [{"id": k, "sha256": v} for k, v in seen.items()],
        },
        "evaluation": {
            "source": eval_source.name,
            "images": evaluation.images,
            "overlap_excluded": evaluation.overlap_excluded,
        },
        "excluded_nodes": sorted(excluded),
        "fp32_nodes": fp32_kept,
        "integer_coverage": coverage_record(coverage, options.provider.value),
        "source_model_sha256": job.fingerprint[0],
        "cpu": {"model": cpu_info().model, **cpu_info().features},
        "versions": _versions(),
    }
    write_props(int8, read_props(fp32) | {QUANTIZATION_KEY: json.dumps(record, sort_keys=True)})
    data = int8.SerializeToString()
    onnx.checker.check_model(int8, full_check=True)
    with atomic_output(output) as tmp_model, atomic_output(sidecar) as tmp_sidecar:
        tmp_model.write_bytes(data)
        tmp_sidecar.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    return QuantizeResult(
        output=output,
        sidecar=sidecar,
        config=config,
        method=options.method.value,
        calibration_source=calib_source.name,
        calibration_images=len(seen),
        skipped_files=calib_source.skipped,
        evaluation_source=eval_source.name,
        evaluation_images=evaluation.images,
        overlap_excluded=evaluation.overlap_excluded,
        parity=evaluation.parity,
        fp32_accuracy=evaluation.fp32_accuracy,
        int8_accuracy=evaluation.int8_accuracy,
        quantized_nodes=quantized_nodes,
        fp32_nodes=fp32_kept,
        bytes_before=model_path.stat().st_size,
        bytes_after=len(data),
        speed=speed,
        seconds=time.perf_counter() - started,
        record=record,
        coverage=coverage,
    )


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
    model_path: Path | str, folder: Path | str, options: QuantizeOptions = QuantizeOptions(), *, progress: bool = False
) -> Calibration:
    """Collect activation ranges for ``quantize_onnx(..., calibration=...)``; files go to ``folder``, which the
    caller owns and keeps until the last quantization.

    Raises:
        InputFileError: unreadable or already quantized model, unusable data.
        OptionError: bad limit, unknown node to exclude.
    """
    return _collect_calibration(_prepare(model_path, options), Path(folder), options, progress=progress)


@dataclass(frozen=True)
class _Job:
    """What quantizing and calibrating share: the checked FP32 model, its preprocessing, the configuration, the
    images for each role, and the fingerprint of everything the activation ranges depend on."""

    fp32: onnx.ModelProto
    spec: PreprocessSpec
    config: QuantConfig
    calib_source: ImageSource
    calib_indices: list[int]
    eval_source: ImageSource
    eval_indices: list[int]
    batch: int
    fingerprint: tuple


def _prepare(model_path: Path | str, options: QuantizeOptions) -> _Job:
    model_path = Path(model_path)
    fp32 = load_onnx(model_path)
    if is_quantized(fp32):
        raise InputFileError(f"{model_path} is already quantized; quantize the FP32 (simplified) model")
    if opset_of(fp32) < MIN_OPSET:
        raise InputFileError(
            f"{model_path} is opset {opset_of(fp32)}; INT8 needs opset {MIN_OPSET} or later (onnxruntime writes"
            f" per-channel DequantizeLinear nodes): re-export with --opset {MIN_OPSET} or later"
        )
    config = options.config or resolve_config(options.target, per_channel=options.per_channel, format=options.format)
    calib_source, calib_indices, eval_source, eval_indices = _choose_images(options, read_metadata(fp32).dataset)
    return _Job(
        fp32=fp32,
        spec=preprocessing_for(fp32, source=str(model_path)),
        config=config,
        calib_source=calib_source,
        calib_indices=calib_indices,
        eval_source=eval_source,
        eval_indices=eval_indices,
        batch=static_input_shape(fp32)[0] or CALIBRATION_BATCH,
        fingerprint=_calibration_fingerprint(model_path, options, config),
    )


def _calibration_fingerprint(model_path: Path, options: QuantizeOptions, config: QuantConfig) -> tuple:
    return (
        sha256_file(model_path),
        options.calib,
        options.eval_data,
        options.limit,
        options.seed,
        options.method.value,
        config.symmetric_activations,
    )


def _collect_calibration(job: _Job, folder: Path, options: QuantizeOptions, *, progress: bool) -> Calibration:
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
    with _quiet():
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(job.fp32, str(prepped_path))
    resolve_exclusions(onnx.load(str(prepped_path)), options.exclude)  # a bad --exclude fails before calibrating
    seen = _calibrate(
        prepped_path,
        folder,
        job.calib_source,
        job.spec,
        indices,
        job.config,
        options.method,
        batch=job.batch,
        progress=progress,
    )
    return Calibration(
        fingerprint=job.fingerprint, prepped=prepped_path, ranges=folder / "ranges.json", images=seen, batch=job.batch
    )


def _choose_images(
    options: QuantizeOptions, dataset: str | None
) -> tuple[ImageSource, list[int], ImageSource, list[int]]:
    calib_name = options.calib or default_calibration_data(dataset)
    eval_name = options.eval_data or (default_evaluation_data(dataset) if not options.calib else None)
    calib = open_source(calib_name)
    if eval_name is None or eval_name == calib_name:
        # One source for both: hold out every HELD_OUT_EVERY-th image for evaluation, calibrate on the rest.
        held_out = list(range(HELD_OUT_EVERY - 1, len(calib), HELD_OUT_EVERY))
        if not held_out or len(held_out) == len(calib):
            raise InputFileError(f"{calib.name}: {len(calib)} images are too few to calibrate and also evaluate")
        return calib, calib.indices(limit=options.limit, seed=options.seed, exclude=held_out), calib, held_out
    evaluation = open_source(eval_name)
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


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence onnxruntime.quantization's prints and root-logger warnings (we report what matters ourselves)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _calibrate(
    prepped_path: Path,
    tmp: Path,
    source: ImageSource,
    spec: PreprocessSpec,
    indices: list[int],
    config: QuantConfig,
    method: Method,
    *,
    batch: int,
    progress: bool,
) -> dict[str, str]:
    """Collect activation ranges chunk by chunk into ``tmp/ranges.json``; returns the images used (id -> sha256)."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from tqdm import tqdm

    ort_method = method.onnxruntime
    with _quiet():
        calibrator = create_calibrator(
            prepped_path,
            None,
            augmented_model_path=str(tmp / "augmented.onnx"),
            calibrate_method=ort_method,
            extra_options={"symmetric": config.symmetric_activations},
        )
    seen: dict[str, str] = {}
    chunk = max(batch, CALIBRATION_CHUNK - CALIBRATION_CHUNK % batch)
    with tqdm(
        total=len(indices), desc=f"calibrating ({method.value})", unit="img", disable=not progress, leave=False
    ) as bar:
        for start in range(0, len(indices), chunk):
            for part in _uniform_batches(indices[start : start + chunk], batch):
                reader = ImageCalibrationReader(
                    source,
                    spec,
                    part,
                    input_name=graph_input(calibrator.model).name,
                    batch_size=batch,
                    on_batch=bar.update,
                )
                with _quiet():
                    calibrator.collect_data(reader)
                seen.update(reader.seen)
    with _quiet():
        save_tensors_data(calibrator.compute_data(), tmp / "ranges.json")
    return seen


def _uniform_batches(indices: list[int], batch: int) -> list[list[int]]:
    """``indices`` split so that each part feeds batches of one size: the full batches, then the short rest.

    onnxruntime's histogram calibrators (entropy, percentile) stack every batch of one ``collect_data`` call into
    one array, which fails when the last batch is shorter; the ranges still merge across calls.
    """
    full = len(indices) - len(indices) % batch
    return [part for part in (indices[:full], indices[full:]) if part]


def _quantize_static(
    prepped: Path, output: Path, ranges: Path, config: QuantConfig, method: Method, excluded: list[str]
) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    with _quiet():
        quantize_static(
            model_input=str(prepped),
            model_output=str(output),
            calibration_data_reader=None,  # ranges come from the cache our streaming calibration wrote
            calibration_cache_path=str(ranges),
            quant_format=QuantFormat.QDQ if config.format is Format.QDQ else QuantFormat.QOperator,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            activation_type=types[config.activation_type],
            weight_type=types[config.weight_type],
            nodes_to_exclude=excluded,
            calibrate_method=method.onnxruntime,
            extra_options={"ActivationSymmetric": config.symmetric_activations, "WeightSymmetric": True},
        )


def check_coverage(prepped: onnx.ModelProto, int8: onnx.ModelProto, excluded: Sequence[str]) -> list[str]:
    """Compute nodes (Conv, Gemm, MatMul) still in FP32 after quantization; all of them must be excluded ones.

    Raises:
        CheckFailedError: a compute node that was not excluded stayed FP32.
    """
    producers = {out: node.op_type for node in int8.graph.node for out in node.output}
    int8_nodes = {node.name: node for node in int8.graph.node}
    fp32 = []
    for node in prepped.graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        after = int8_nodes.get(node.name)
        # Quantized, a node is gone (QOperator: QLinearConv/QGemm) or takes its weight through a DequantizeLinear.
        if after is not None and after.op_type == node.op_type and producers.get(after.input[1]) != "DequantizeLinear":
            fp32.append(node.name)
    unexpected = [n for n in fp32 if n not in set(excluded)]
    if unexpected:
        raise CheckFailedError(f"{len(unexpected)} compute node(s) were not quantized: {', '.join(unexpected[:3])}")
    return fp32


@dataclass(frozen=True)
class Evaluation:
    images: int
    overlap_excluded: int
    parity: Parity
    fp32_accuracy: Accuracy | None
    int8_accuracy: Accuracy | None
    first_image: np.ndarray = field(repr=False, metadata={"json": False})
    coverage: IntegerCoverage | None = None


def evaluate_against(
    fp32: onnx.ModelProto,
    int8: onnx.ModelProto,
    source: ImageSource,
    indices: Sequence[int],
    spec: PreprocessSpec,
    *,
    exclude_hashes: set[str],
    provider: Provider = Provider.CPU,
    strict_ep: bool = False,
) -> Evaluation:
    """INT8 (on ``provider``) against FP32 (CPU) on held-out images, dropping any image whose hash was calibrated on.

    Raises:
        InputFileError: no held-out image is left.
        ProviderError: ``strict_ep`` and the provider is missing or took only part of the compute ops.
    """
    fp32_session = open_session(fp32, audit=False)  # the reference: where it runs is not in question
    int8_session = open_session(int8, provider, strict=strict_ep)
    batch = static_input_shape(fp32)[0] or CALIBRATION_BATCH
    ref, cand, labels = [], [], []
    dropped = 0
    first_image = np.empty(0)
    for _, samples in iter_batches(source, spec, list(indices), batch):
        kept = [s for s in samples if s.sha256 not in exclude_hashes]
        dropped += len(samples) - len(kept)
        if not kept:
            continue
        x = np.stack([s.tensor for s in kept])
        first_image = first_image if ref else x[0]
        ref.append(fp32_session.logits(x))
        cand.append(int8_session.logits(x))
        labels.extend(s.label for s in kept)
    if not ref:
        raise InputFileError(f"{source.name}: no held-out image left that was not used for calibration")
    ref_logits, cand_logits = np.concatenate(ref), np.concatenate(cand)
    labelled = all(label is not None for label in labels)
    y = np.asarray(labels, dtype=np.int64) if labelled else None
    return Evaluation(
        images=len(ref_logits),
        overlap_excluded=dropped,
        parity=compare(ref_logits, cand_logits),
        fp32_accuracy=accuracy(ref_logits, y) if y is not None else None,
        int8_accuracy=accuracy(cand_logits, y) if y is not None else None,
        first_image=first_image,
        coverage=integer_coverage(int8, int8_session.executed) if int8_session.executed else None,
    )


def check_integer_coverage(coverage: IntegerCoverage | None, *, excluded: Sequence[str], strict: bool) -> None:
    """Warn, or with ``strict`` fail, when a Conv/Gemm the user did not exclude ran as an FP32 kernel.

    Raises:
        CheckFailedError: ``strict`` and integer coverage is below 100% of the Conv/Gemm MACs.
    """
    if coverage is None:
        return
    unexpected = [name for name in coverage.float_compute if name not in set(excluded)]
    if not unexpected:
        return
    message = (
        f"{coverage.describe()}: {len(unexpected)} Conv/Gemm ran as FP32 kernels between DequantizeLinear and"
        f" QuantizeLinear on this platform ({', '.join(unexpected[:4])}{', ...' if len(unexpected) > 4 else ''});"
        " a quantization form its kernels fuse (see --target) runs them in integer"
    )
    if strict:
        raise CheckFailedError(message)
    warnings.warn(message, ResnetEdgeWarning, stacklevel=3)


def coverage_record(coverage: IntegerCoverage | None, provider: str) -> dict | None:
    """The integer coverage as the calibration record keeps it."""
    if coverage is None:
        return None
    return {
        "provider": provider,
        "integer_macs": coverage.integer_macs,
        "float_macs": coverage.float_macs,
        "fraction": coverage.fraction,
        "quantize_nodes": coverage.quantize_nodes,
        "dequantize_nodes": coverage.dequantize_nodes,
        "float_compute": coverage.float_compute,
    }


def compare_speed(fp32: onnx.ModelProto, int8: onnx.ModelProto, image: np.ndarray) -> SpeedComparison:
    """Median latency of FP32 and INT8 on one real image (CPU), timed side by side."""
    from resnet_edge.quantization.evaluate import median_latencies_ms

    (fp32_ms, int8_ms), threads = median_latencies_ms([fp32, int8], image, iterations=SPEED_ITERATIONS)
    return SpeedComparison(fp32_p50_ms=fp32_ms, int8_p50_ms=int8_ms, iterations=SPEED_ITERATIONS, threads=threads)


def _versions() -> dict[str, str]:
    import onnxruntime

    return {"resnet-edge": __version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}
