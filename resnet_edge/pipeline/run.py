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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from resnet_edge import formatting as fmt
from resnet_edge.artifacts import current_umask
from resnet_edge.conversion.export import ExportResult
from resnet_edge.conversion.simplify import SimplifyResult
from resnet_edge.device.fleet import FleetBenchmarkResult
from resnet_edge.errors import (
    CheckFailedError,
    InputFileError,
    OptionError,
    OutputWriteError,
    ResnetEdgeError,
    ResnetEdgeWarning,
    StageError,
)
from resnet_edge.evaluation.benchmark import BenchmarkResult
from resnet_edge.evaluation.options import DEFAULT_TUNE_ITERATIONS, TuneOptions
from resnet_edge.evaluation.tune import TuneResult
from resnet_edge.evaluation.validate import Reference, ValidateResult
from resnet_edge.pipeline.config import PipelineConfig
from resnet_edge.pipeline.publish import (
    Outdir,
    check_outdir,
    discard,
    outdir_lock,
    publish,
    write_manifest,
)
from resnet_edge.pipeline.result import FILES, PipelineResult, tuned_file
from resnet_edge.pipeline.stages import STAGES, OnTargets, Stage
from resnet_edge.progress import DONE, FAILED, STARTED, Progress, ProgressCallback
from resnet_edge.quantization.calibrate import BUNDLED_PHOTOS_NOTE
from resnet_edge.quantization.quantize import QuantizeResult

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
    stages: Sequence[Stage] = (),
) -> PipelineResult:
    """Run every stage into ``outdir`` and write the report (JSON, Markdown, HTML, plots).

    Args:
        overwrite: replace ``outdir`` if an earlier pipeline run made it: its files, as listed with their hashes in
            its :data:`MARKER` manifest, and nothing else.
        inputs: files the caller read the configuration from (a TOML file), protected like the run's own inputs.
        on_progress: told as each stage starts, progresses (calibration images, timed rounds, a device's steps)
            and ends or fails (:data:`~resnet_edge.progress.DONE`, :data:`~resnet_edge.progress.FAILED`).
        stages: stages to run in place of the pipeline's own of the same name (:data:`.stages.STAGES`).

    Raises:
        OptionError: see :func:`check_outdir`; another run is writing ``outdir``.
        InputFileError: the output's parent folder is missing or cannot be written; something appeared at
            ``outdir`` during the run (:class:`.publish.PublishError`: it is left as it is, this run's output dropped).
        StageError: a stage failed; the message names it, and ``outdir`` holds the stages before it and a report.
    """
    chosen = {stage.name: stage for stage in (*STAGES, *stages)}
    if len(chosen) > len(STAGES):
        raise ValueError(f"no pipeline stage is named {', '.join(list(chosen)[len(STAGES) :])}")
    check_inputs(config)
    run_inputs = [config.weights, config.calib, config.data, config.validate.label_map, *inputs]
    found = check_outdir(outdir, overwrite=overwrite, inputs=run_inputs)
    _check_sources(config)
    with outdir_lock(found.path):
        found = check_outdir(found.path, overwrite=overwrite, inputs=run_inputs)  # as it is now that the lock is ours
        return _run_locked(config, found, chosen, on_progress)


def _run_locked(
    config: PipelineConfig, found: Outdir, stages: dict[str, Stage], on_progress: ProgressCallback | None
) -> PipelineResult:
    outdir = found.path
    parent = outdir.parent
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", suffix=".partial", dir=parent))
    except OSError as exc:  # permission bits can say yes where the file system says no
        raise InputFileError(f"cannot write in the output folder's parent {parent}: {exc.strerror}") from None
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private; OUTDIR should be an ordinary folder
    result = PipelineResult(outdir=outdir, config=config)
    try:
        with tempfile.TemporaryDirectory(prefix="resnet-edge-weights-") as scratch:
            crash: Exception | None = None
            try:
                _run_stages(config, staging, Path(scratch), _Run(stages, result, on_progress))
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


@dataclass
class _Run:
    """What a run's stages share: the stages by name, the result they fill in, and where progress goes."""

    stages: dict[str, Stage]
    result: PipelineResult
    on_progress: ProgressCallback | None

    @contextmanager
    def stage(self, name: str) -> Iterator[_Step]:
        """Time stage ``name``, report its start and end; turn a user error into a StageError naming it."""
        step = _Step(self.stages[name], self.on_progress)
        report = self.on_progress or (lambda progress: None)
        logger.debug("pipeline stage %s: started", name)
        report(Progress(name, STARTED))
        started = time.perf_counter()
        try:
            yield step
        except Exception as exc:
            seconds = time.perf_counter() - started
            if not isinstance(exc, ResnetEdgeError):  # a bug: the report names the stage, the traceback stays
                self.result.failed_stage, self.result.error = name, f"internal error: {type(exc).__name__}: {exc}"
                report(Progress(name, FAILED, detail=self.result.error, seconds=seconds))
                raise
            self.result.stage_seconds[name] = seconds
            report(Progress(name, FAILED, detail=str(exc), seconds=seconds))
            raise StageError(name, exc) from None
        seconds = time.perf_counter() - started
        self.result.stage_seconds[name] = seconds
        logger.debug("pipeline stage %s: done in %.2f s", name, seconds)
        report(Progress(name, DONE, detail=step.summary, seconds=seconds))


