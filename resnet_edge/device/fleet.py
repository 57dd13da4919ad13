"""``benchmark`` and ``validate`` on target devices, one or a fleet, side by side.

The host does everything that needs the toolkit: it reads the models, preprocesses the inputs from each model's own
metadata (the one preprocessing implementation), computes the reference outputs, and afterwards builds the rows with the
code a local run uses (:func:`resnet_edge.evaluation.benchmark.timed_rows`,
:func:`resnet_edge.evaluation.validate.judge_outputs`), so the thresholds and the JSON are those of a local run. Each
device only runs the runner.

Targets run in parallel, each in its own thread with its own progress line; a target that fails is reported as
failed with its one-line error, and the others complete. Targets that are one machine take turns for the timing.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from resnet_edge.artifacts import sha256_file
from resnet_edge.device.facts import EMULATION_WARNING, DeviceFacts, Thermal
from resnet_edge.device.protocol import Job, JobModel, output_key, session_key
from resnet_edge.device.targets import JobFiles, RemoteOptions, Target, Transfer, target_session
from resnet_edge.errors import OptionError, ResnetEdgeError, ResnetEdgeWarning
from resnet_edge.evaluation.benchmark import BenchmarkRow, check_options, default_timing_data, image_pool, timed_rows
from resnet_edge.evaluation.options import BenchmarkOptions, ValidateOptions
from resnet_edge.evaluation.validate import (
    Outputs,
    Plan,
    Reference,
    ValidateResult,
    finish_validation,
    judge_outputs,
    plan_validation,
    reference_inputs,
)
from resnet_edge.onnx.io import load_onnx
from resnet_edge.onnx.metadata import preprocessing_for
from resnet_edge.onnx.placement import ExecutedNode, placement_from_json
from resnet_edge.onnx.providers import OPENVINO_RUNTIME
from resnet_edge.progress import Progress, ProgressCallback
from resnet_edge.quantization.coverage import coverage_of
from resnet_edge.timing import LatencyStats, Timed

if TYPE_CHECKING:
    import onnx

    from resnet_edge.evaluation.options import TuneOptions
    from resnet_edge.evaluation.tune import TuneResult


@dataclass
class TargetRun:
    """What happened on one target: its facts and transfers, or the one-line error it failed with."""

    target: str
    ok: bool
    error: str | None = None
    device: DeviceFacts | None = None
    thermal_before: Thermal | None = None
    thermal_after: Thermal | None = None
    threads: int | None = None
    transfer: Transfer | None = None
    cache: dict | None = None  # the runner's record: models found in its cache, and installed into it
    warnings: list[str] = field(default_factory=list)
    io: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    # Ran under emulation (the runner's facts say so, or an exec: prefix names QEMU): its timings are not ranked.
    emulated: bool = False


@dataclass
class FleetBenchmarkResult:
    """One row per (target, model, provider, batch), and what happened on each target."""

    rows: list[BenchmarkRow]
    targets: list[TargetRun]
    options: BenchmarkOptions
    file_sha256: dict[str, str]

    @property
    def failed(self) -> list[str]:
        return [t.target for t in self.targets if not t.ok]


@dataclass
class FleetValidateResult:
    """One validation per target (None where the target failed), and what happened on each target."""

    results: dict[str, ValidateResult | None]
    targets: list[TargetRun]

    @property
    def failed(self) -> list[str]:
        return [t.target for t in self.targets if not t.ok]

    @property
    def passed(self) -> bool:
        return not self.failed and all(r is not None and r.passed for r in self.results.values())


def parse_targets(texts: Sequence[str]) -> list[Target]:
    """Raises: OptionError: a bad target, or one given twice."""
    targets = [Target.parse(t) for t in texts]
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise OptionError(f"a target is given twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    return targets


def benchmark_on_targets(
    models: Sequence[Path | str],
    targets: Sequence[Target],
    options: BenchmarkOptions | None = None,
    remote: RemoteOptions | None = None,
    *,
    on_progress: ProgressCallback | None = None,
) -> FleetBenchmarkResult:
    """Time ``models`` on each target with the device runner, side by side with the same method as ``benchmark``.

    Args:
        models: ONNX files; ratios are taken against the first, per target, provider and batch.
        targets: where to run; in parallel.
        on_progress: told ``Progress("benchmark", message, target=name)`` as each target moves on.

    Raises:
        OptionError: bad options (as ``benchmark``), ``--torch`` (PyTorch does not run on a device), no targets.
        InputFileError: a model cannot be read.
    """
    options = options or BenchmarkOptions()
    remote = remote or RemoteOptions()
    check_options(models, options)
    if options.torch_reference:
        raise OptionError("--torch times PyTorch on this machine; a --target device runs ONNX models only")
    if not targets:
        raise OptionError("give at least one target")
    protos = {str(m): load_onnx(m) for m in models}
    job, inputs, shas = _benchmark_job(protos, options)
    runs = _run_with_inputs(targets, remote, job, {shas[n]: Path(n) for n in protos}, inputs, on_progress)
    rows: list[BenchmarkRow] = []
    for run, document in runs:
        if document is not None:
            rows += _target_rows(run, document, protos, first=str(models[0]), batch_sizes=options.batch_sizes)
    return FleetBenchmarkResult(
        rows=rows, targets=[run for run, _ in runs], options=options, file_sha256={n: shas[n] for n in protos}
    )


def _benchmark_job(
    protos: dict[str, onnx.ModelProto], options: BenchmarkOptions
) -> tuple[Job, dict[str, np.ndarray], dict[str, str]]:
    """The runner's benchmark job, its input arrays (one copy of each distinct image pool) and each model's SHA-256."""
    pools: dict[tuple[str, str], np.ndarray] = {}
    inputs: dict[str, np.ndarray] = {}
    job_models = []
    shas = {}
    pool_names: dict[int, str] = {}  # one copy of each distinct image pool goes to the device
    for name, proto in protos.items():
        pool = image_pool(preprocessing_for(proto, source=name), options.data or default_timing_data(proto), pools)
        key = pool_names.setdefault(id(pool), f"pool_{len(pool_names)}")
        inputs[key] = pool
        shas[name] = sha256_file(name)
        job_models.append(JobModel(name, shas[name], key))
    job = Job(
        "benchmark",
        job_models,
        providers=[p.value for p in options.providers],
        strict_ep=options.strict_ep,
        threads=options.threads,
        batch_sizes=list(options.batch_sizes),
        warmup=options.warmup,
        iterations=options.rounds,
        duration_s=options.duration_s,
        spinning=options.spinning,  # as deployed (phases of its own) unless told otherwise
    )
    return job, inputs, shas


def _target_rows(
    run: TargetRun, document: dict, protos: dict[str, onnx.ModelProto], *, first: str, batch_sizes: Sequence[int]
) -> list[BenchmarkRow]:
    """One target's benchmark rows from its runner's document, built as a local run builds them (``timed_rows``);
    each provider's I/O placement is recorded on ``run``."""
    rows: list[BenchmarkRow] = []
    for provider, data in document["benchmark"].items():
        run.io[provider] = data["io"]
        sessions = {k: (v["ran_on"], v["providers_used"]) for k, v in data["sessions"].items()}
        cold = {k: v["cold_start_ms"] for k, v in data["sessions"].items()}
        placements = {
            k: placement_from_json(v.get("placement"), model_nodes=len(protos[k].graph.node))
            for k, v in data["sessions"].items()
        }
        coverages = {k: coverage_of(protos[k], _executed(v)) for k, v in data["sessions"].items()}
        by_batch: dict[int, list[Timed]] = {}
        for t in data["timed"]:
            latency = LatencyStats.from_json(t["latency"]) if t["latency"] else None
            by_batch.setdefault(t["batch"], []).append(Timed(t["label"], t["batch"], latency, t["skipped"]))
        for batch in batch_sizes:
            timed = timed_rows(
                by_batch.get(batch, []), first=first, provider=provider, sessions=sessions, cold=cold,
                target=run.target, placements=placements, coverages=coverages,
            )  # fmt: skip
            if run.emulated:  # no speed-up from emulated timings: they rank nothing, not even the models
                timed = [dataclasses.replace(r, p50_ratio=None, speedup=None) for r in timed]
            rows += timed
    return rows


