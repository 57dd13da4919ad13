"""The whole flow in one call: export -> simplify -> quantize -> validate -> benchmark -> tune -> report.

Everything is built in a staging folder beside OUTDIR and moved into place at the end (:mod:`.publish`: a lock per
OUTDIR, a manifest of the run's files, a re-check at publish time), so OUTDIR never mixes the artifacts of two runs
and nothing that appeared there meanwhile is touched. A stage that fails stops the run: the artifacts of the stages
before it (each complete and verified) are published with a report that says where it stopped. Ctrl-C, SIGTERM and
SIGHUP publish nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from resnet_edge import formatting as fmt
from resnet_edge.artifacts import current_umask
from resnet_edge.conversion.export import ExportResult, export_onnx
from resnet_edge.conversion.simplify import SimplifyResult, simplify_onnx
from resnet_edge.errors import (
    CheckFailedError,
    InputFileError,
    OptionError,
    OutputWriteError,
    ResnetEdgeError,
    ResnetEdgeWarning,
    StageError,
)
from resnet_edge.evaluation.benchmark import BenchmarkResult, benchmark_models
from resnet_edge.evaluation.options import DEFAULT_TUNE_ITERATIONS, TuneOptions
from resnet_edge.evaluation.tune import TuneResult, tune_model
from resnet_edge.evaluation.validate import Reference, validate_models
from resnet_edge.pipeline.config import (
    PipelineConfig,
)
from resnet_edge.pipeline.publish import (
    Outdir,
    check_outdir,
    discard,
    outdir_lock,
    publish,
    write_manifest,
)
from resnet_edge.pipeline.result import FILES, PipelineResult, tuned_file
from resnet_edge.progress import DONE, FAILED, STARTED, Progress, ProgressCallback
from resnet_edge.quantization.calibrate import BUNDLED_PHOTOS_NOTE
from resnet_edge.quantization.quantize import quantize_onnx

logger = logging.getLogger("resnet_edge")
RANDOM_WEIGHTS_WARNING = (
    "{arch} has random weights (no --weights; seed {seed}): its accuracy figures are meaningless, and agreement"
    " thresholds on a random model measure noise, not the conversion"
)
RANDOM_WEIGHTS_HINT = (
    "likely cause: the model has random weights, whose near-tied logits flip under INT8 rounding;"
    " pass --weights with a trained checkpoint"
)


def run_pipeline(
    config: PipelineConfig,
    outdir: Path | str,
    *,
    overwrite: bool = False,
    inputs: Sequence[Path | str] = (),
    on_progress: ProgressCallback | None = None,
) -> PipelineResult:
    """Run every stage into ``outdir`` and write the report (JSON, Markdown, HTML, plots).

    Args:
        overwrite: replace ``outdir`` if an earlier pipeline run made it: its files, as listed with their hashes in
            its :data:`MARKER` manifest, and nothing else.
        inputs: files the caller read the configuration from (a TOML file), protected like the run's own inputs.
        on_progress: told as each stage starts, progresses (calibration images, timed rounds, a device's steps)
            and ends or fails (:data:`~resnet_edge.progress.DONE`, :data:`~resnet_edge.progress.FAILED`).

    Raises:
        OptionError: see :func:`check_outdir`; another run is writing ``outdir``.
        InputFileError: the output's parent folder is missing or cannot be written; something appeared at
            ``outdir`` during the run (:class:`.publish.PublishError`: it is left as it is, this run's output dropped).
        StageError: a stage failed; the message names it, and ``outdir`` holds the stages before it and a report.
    """
    check_inputs(config)
    run_inputs = [config.weights, config.calib, config.data, config.validate.label_map, *inputs]
    found = check_outdir(outdir, overwrite=overwrite, inputs=run_inputs)
    _check_sources(config)
    with outdir_lock(found.path):
        found = check_outdir(found.path, overwrite=overwrite, inputs=run_inputs)  # as it is now that the lock is ours
        return _run_locked(config, found, on_progress)


def _run_locked(config: PipelineConfig, found: Outdir, on_progress: ProgressCallback | None) -> PipelineResult:
    outdir = found.path
    parent = outdir.parent
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", suffix=".partial", dir=parent))
    except OSError as exc:  # permission bits can say yes where the file system says no
        raise InputFileError(f"cannot write in the output folder's parent {parent}: {exc.strerror}") from None
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private; OUTDIR should be an ordinary folder
    result = PipelineResult(outdir=outdir, config=config)
    emit = on_progress or (lambda progress: None)
    try:
        with tempfile.TemporaryDirectory(prefix="resnet-edge-weights-") as scratch:
            crash: Exception | None = None
            try:
                _run_stages(config, staging, Path(scratch), result, emit, on_progress)
            except StageError as exc:
                if isinstance(exc.cause, OutputWriteError):  # a full disk: nothing more can be written, keep nothing
                    raise OutputWriteError(f"{exc.stage}: {exc.cause}".replace(str(staging), str(outdir))) from None
                result.failed_stage, result.error = exc.stage, str(exc.cause)
            except Exception as exc:  # a bug in a stage: keep what the stages before it made, then re-raise it
                if result.failed_stage is None:
                    raise
                crash = exc
        from resnet_edge.pipeline.report import write_report

        result.artifacts = sorted(p.name for p in staging.iterdir())
        try:
            write_report(result, staging)
            result.artifacts = sorted(p.name for p in staging.iterdir())
            write_manifest(staging)
        except OutputWriteError as exc:  # named by where it was going: OUTDIR, not the staging folder
            raise OutputWriteError(str(exc).replace(str(staging), str(outdir))) from None
        publish(staging, found)
    except BaseException:
        discard(staging)
        raise
    if crash is not None:
        raise crash
    if result.failed_stage is not None:
        kept = ", ".join(a for a in result.artifacts if a.endswith(".onnx")) or "no model"
        raise StageError(
            result.failed_stage, ResnetEdgeError(f"{result.error} (kept in {outdir}: {kept} and the report)")
        )
    return result


def check_inputs(config: PipelineConfig) -> None:
    """Check that the weights, calibration and validation data named exist, before any stage spends time.

    Raises:
        InputFileError: a named file or folder is missing or holds no images.
        OptionError: an unknown ``builtin:`` name.
    """
    from resnet_edge.artifacts import require_file
    from resnet_edge.calibration.sources import BUILTIN_PREFIX, open_source

    if config.weights is not None:
        if config.weights.startswith(BUILTIN_PREFIX):
            from resnet_edge.models.checkpoints import BUILTIN_WEIGHTS

            if config.weights not in BUILTIN_WEIGHTS:
                raise OptionError(
                    f"weights: unknown built-in checkpoint {config.weights!r};"
                    f" choose one of: {', '.join(BUILTIN_WEIGHTS)}"
                )
        else:
            require_file(config.weights, what="weights")
    if config.label_map is not None:
        from resnet_edge.calibration.labels import read_label_map

        read_label_map(config.label_map)
    for key in ("calib", "data"):
        name = getattr(config, key)
        if name is not None:
            try:
                open_source(name, classes=None)  # found and readable; labels are checked against the model later
            except ResnetEdgeError as exc:
                raise type(exc)(f"{key}: {exc}") from None


def _check_sources(config: PipelineConfig) -> None:
    """Refuse, now, a checkpoint that does not resolve and a benchmark batch that cannot fit in memory."""
    from resnet_edge.models.checkpoints import resolve_weights

    weights = config.resolved_weights()
    if weights is not None:
        resolve_weights(weights)  # what check_inputs found, resolved (builtin:NAME to its file)
        _check_labels(config, weights)
    # The benchmark's largest batch, estimated now from the architecture: it must not fail after the other stages.
    from resnet_edge.memory import check_fits
    from resnet_edge.models.checkpoints import read_checkpoint_metadata
    from resnet_edge.models.memory import torch_estimate
    from resnet_edge.models.registry import get_arch

    arch = config.arch or (read_checkpoint_metadata(weights).get("arch") if weights else None)
    if arch is not None:
        size = config.input_size or get_arch(arch).default_input_size
        estimate = torch_estimate(
            arch,
            num_classes=config.num_classes,
            in_chans=3,
            variant=config.variant or "residual",
            input_size=max(size, get_arch(arch).min_input_size),
        )
        check_fits(
            f"{arch} at batch {max(config.batch_sizes)}",
            estimate,
            max(config.batch_sizes),
            hint="use a smaller --batch",
        )


def _check_labels(config: PipelineConfig, weights: str) -> None:
    """Refuse, now, held-out images whose labels the checkpoint's own ``labels`` cannot map: the validate (or quantize)
    stage would refuse them after minutes of export and calibration.

    Raises:
        InputFileError: as :func:`resnet_edge.calibration.labels.map_classes`.
    """
    import json

    from resnet_edge.calibration.labels import ModelClasses
    from resnet_edge.calibration.sources import open_source
    from resnet_edge.models.checkpoints import read_checkpoint_metadata

    recorded = read_checkpoint_metadata(weights).get("labels")
    held_out = config.data or config.calib  # without --data, quantize holds out a quarter of --calib
    if recorded is None or held_out is None:
        return  # labels known only once exported: the stages map them
    labels = tuple(json.loads(recorded))
    classes = ModelClasses(labels=labels, num_classes=len(labels), label_map=config.validate.label_map)
    try:
        open_source(held_out, classes=classes)
    except ResnetEdgeError as exc:
        raise type(exc)(f"{'data' if config.data else 'calib'}: {exc}") from None


@contextmanager
def _stage(name: str, result: PipelineResult, emit: ProgressCallback) -> Iterator[list[str]]:
    """Time a stage, report its start and end; turn a user error into a StageError naming it."""
    summary: list[str] = []
    logger.debug("pipeline stage %s: started", name)
    emit(Progress(name, STARTED))
    started = time.perf_counter()
    try:
        yield summary
    except Exception as exc:
        if not isinstance(exc, ResnetEdgeError):  # a bug: the report names the stage, the traceback stays
            result.failed_stage, result.error = name, f"internal error: {type(exc).__name__}: {exc}"
            emit(Progress(name, FAILED, detail=result.error, seconds=time.perf_counter() - started))
            raise
        seconds = time.perf_counter() - started
        result.stage_seconds[name] = seconds
        emit(Progress(name, FAILED, detail=str(exc), seconds=seconds))
        raise StageError(name, exc) from None
    seconds = time.perf_counter() - started
    result.stage_seconds[name] = seconds
    logger.debug("pipeline stage %s: done in %.2f s", name, seconds)
    emit(Progress(name, DONE, detail=summary[0] if summary else "", seconds=seconds))


def _run_stages(
    config: PipelineConfig,
    out: Path,
    scratch: Path,
    result: PipelineResult,
    emit: ProgressCallback,
    on_progress: ProgressCallback | None,
) -> None:
    weights = config.resolved_weights() or _fresh_weights(config, scratch, result)

    with _stage("export", result, emit) as summary:
        result.export = export_onnx(
            weights,
            out / FILES["export"],
            config.export,  # keeps every BatchNorm: the simplify stage folds them and proves it
        )
        summary.append(_export_summary(result.export))

    with _stage("simplify", result, emit) as summary:
        result.simplify = simplify_onnx(out / FILES["export"], out / FILES["simplify"], config.simplify)
        summary.append(_simplify_summary(result.simplify))

    models = [out / FILES["export"], out / FILES["simplify"]]
    if config.int8:
        with _stage("quantize", result, emit) as summary:
            summary.append(_quantize(config, out, result, on_progress))
        models.append(out / FILES["quantize"])

    with _stage("validate", result, emit) as summary:
        result.validate = validate_models(
            models,
            Reference(checkpoint=weights, arch=result.export.arch),
            config.validate,
        )
        summary.append(_judge_validation(result))

    with _stage("benchmark", result, emit) as summary:
        result.benchmark = benchmark_models(
            models, config.benchmark_options(torch_reference=weights), on_progress=on_progress
        )
        summary.append(_benchmark_summary(result.benchmark))

    if config.targets:
        with _stage("devices", result, emit) as summary:
            summary.append(_devices(config, models, result, emit))

    if config.tune:
        with _stage("tune", result, emit) as summary:
            if config.targets:  # chosen where it will run: built for each device, judged and timed there
                _tune_on_targets(config, out, result, emit)
            else:
                result.tunes.append(_tune(config, out, result))
            result.tune = result.tunes[0]
            summary.append("; ".join(map(_tune_summary, result.tunes)))


def _devices(config: PipelineConfig, models: list[Path], result: PipelineResult, emit: ProgressCallback) -> str:
    """The devices stage: the models benchmarked on each --target device, as the benchmark stage times them here
    (without PyTorch eager); its summary line.

    Raises:
        ResnetEdgeError: a device could not be reached or failed; every such device's error.
    """
    from resnet_edge.device.fleet import benchmark_on_targets, parse_targets

    result.devices = benchmark_on_targets(
        models,
        parse_targets(list(config.targets)),
        config.benchmark_options(torch_reference=None),
        config.run.remote(),
        on_progress=lambda target, message: emit(Progress("devices", message, target=target)),
    )
    failed = [t.error for t in result.devices.targets if not t.ok]
    if failed:
        raise ResnetEdgeError("; ".join(failed))
    return f"{len(result.devices.rows)} rows from {len(result.devices.targets)} target(s)"


def _tune_on_targets(config: PipelineConfig, out: Path, result: PipelineResult, emit: ProgressCallback) -> None:
    """tune on each --target device in turn (one deployment per device; in turn, so that two never time each other):
    the candidates built here for the device's CPU and the providers its onnxruntime has, judged and timed there.
    With one device the file is model.tuned.onnx, with several one per device (:func:`.result.tuned_file`)."""
    from resnet_edge.device.fleet import tune_on_target

    targets = list(config.targets)
    for target in targets:
        options = dataclasses.replace(_tune_options(config, result), providers=None)  # what the device has
        result.tunes.append(
            tune_on_target(
                out / FILES["simplify"],
                out / tuned_file(target, len(targets) > 1),
                options,
                target,
                config.run.remote(),
                on_progress=lambda where, message: emit(Progress("tune", message, target=where)),
            )
        )


def _tune_options(config: PipelineConfig, result: PipelineResult) -> TuneOptions:
    """The run's options as tune takes them; the quantize stage's INT8 model stands in for its configuration."""
    from resnet_edge.onnx.plugins import available_providers
    from resnet_edge.onnx.providers import Provider, parse_providers

    here = available_providers()
    usable = tuple(p for p in parse_providers(list(config.providers)) if p.ort_name in here) or (Provider.CPU,)
    built = ((result.quantize.config, result.quantize.output),) if result.quantize else ()
    return TuneOptions(
        providers=usable,
        batch=max(config.batch_sizes),
        threads=config.threads,
        data=config.data,
        calib=config.calib,
        label_map=config.validate.label_map,
        limit=config.limit,
        seed=config.seed,
        int8=config.int8,
        iterations=min(config.iterations, DEFAULT_TUNE_ITERATIONS),
        warmup=config.warmup,
        int8_models=built,
    )


def _export_summary(export: ExportResult) -> str:
    parity = max(p.max_abs_error for p in export.parity.values())
    return (
        f"{FILES['export']}: {export.arch}, opset {export.opset}, BatchNormalization {export.batch_norm_nodes},"
        f" max abs error vs PyTorch {fmt.error(parity)} at batch {', '.join(map(str, export.parity))}"
    )


def _benchmark_summary(bench: BenchmarkResult) -> str:
    fastest = min((r for r in bench.rows if r.latency), key=lambda r: r.latency.p50_ms)
    return (
        f"{len(bench.rows)} rows; fastest {fastest.model} p50"
        f" {fmt.ms(fastest.latency.p50_ms, unit=True)} at batch {fastest.batch} on {fastest.ran_on}"
    )


def _tune_summary(tuned: TuneResult) -> str:
    """One deployment tune chose, in words: the file, the candidate, how much faster, how many passed parity."""
    chosen, batch = tuned.chosen, max(tuned.batch_sizes)
    speedup = chosen.speedup_vs_cpu_fp32.get(batch)
    return (
        f"{tuned.output.name}: {chosen.name} on {chosen.provider}"
        f"{f' of {tuned.target}' if tuned.target else ''}"
        f"{f', {fmt.ratio(speedup)} CPU FP32' if speedup else ''} at batch {batch}"
        f"{'' if tuned.timing_used else ' (timing under emulation not used)'}"
        f" ({sum(c.passed for c in tuned.candidates)} of {len(tuned.candidates)} candidates"
        " passed parity)"
    )


def _simplify_summary(s: SimplifyResult) -> str:
    return (
        f"{FILES['simplify']}: BatchNormalization {s.batch_norm_before} -> {len(s.batch_norm_remaining)},"
        f" nodes {sum(s.ops_before.values())} -> {sum(s.ops_after.values())}"
    )


def _fresh_weights(config: PipelineConfig, scratch: Path, result: PipelineResult) -> str:
    """A checkpoint of fresh weights for ``--arch`` alone, drawn with the recorded seed and kept for the validation
    reference; its path."""
    from resnet_edge.models.resnet import create_model

    message = RANDOM_WEIGHTS_WARNING.format(arch=config.arch, seed=config.seed)
    warnings.warn(message, ResnetEdgeWarning, stacklevel=2)
    from resnet_edge.models.checkpoints import write_safetensors
    from resnet_edge.onnx.metadata import RANDOM_INIT

    result.random_weights = weights_file = scratch / f"{config.arch}-seed{config.seed}.safetensors"
    torch.manual_seed(config.seed)
    weights = str(weights_file)
    fresh = create_model(config.arch, num_classes=config.num_classes, variant=config.variant or "residual")
    # Said in the file, so that the exported model records random weights and quantize judges it accordingly.
    write_safetensors(weights, fresh.state_dict(), {"weights": RANDOM_INIT})
    return weights


def _quantize(config: PipelineConfig, out: Path, result: PipelineResult, on_progress: ProgressCallback | None) -> str:
    """The quantize stage: model.int8.onnx from model.sim.onnx; its summary line.

    Raises:
        CheckFailedError: INT8 misses validate's bar (with why a random model does).
    """
    try:
        result.quantize = quantize_onnx(
            out / FILES["simplify"],
            out / FILES["quantize"],
            config.quantize,
            on_progress=on_progress,
        )
    except CheckFailedError as exc:  # quantize judges INT8 on validate's bar: say why a random model misses it
        if result.random_weights is None:
            raise
        raise CheckFailedError(f"{exc} ({RANDOM_WEIGHTS_HINT})") from None
    q = result.quantize
    return (
        f"{FILES['quantize']}: {q.config.target.value} {q.config.format.value}, calibrated on"
        f" {q.calibration_images} images"
        f"{f' ({BUNDLED_PHOTOS_NOTE})' if q.calibration_source == 'builtin:photos' else ''},"
        " top-1 agreement with FP32"
        f" {fmt.percent(q.parity.top1_agreement)} on {q.evaluation_images} held-out images"
    )


def _judge_validation(result: PipelineResult) -> str:
    """The validate stage's summary line.

    Raises:
        CheckFailedError: a model misses validate's bar (with why a random model does).
    """
    v = result.validate
    worst = min(r.parity.top1_agreement for r in v.rows)
    if not v.passed:
        from resnet_edge.evaluation.validate import describe_failures

        hint = f" ({RANDOM_WEIGHTS_HINT})" if result.random_weights is not None else ""
        raise CheckFailedError(describe_failures(v) + hint)
    return (
        f"{len(v.rows)} model x provider rows on {v.images} images"
        f"{f' ({v.calibration_excluded} calibration images left out)' if v.calibration_excluded else ''},"
        " lowest top-1 agreement"
        f" {fmt.percent(worst)}: {'pass' if v.passed else 'FAIL'}"
    )


def _tune(config: PipelineConfig, out: Path, result: PipelineResult) -> TuneResult:
    """tune on model.sim.onnx with the run's providers (those that run here), threads, largest batch, data and
    calibration images; the quantize stage's INT8 model stands in for its configuration's candidate (no second
    quantization of it). Timed rounds are the run's, at most tune's default (30): the stage adds seconds, not
    minutes, to a default run."""
    return tune_model(out / FILES["simplify"], out / FILES["tune"], _tune_options(config, result))