@dataclass
class _Step:
    """A stage as the run drives it: its ``run`` told the run's progress, and the summary line it ends with."""

    stage: Stage
    on_progress: ProgressCallback | None
    summary: str = ""

    def run(self, source: Any, output: Path | None, options: Any) -> Any:
        return self.stage.run(source, output, options, self.on_progress)


@contextmanager
def _likely_cause(result: PipelineResult) -> Iterator[None]:
    """A check that an INT8 model fails on random weights: say that those are the likely cause."""
    try:
        yield
    except CheckFailedError as exc:
        if result.random_weights is None:
            raise
        raise CheckFailedError(f"{exc} ({RANDOM_WEIGHTS_HINT})") from None


def _run_stages(config: PipelineConfig, out: Path, scratch: Path, run: _Run) -> None:
    result = run.result
    weights = config.resolved_weights() or _fresh_weights(config, scratch, result)
    exported, simplified = out / FILES["export"], out / FILES["simplify"]

    with run.stage("export") as export:
        # keeps every BatchNorm: the simplify stage folds them and proves it
        result.export = export.run(weights, exported, config.export)
        export.summary = _export_summary(result.export)

    with run.stage("simplify") as simplify:
        result.simplify = simplify.run(exported, simplified, config.simplify)
        simplify.summary = _simplify_summary(result.simplify)

    models = [exported, simplified]
    if config.int8:
        with run.stage("quantize") as quantize, _likely_cause(result):
            result.quantize = quantize.run(simplified, out / FILES["quantize"], config.quantize)
            quantize.summary = _quantize_summary(result.quantize)
        models.append(out / FILES["quantize"])

    with run.stage("validate") as validate, _likely_cause(result):
        reference = Reference(checkpoint=weights, arch=result.export.arch)
        result.validate = validate.run((models, reference), None, config.validate)
        validate.summary = _judge_validation(result.validate)

    with run.stage("benchmark") as benchmark:
        result.benchmark = benchmark.run(models, None, config.benchmark_options(torch_reference=weights))
        benchmark.summary = _benchmark_summary(result.benchmark)

    if config.targets:
        with run.stage("devices") as devices:
            options = OnTargets(config.benchmark_options(torch_reference=None), config.targets, config.run.remote())
            result.devices = devices.run(models, None, options)
            devices.summary = _devices_summary(result.devices)

    if config.tune:
        with run.stage("tune") as tune:
            _tune(tune, config, out, result)
            result.tune = result.tunes[0]
            tune.summary = "; ".join(map(_tune_summary, result.tunes))


def _devices_summary(devices: FleetBenchmarkResult) -> str:
    """The devices stage's summary line (the models benchmarked on each --target device, as the benchmark stage
    times them here, without PyTorch eager).

    Raises:
        ResnetEdgeError: a device could not be reached or failed; every such device's error.
    """
    failed = [t.error for t in devices.targets if not t.ok]
    if failed:
        raise ResnetEdgeError("; ".join(failed))
    return f"{len(devices.rows)} rows from {len(devices.targets)} target(s)"


def _tune(tune: _Step, config: PipelineConfig, out: Path, result: PipelineResult) -> None:
    """tune on model.sim.onnx with the run's providers (those that run here), threads, largest batch, data and
    calibration images; the quantize stage's INT8 model stands in for its configuration's candidate (no second
    quantization of it). Timed rounds are the run's, at most tune's default (30): the stage adds seconds, not
    minutes, to a default run.

    With --target, on each device in turn (one deployment per device; in turn, so that two never time each other):
    the candidates built here for the device's CPU and the providers its onnxruntime has, judged and timed there.
    With one device the file is model.tuned.onnx, with several one per device (:func:`.result.tuned_file`)."""
    options = _tune_options(config, result)
    if not config.targets:
        result.tunes.append(tune.run(out / FILES["simplify"], out / FILES["tune"], options))
        return
    on_device = dataclasses.replace(options, providers=None)  # what the device has
    remote = config.run.remote()
    for target in config.targets:
        output = out / tuned_file(target, len(config.targets) > 1)
        where = OnTargets(on_device, (target,), remote)
        result.tunes.append(tune.run(out / FILES["simplify"], output, where))


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


def _quantize_summary(q: QuantizeResult) -> str:
    return (
        f"{FILES['quantize']}: {q.config.target.value} {q.config.format.value}, calibrated on"
        f" {q.calibration_images} images"
        f"{f' ({BUNDLED_PHOTOS_NOTE})' if q.calibration_source == 'builtin:photos' else ''},"
        " top-1 agreement with FP32"
        f" {fmt.percent(q.parity.top1_agreement)} on {q.evaluation_images} held-out images"
    )


def _judge_validation(v: ValidateResult) -> str:
    """The validate stage's summary line.

    Raises:
        CheckFailedError: a model misses validate's bar.
    """
    worst = min(r.parity.top1_agreement for r in v.rows)
    if not v.passed:
        from resnet_edge.evaluation.validate import describe_failures

        raise CheckFailedError(describe_failures(v))
    return (
        f"{len(v.rows)} model x provider rows on {v.images} images"
        f"{f' ({v.calibration_excluded} calibration images left out)' if v.calibration_excluded else ''},"
        " lowest top-1 agreement"
        f" {fmt.percent(worst)}: {'pass' if v.passed else 'FAIL'}"
    )