def validate_on_targets(
    models: Sequence[Path | str],
    targets: Sequence[Target],
    reference: Reference | None = None,
    options: ValidateOptions | None = None,
    remote: RemoteOptions | None = None,
    *,
    on_progress: ProgressCallback | None = None,
) -> FleetValidateResult:
    """Run ``models`` on each target over the preprocessed images; judge the outputs here, as ``validate`` does.

    Raises:
        as :func:`resnet_edge.evaluation.validate.validate_models`, and OptionError for no targets.
    """
    if not targets:
        raise OptionError("give at least one target")
    options = options or ValidateOptions()
    remote = remote or RemoteOptions()
    plan = plan_validation(models, reference, options)
    inputs: dict[str, np.ndarray] = {}
    groups = {}  # group key -> (expected logits, labels)
    input_of = {}
    for index, (key, names) in enumerate(plan.groups.items()):
        images, expected, labels = reference_inputs(plan, key)
        inputs[f"images_{index}"] = images
        groups[key] = (expected, labels)
        input_of.update({name: f"images_{index}" for name in names})
    shas = {name: sha256_file(name) for name in plan.protos}
    names = list(plan.protos)
    job = Job(
        "validate",
        [JobModel(n, shas[n], input_of[n]) for n in names],
        providers=[p.value for p in options.providers],
        strict_ep=options.strict_ep,
        validate_batch=options.batch,
    )
    runs = _run_with_inputs(targets, remote, job, {shas[n]: Path(n) for n in names}, inputs, on_progress)
    results: dict[str, ValidateResult | None] = {
        run.target: None if document is None else _judge_target(plan, groups, job, document["validate"])
        for run, document in runs
    }
    return FleetValidateResult(results=results, targets=[run for run, _ in runs])


