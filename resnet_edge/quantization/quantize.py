"""Static INT8 quantization with onnxruntime: quantize a calibrated FP32 model, check what it reached, judge it.

The options are in :mod:`.options`, the per-target recipes in :mod:`.configs`, the activation
ranges come from :mod:`.calibrate`, and the held-out comparison with FP32 from :mod:`.evaluate`.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from resnet_edge import __version__
from resnet_edge.artifacts import refuse_overwriting_inputs, require_writable_destination
from resnet_edge.environment import CpuInfo, cpu_info
from resnet_edge.errors import CheckFailedError, ResnetEdgeWarning
from resnet_edge.onnx.graph import GraphIndex
from resnet_edge.onnx.graph import output_step as graph_output_step
from resnet_edge.onnx.metadata import read_metadata, read_props, write_props
from resnet_edge.onnx.op_types import COMPUTE_OPS
from resnet_edge.onnx.parity import Accuracy, Parity, int8_shortfalls, logit_error_shortfalls
from resnet_edge.progress import ProgressCallback
from resnet_edge.quantization.calibrate import (
    Calibration,
    Job,
    collect_calibration,
    prepare_job,
    quiet_onnxruntime,
    resolve_exclusions,
)
from resnet_edge.quantization.configs import Format, Int8Recipe, Method
from resnet_edge.quantization.coverage import IntegerCoverage
from resnet_edge.quantization.evaluate import Evaluation, SpeedComparison, compare_speed, evaluate_against
from resnet_edge.quantization.npu import strict_integer_violations
from resnet_edge.quantization.options import QuantizeOptions
from resnet_edge.quantization.record import (
    CalibrationFile,
    CalibrationRecord,
    CoverageRecord,
    EvaluationRecord,
    Judgement,
    QatRecord,
    QuantizationRecord,
    RecoveryRecord,
    RecoveryStep,
    WeightGridRecord,
    write_quantized,
)
from resnet_edge.quantization.recovery import Recovery, recover_accuracy

__all__ = [
    "QuantizeResult",
    "check_coverage",
    "check_integer_coverage",
    "quantize_onnx",
]


@dataclass(frozen=True)
class QuantizeResult:
    """A quantized model, what it was made from and how it was judged; :meth:`record` is its calibration record
    (:class:`~.record.QuantizationRecord`).

    Attributes:
        output, sidecar: the INT8 model and its record beside it.
        config: the recipe that was applied; ``target_requested`` the ``--target`` asked for (``auto``, say).
        calibration_files: the calibration images, id -> SHA-256.
        parity: INT8 against FP32 on the held-out images; ``fp32_accuracy``/``int8_accuracy`` where labelled.
        fp32_nodes: compute nodes left in FP32; ``excluded_nodes`` the nodes the user's ``--exclude`` named.
        coverage: integer kernels on ``provider``; None when not observable.
        judged_by: "top-1 agreement" (validate's bar), or "logit error" for a model whose weights are known to be
            random (its agreement measures noise; ``onnx.parity.logit_error_shortfalls``).
        output_step: the INT8 output's quantization step; None when the output is not quantized.
        recovery: the accuracy-recovery steps, judged before and after; ``weight_grid`` the grid resnet-edge wrote
            (None: onnxruntime's weights were kept), ``recovery_reading_seconds`` the time spent reading layer inputs,
            ``recovery_judged`` how the steps were judged (:class:`.recovery.Recovery`).
        trained: what quantization-aware training did before (``training.qat.QatResult.record``); None without it.
    """

    output: Path
    sidecar: Path
    config: Int8Recipe
    target_requested: str
    method: str
    calibration_source: str
    calibration_files: dict[str, str] = field(repr=False)
    calibration_limit: int | None
    calibration_seed: int
    calibration_batch: int
    skipped_files: int
    evaluation_source: str
    evaluation_images: int
    overlap_excluded: int
    parity: Parity
    fp32_accuracy: Accuracy | None
    int8_accuracy: Accuracy | None
    quantized_nodes: int
    fp32_nodes: list[str]
    excluded_nodes: list[str]
    bytes_before: int
    bytes_after: int
    speed: SpeedComparison | None
    seconds: float
    source_model_sha256: str
    cpu: CpuInfo = field(repr=False)
    versions: dict[str, str] = field(repr=False)
    coverage: IntegerCoverage | None = None
    judged_by: str = "top-1 agreement"
    output_step: float | None = None
    provider: str = "cpu"  # the provider integer coverage was read on (its text form)
    recovery: list[RecoveryStep] = field(default_factory=list)
    weight_grid: WeightGridRecord | None = None
    recovery_reading_seconds: float | None = None
    recovery_judged: str = ""
    trained: QatRecord | None = None

    @property
    def calibration_images(self) -> int:
        """Images calibrated on."""
        return len(self.calibration_files)

    @property
    def max_error_steps(self) -> float | None:
        """The largest logit error in output quantization steps."""
        return self.parity.max_abs_error / self.output_step if self.output_step else None

    @property
    def shortfalls(self) -> list[str]:
        """How the INT8 model misses validate's INT8 bar on the held-out images; empty when it meets it."""
        return int8_shortfalls(self.parity, self.fp32_accuracy, self.int8_accuracy)

    @property
    def top1_drop_points(self) -> float | None:
        """Labelled top-1 accuracy lost, in percentage points (negative: INT8 did better)."""
        if self.fp32_accuracy is None or self.int8_accuracy is None:
            return None
        return 100.0 * (self.fp32_accuracy.top1 - self.int8_accuracy.top1)

    def record(self) -> QuantizationRecord:
        """The calibration record: written beside the model (the sidecar) and into its metadata."""
        config = self.config
        return QuantizationRecord(
            target=config.target.value,
            target_requested=self.target_requested,
            format=config.format.value,
            activation_type=config.activation_type,
            weight_type=config.weight_type,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            symmetric_activations=config.symmetric_activations,
            weight_bits=config.weight_bits,
            weight_block=config.weight_block,
            power_of_two=config.power_of_two,
            strict_integer=config.strict_integer,
            reason=config.reason,
            method=self.method,
            calibration=CalibrationRecord(
                source=self.calibration_source,
                images=self.calibration_images,
                limit=self.calibration_limit,
                seed=self.calibration_seed,
                batch=self.calibration_batch,
                files=tuple(CalibrationFile(k, v) for k, v in self.calibration_files.items()),
            ),
            evaluation=EvaluationRecord(self.evaluation_source, self.evaluation_images, self.overlap_excluded),
            judged_by=self.judged_by,
            accuracy_recovery=RecoveryRecord(
                steps=tuple(self.recovery),
                weights=self.weight_grid,
                reading_layer_inputs_s=None
                if self.recovery_reading_seconds is None
                else round(self.recovery_reading_seconds, 3),
                judged=self.recovery_judged,
            ),
            quantization_aware_training=self.trained,
            excluded_nodes=tuple(self.excluded_nodes),
            fp32_nodes=tuple(self.fp32_nodes),
            integer_coverage=None if self.coverage is None else CoverageRecord.of(self.coverage, self.provider),
            source_model_sha256=self.source_model_sha256,
            cpu={"model": self.cpu.model, **self.cpu.features},
            versions=self.versions,
        )


def quantize_onnx(
    source: Path | str,
    output: Path | str,
    options: QuantizeOptions | None = None,
    *,
    on_progress: ProgressCallback | None = None,
    calibration: Calibration | None = None,
    trained: QatRecord | None = None,
) -> QuantizeResult:
    """Quantize an FP32 model to INT8 from calibration images, and judge it on held-out images.

    Writes ``output`` and a JSON sidecar ``output + ".json"`` with the calibration record, both atomically.

    Args:
        source: the FP32 (simplified) model.
        output: where the INT8 model goes; its record goes beside it, ``output + ".json"``.
        options: how to quantize (default: :class:`QuantizeOptions`'s defaults).
        on_progress: called with ``Progress("quantize", "calibrating (METHOD)", done, total)`` as calibration
            images are read.
        calibration: ranges already collected by :func:`calibrate_onnx` for this model and these options (only
            ``exclude``, ``per_channel``, ``format`` and ``measure_speed`` may differ); calibrates afresh when None.
        trained: what quantization-aware training did to the model before it came here (``conversion.qat``), kept
            in the record as ``quantization_aware_training``; None for a model that was not trained for it.

    Raises:
        InputFileError: unreadable or already quantized model, unusable data, unwritable output.
        OptionError: bad limit, unknown node to exclude.
        CheckFailedError: a compute node that was not excluded stayed FP32, or the INT8 model misses validate's
            INT8 bar on the held-out images (unless ``options.allow_accuracy_drop``).
    """
    started = time.perf_counter()
    options = options or QuantizeOptions()
    model_path = Path(source)
    output = require_writable_destination(output)
    sidecar = require_writable_destination(Path(f"{output}.json"))
    refuse_overwriting_inputs(
        [output, sidecar], [model_path, options.calib, options.eval_data], command="quantize output"
    )
    job = prepare_job(model_path, options)
    quantized = _quantize(job, options, calibration, on_progress)
    int8 = quantized.recovery.model
    _check_strict_integer(int8, job.config)
    fp32_kept = check_coverage(quantized.prepped, int8, quantized.excluded)
    evaluation = _evaluate(job, options, int8, quantized.calibration_files, fp32_kept)
    output_step = graph_output_step(int8)
    judged_by = _judge(job, evaluation, output_step, allow_drop=options.allow_accuracy_drop)
    result = _result(
        job,
        options,
        quantized,
        evaluation,
        fp32_kept=fp32_kept,
        output_step=output_step,
        judged_by=judged_by,
        trained=trained,
        output=output,
        sidecar=sidecar,
    )
    size = _write(int8, job.source_model, result.record(), output, sidecar)
    return replace(result, bytes_after=size, seconds=time.perf_counter() - started)


@dataclass(frozen=True)
class _Quantized:
    """onnxruntime's quantization of the calibrated model, after the recipe's accuracy-recovery steps."""

    prepped: onnx.ModelProto  # onnxruntime's pre-processed FP32 model, whose node names the INT8 one keeps
    excluded: list[str]  # the nodes ``--exclude`` named
    calibration_files: dict[str, str]  # the calibration images, id -> SHA-256
    recovery: Recovery  # the INT8 model is ``recovery.model``


def _quantize(
    job: Job, options: QuantizeOptions, calibration: Calibration | None, on_progress: ProgressCallback | None
) -> _Quantized:
    """Calibrate (unless ``calibration`` is given), quantize with onnxruntime and run the recovery steps.

    Raises:
        ValueError: ``calibration`` was collected for another model or other calibration options.
    """
    with tempfile.TemporaryDirectory(prefix="resnet-edge-quantize-") as tmp:
        given = calibration is not None
        if calibration is None:
            calibration = collect_calibration(job, Path(tmp), options, on_progress=on_progress)
        elif calibration.fingerprint != job.fingerprint:
            raise ValueError("the calibration was collected for another model or other calibration options")
        prepped = onnx.load(str(calibration.prepped))
        excluded = resolve_exclusions(prepped, options.exclude)
        seen = calibration.images
        int8_path = Path(tmp, "int8.onnx")
        _quantize_static(calibration.prepped, int8_path, calibration.ranges, job.config, options.method, excluded)
        int8 = onnx.load(str(int8_path))
        recovery = _recover(int8, prepped, job, options, Path(tmp), excluded, seen, given, on_progress)
    return _Quantized(prepped, excluded, seen, recovery)


def _result(
    job: Job,
    options: QuantizeOptions,
    quantized: _Quantized,
    evaluation: Evaluation,
    *,
    fp32_kept: list[str],
    output_step: float | None,
    judged_by: str,
    trained: QatRecord | None,
    output: Path,
    sidecar: Path,
) -> QuantizeResult:
    """The result before the model is written (``bytes_after`` and ``seconds`` are filled in after)."""
    int8, recovery = quantized.recovery.model, quantized.recovery
    return QuantizeResult(
        output=output,
        sidecar=sidecar,
        config=job.config,
        target_requested=options.target.value,
        method=options.method.value,
        calibration_source=job.calib_source.name,
        calibration_files=quantized.calibration_files,
        calibration_limit=options.limit,
        calibration_seed=options.seed,
        calibration_batch=job.batch,
        skipped_files=job.calib_source.skipped,
        evaluation_source=job.eval_source.name,
        evaluation_images=evaluation.images,
        overlap_excluded=evaluation.overlap_excluded,
        parity=evaluation.parity,
        fp32_accuracy=evaluation.fp32_accuracy,
        int8_accuracy=evaluation.int8_accuracy,
        quantized_nodes=sum(n.op_type in COMPUTE_OPS for n in quantized.prepped.graph.node) - len(fp32_kept),
        fp32_nodes=fp32_kept,
        excluded_nodes=sorted(quantized.excluded),
        bytes_before=job.source.stat().st_size,
        bytes_after=0,
        speed=compare_speed(job.source_model, int8, evaluation.first_image) if options.measure_speed else None,
        seconds=0.0,
        source_model_sha256=job.fingerprint[0],
        cpu=cpu_info(),
        versions=_versions(),
        coverage=evaluation.coverage,
        judged_by=judged_by,
        output_step=output_step,
        provider=options.provider.value,
        recovery=recovery.steps,
        weight_grid=recovery.grid,
        recovery_reading_seconds=recovery.reading_seconds,
        recovery_judged=recovery.judged,
        trained=trained,
    )


def _evaluate(
    job: Job, options: QuantizeOptions, int8: onnx.ModelProto, calibration_files: dict[str, str], fp32_kept: list[str]
) -> Evaluation:
    """INT8 against FP32 on the held-out images (none calibrated on), its integer coverage checked.

    Raises:
        CheckFailedError: a Conv/Gemm not kept in FP32 ran as a float kernel, with a strict option or target.
        ProviderError: ``--strict-ep`` and the provider is missing or took only part of the compute.
    """
    evaluation = evaluate_against(
        job.source,
        int8,
        job.eval_source,
        job.eval_indices,
        job.spec,
        exclude_hashes=set(calibration_files.values()),
        provider=options.provider,
        strict_ep=options.strict_ep,
    )
    if job.config.weight_bits == 8:  # 4-bit weights are dequantized on the CPU EP by design (see README, INT4)
        strict = options.require_int8 or options.strict_ep or job.config.strict_integer
        check_integer_coverage(evaluation.coverage, excluded=fp32_kept, strict=strict)
    return evaluation


def _check_strict_integer(int8: onnx.ModelProto, config: Int8Recipe) -> None:
    """Refuse a model for a strict-integer target (an NPU) with a Conv, Gemm or Add that is not all integer.

    Raises:
        CheckFailedError: such a node.
    """
    if not config.strict_integer:
        return
    violations = strict_integer_violations(int8)
    if violations:
        raise CheckFailedError(
            f"{config.target.value} is strict integer, and {len(violations)} Conv/Gemm/Add node(s) are not:"
            f" {'; '.join(violations[:3])}"
        )


def _judge(job: Job, evaluation: Evaluation, output_step: float | None, *, allow_drop: bool) -> str:
    """How the INT8 model is judged against FP32 (``QuantizeResult.judged_by``), after checking that it passes.

    Raises:
        CheckFailedError: it misses the bar, and ``allow_drop`` is off.
    """
    if read_metadata(job.source_model).random_weights:
        judged_by, bar = "logit error", "the logit-error bar for random weights"
        misses = logit_error_shortfalls(evaluation.parity, output_step)
    else:
        judged_by, bar = "top-1 agreement", "validate's bar"
        misses = int8_shortfalls(evaluation.parity, evaluation.fp32_accuracy, evaluation.int8_accuracy)
    if misses and not allow_drop:
        raise CheckFailedError(
            f"INT8 model misses {bar} on {evaluation.images} held-out images of {job.eval_source.name}:"
            f" {'; '.join(misses)}; nothing was written (pass --allow-accuracy-drop to keep it, or keep blocks in"
            " FP32 with --max-top1-drop / --min-agreement)"
        )
    return judged_by


def _write(
    int8: onnx.ModelProto, fp32: onnx.ModelProto, record: QuantizationRecord, output: Path, sidecar: Path
) -> int:
    """Write the checked INT8 model with its record embedded and beside it; returns the model's size in bytes."""
    write_props(int8, read_props(fp32))  # the FP32 model's own description (labels, preprocessing) carries over
    onnx.checker.check_model(int8, full_check=True)
    return write_quantized(int8, output, sidecar, record)


def _recover(
    int8: onnx.ModelProto,
    prepped: onnx.ModelProto,
    job: Job,
    options: QuantizeOptions,
    tmp: Path,
    excluded: list[str],
    seen: dict[str, str],
    given: bool,
    on_progress: ProgressCallback | None,
) -> Recovery:
    """The recipe's accuracy-recovery steps (:mod:`.recovery`), each judged on the held-out images unless judging is
    off or the ranges were given (a mixed-precision search: there the search judges)."""
    judge = unequalized = None
    if options.judge_steps and not given and job.config.has_recovery:

        def judge(model: onnx.ModelProto) -> Judgement:
            found = evaluate_against(
                job.source_model,
                model,
                job.eval_source,
                job.eval_indices,
                job.spec,
                exclude_hashes=set(seen.values()),
                provider=options.provider,
            )
            top1 = found.int8_accuracy.top1 if found.int8_accuracy is not None else None
            return Judgement(found.parity.top1_agreement, top1, found.images, found.parity.kl_divergence)

        def unequalized() -> tuple[onnx.ModelProto, onnx.ModelProto]:
            folder = tmp / "unequalized"
            folder.mkdir()
            plain = replace(job, fp32=job.source_model, equalization=None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResnetEdgeWarning)  # said once, by the first calibration
                ranges = collect_calibration(plain, folder, options)
            path = folder / "int8.onnx"
            _quantize_static(ranges.prepped, path, ranges.ranges, job.config, options.method, excluded)
            return onnx.load(str(path)), onnx.load(str(ranges.prepped))

    if not job.config.has_recovery:
        why = "no recovery step"
    elif not options.judge_steps:
        why = "not judged: --no-judge-steps"
    else:
        why = "not judged: ranges given (mixed precision)"
    return recover_accuracy(
        int8,
        prepped,
        job,
        options,
        judge=judge,
        unequalized=unequalized,
        not_judged=why,
        on_progress=on_progress,
    )


def _quantize_static(
    prepped: Path, output: Path, ranges: Path, config: Int8Recipe, method: Method, excluded: list[str]
) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    with quiet_onnxruntime():
        quantize_static(
            model_input=str(prepped),
            model_output=str(output),
            calibration_data_reader=None,  # ranges come from the cache our streaming calibration wrote
            calibration_cache_path=str(ranges),
            quant_format=QuantFormat.QDQ if config.format is Format.QDQ else QuantFormat.QOperator,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            activation_type=types[config.activation_type],
            # 4-bit weights are written afterwards (recovery.py), over onnxruntime's 8-bit ones.
            weight_type=types[config.weight_type] if config.weight_bits == 8 else QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=method.onnxruntime,
            extra_options={"ActivationSymmetric": config.symmetric_activations, "WeightSymmetric": True},
        )


def check_coverage(prepped: onnx.ModelProto, int8: onnx.ModelProto, excluded: Sequence[str]) -> list[str]:
    """Compute nodes (Conv, Gemm, MatMul) still in FP32 after quantization; all of them must be excluded ones.

    Raises:
        CheckFailedError: a compute node that was not excluded stayed FP32.
    """
    index = GraphIndex(int8)
    int8_nodes = {node.name: node for node in int8.graph.node}
    fp32 = []
    for node in prepped.graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        after = int8_nodes.get(node.name)
        # Quantized, a node is gone (QOperator: QLinearConv/QGemm) or takes its weight through a DequantizeLinear.
        if after is not None and after.op_type == node.op_type and index.dequantize_scale(after.input[1]) is None:
            fp32.append(node.name)
    unexpected = [n for n in fp32 if n not in set(excluded)]
    if unexpected:
        raise CheckFailedError(f"{len(unexpected)} compute node(s) were not quantized: {', '.join(unexpected[:3])}")
    return fp32


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


def _versions() -> dict[str, str]:
    import onnxruntime

    return {"resnet-edge": __version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}