def _judge_target(plan: Plan, groups: dict, job: Job, data: dict) -> ValidateResult:
    """One target's validation: its runner's outputs judged here against the reference, as ``validate`` judges.

    ``groups``: per group of ``plan``, the reference's (expected logits, labels)."""
    names = list(plan.protos)
    with np.load(io.BytesIO(base64.b64decode(data["outputs_npz_b64"]))) as npz:
        arrays = {k: npz[k] for k in npz.files}
    rows = []
    labelled = True
    for key, group_names in plan.groups.items():
        expected, y = groups[key]
        labelled = labelled and y is not None
        outputs = {}
        for name in group_names:
            index = names.index(name)
            for provider in job.providers:
                where = data["sessions"][session_key(index, provider)]
                outputs[(name, provider)] = Outputs(
                    arrays[output_key(index, provider)],
                    where["ran_on"],
                    where["providers_used"],
                    placement_from_json(where.get("placement"), model_nodes=len(plan.protos[name].graph.node)),
                    _executed(where),
                )
        rows += judge_outputs(plan, expected, y, outputs)
    return finish_validation(plan, rows, labelled)


def target_facts(
    target: Target, remote: RemoteOptions | None = None, *, on_progress: ProgressCallback | None = None
) -> TargetRun:
    """The device's facts alone (CPU, onnxruntime's providers there), from a runner job that loads no model.

    Raises:
        TargetError: the target cannot be reached or used (its one-line error).
    """
    job = Job("facts")
    [(run, _)] = _on_each([target], remote or RemoteOptions(), job, JobFiles(models={}, files={}), on_progress)
    if not run.ok:
        raise ResnetEdgeError(run.error)
    return run


def _executed(session: dict) -> list[ExecutedNode]:
    """The kernels a device's session ran (older runners send none)."""
    return [ExecutedNode.from_dict(node) for node in session.get("executed", [])]


def _npz(arrays: dict[str, np.ndarray], folder: str) -> Path:
    """The arrays as ``inputs.npz`` in ``folder`` (streamed to the devices from there, not held as bytes)."""
    path = Path(folder) / "inputs.npz"
    np.savez(path, **arrays)
    return path


def _run_with_inputs(
    targets: Sequence[Target],
    remote: RemoteOptions,
    job: Job,
    models: dict[str, Path],
    inputs: dict[str, np.ndarray],
    on_progress: ProgressCallback | None,
) -> list[tuple[TargetRun, dict | None]]:
    """:func:`_on_each` with ``models`` (SHA-256 -> file) and ``inputs`` sent as ``inputs.npz`` from a scratch folder;
    ``inputs`` is emptied once written, so the arrays are not held twice while the targets run."""
    with tempfile.TemporaryDirectory(prefix="resnet-edge-job-") as scratch:
        files = JobFiles(models=models, files={"inputs.npz": _npz(inputs, scratch)})
        inputs.clear()
        return _on_each(targets, remote, job, files, on_progress)


def _on_each(
    targets: Sequence[Target],
    remote: RemoteOptions,
    job: Job,
    files: JobFiles,
    on_progress: ProgressCallback | None,
) -> list[tuple[TargetRun, dict | None]]:
    """Run ``job`` on every target in parallel; per target its record and the runner's result (None if it failed).
    ``on_progress`` is told each target's steps as ``Progress(job.action, message, target=name)``."""

    def progress(target: str, message: str) -> None:
        if on_progress is not None:
            on_progress(Progress(job.action, message, target=target))

    sessions = {
        target.name: target_session(target, remote, on_progress=lambda message, t=target: progress(t.name, message))
        for target in targets
    }

    def one(target: Target) -> tuple[TargetRun, dict | None]:
        started = time.perf_counter()
        session = sessions[target.name]
        try:
            document, transfer = session.run_job(job, files)
        except ResnetEdgeError as exc:
            progress(target.name, "failed")  # the error itself is printed once, by the caller (issue 22)
            return TargetRun(target.name, False, error=str(exc), seconds=time.perf_counter() - started), None
        thermal = document.get("thermal") or {}
        run = TargetRun(
            target=target.name,
            ok=True,
            device=DeviceFacts(**document["facts"]),
            thermal_before=Thermal(**thermal["before"]) if thermal.get("before") else None,
            thermal_after=Thermal(**thermal["after"]) if thermal.get("after") else None,
            threads=document.get("threads"),
            transfer=transfer,
            cache=document.get("cache"),
            warnings=list(document.get("warnings", [])),
            seconds=time.perf_counter() - started,
            emulated=bool(document["facts"].get("emulated")) or target.emulated,
        )
        if run.emulated and job.action == "benchmark" and EMULATION_WARNING not in run.warnings:
            run.warnings.append(EMULATION_WARNING)
        for message in run.warnings:
            warnings.warn(f"{target.name}: {message}", ResnetEdgeWarning, stacklevel=2)
        progress(target.name, f"done in {run.seconds:.1f} s")
        return run, document

    pool = ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="resnet-edge-target")
    futures = [pool.submit(one, target) for target in targets]
    try:
        return [future.result() for future in futures]
    except BaseException:  # Ctrl-C: stop every target's ssh now, let each remove its folder, then stop
        for session in sessions.values():
            session.cancel()
        raise
    finally:
        pool.shutdown(wait=True)


def tune_on_target(
    model_path: Path | str,
    output: Path | str,
    options: TuneOptions,
    target: str,
    remote: RemoteOptions | None = None,
    *,
    on_progress: ProgressCallback | None = None,
) -> TuneResult:
    """:func:`resnet_edge.evaluation.tune.tune_model` on a device: the candidates are built here, for the device's CPU
    and the providers its onnxruntime has, then judged and timed there by the runner (parity is judged here, with
    validate's code); the chosen model is written here.

    Raises:
        TargetError: the device cannot be reached or used.
        and as :func:`resnet_edge.evaluation.tune.tune_model`.
    """
    from resnet_edge.evaluation.tune import Site, tune_model

    [device] = parse_targets([target])
    remote = remote or RemoteOptions()
    run = target_facts(device, remote, on_progress=on_progress)
    facts = run.device
    site = Site(
        target=run.target,
        # The runner opens the OpenVINO runtime behind the same session where the device has it (openvino-runtime).
        providers=tuple(facts.onnxruntime_providers) + ((OPENVINO_RUNTIME,) if facts.openvino else ()),
        architecture=facts.architecture,
        cpu_features=dict(facts.features),
        emulated=run.emulated,
        facts=dataclasses.asdict(facts),
    )

    def measure(
        paths: list[str], reference: Path, thresholds: ValidateOptions, timing: BenchmarkOptions
    ) -> tuple[ValidateResult, FleetBenchmarkResult]:
        where = dict(remote=remote, on_progress=on_progress)
        judged = validate_on_targets(paths, [device], Reference(onnx=reference), thresholds, **where)
        if judged.failed:
            raise ResnetEdgeError(judged.targets[0].error)
        if run.emulated:  # timings under emulation are not the device's: tune does not use them, so none are taken
            return judged.results[device.name], FleetBenchmarkResult([], [], timing, {})
        timed = benchmark_on_targets(paths, [device], timing, **where)
        if timed.failed:
            raise ResnetEdgeError(timed.targets[0].error)
        return judged.results[device.name], timed

    def phase(progress: Progress) -> None:  # tune's own phases (build, judge and time), named as the runner's are
        if on_progress is not None:
            which = f" ({progress.detail})" if progress.detail else ""
            on_progress(Progress(progress.stage, f"tune: {progress.step}{which}", target=run.target))

    return tune_model(model_path, output, options, site=site, measure=measure, on_progress=phase)
