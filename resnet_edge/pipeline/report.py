"""The pipeline's report: ``report.json`` for machines, ``report.md`` and ``report.html`` for people, and plots.

Two steps. :func:`write_report` builds a typed :class:`~resnet_edge.pipeline.document.ReportDocument` from the run's
typed result (:class:`PipelineResult`: each stage's dataclass, file sizes as the stages recorded them) and writes it
as report.json through the document's own schema (:func:`~resnet_edge.pipeline.document.write_document`); then it
reads report.json back and renders that with :func:`render_markdown` and :func:`render_html`, so a stored
``report.json`` renders again to the same pages. Everything a person reads is derived from the one summary built
here (:func:`summary_rows` and :func:`plot_series`), which is also what ``report.json`` holds under ``summary`` and
``plots``: the tables and the plots cannot disagree with the JSON. The report imports the result and the document,
never the run (``pipeline.run`` calls :func:`write_report`).
"""

from __future__ import annotations

import dataclasses
import html
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from resnet_edge import __version__
from resnet_edge import formatting as fmt
from resnet_edge.artifacts import sha256_file, write_json_atomic, write_text_atomic
from resnet_edge.jsonable import to_jsonable
from resnet_edge.pipeline.config import FROM_ARGUMENT, FROM_CHECKPOINT, FROM_DEFAULT, option_key
from resnet_edge.pipeline.document import (
    AccuracyLatency,
    AccuracyPoint,
    Deployment,
    DeploymentEntry,
    DeviceSeries,
    Latency,
    LatencySeries,
    OpCounts,
    Plots,
    ReportDocument,
    RunConfig,
    Seeds,
    TimedRow,
    TuneSection,
    VariantRow,
    write_document,
)
from resnet_edge.pipeline.plots import write_plots
from resnet_edge.pipeline.result import (
    FILES,
    REPORT_HTML,
    REPORT_JSON,
    REPORT_MARKDOWN,
    STAGES,
    PipelineResult,
)

if TYPE_CHECKING:
    from resnet_edge.evaluation.tune import Candidate, TuneResult

VARIANTS = {
    FILES["export"]: "ONNX FP32",
    FILES["simplify"]: "ONNX simplified",
    FILES["quantize"]: "ONNX INT8",
    "pytorch": "PyTorch eager",
}


def summary_rows(result: PipelineResult) -> list[VariantRow]:
    """The report's head table (report.json ``summary``): one row per variant (PyTorch eager, then each model file)
    and provider, at the first batch size; a value not measured is None."""
    rows = []
    bench, valid = result.benchmark, result.validate
    first_batch = result.config.batch_sizes[0]
    providers = list(dict.fromkeys(r.provider for r in valid.rows)) if valid else list(result.config.providers)
    # The tuned model is one of these files (or their like) chosen again: its numbers are in the tune section.
    files = [f for stage, f in FILES.items() if stage != "tune" and result.outdir and (f in result.artifacts)]
    for provider in providers:
        if bench and any(r.model == "pytorch" and r.batch == first_batch for r in bench.rows) and provider == "cpu":
            rows.append(_row("pytorch", provider, result, first_batch))
        for name in files:
            rows.append(_row(name, provider, result, first_batch))
    return rows


def plot_series(result: PipelineResult, rows: list[VariantRow]) -> Plots:
    """The series each plot shows (report.json ``plots``, no file drawn yet), from the run and its head table."""
    bench, valid = result.benchmark, result.validate
    first_batch = result.config.batch_sizes[0]
    labelled = bool(valid and valid.labelled)
    latency = {
        f"{VARIANTS[r.model]} ({r.ran_on})": tuple(r.latency.samples_ms)
        for r in (bench.rows if bench else [])
        if r.latency and r.batch == first_batch
    }
    points = tuple(
        AccuracyPoint(
            label=f"{r.variant} ({r.ran_on})", p50_ms=r.p50_ms, value=r.accuracy if labelled else r.top1_agreement
        )
        for r in rows
        if r.p50_ms is not None
    )
    simplify = result.simplify
    return Plots(
        latency=LatencySeries(batch=first_batch, series=latency),
        accuracy_latency=AccuracyLatency(
            metric="top-1 accuracy" if labelled else "top-1 agreement with the reference", points=points
        ),
        ops=OpCounts(before=simplify.ops_before if simplify else {}, after=simplify.ops_after if simplify else {}),
        devices=device_series(result, first_batch),
    )


HOST_ROW = "this machine"  # the benchmark stage's row beside the devices' ("how much slower is my Pi")


def device_series(result: PipelineResult, batch: int) -> DeviceSeries:
    """p50 per (target, model) at the first batch size, for the latency-by-device plot (``--target`` runs), with this
    machine's benchmark stage first (its first provider; issue 22) unless ``local`` is one of the targets.
    Emulated targets are left out (their timings are not the emulated CPU's) and listed as such."""
    devices = getattr(result, "devices", None)
    emulated = [t.target for t in devices.targets if getattr(t, "emulated", False)] if devices else []
    series: dict[str, dict[str, float]] = {}
    bench = getattr(result, "benchmark", None)
    if devices and devices.rows and bench and bench.rows and "local" not in {t.target for t in devices.targets}:
        provider = bench.rows[0].provider
        for r in bench.rows:
            if r.latency and r.batch == batch and r.provider == provider and r.model in VARIANTS and r.path is not None:
                series.setdefault(HOST_ROW, {})[VARIANTS[r.model]] = r.latency.p50_ms
    for r in devices.rows if devices else []:
        if r.latency and r.batch == batch and r.target not in emulated:
            series.setdefault(r.target, {})[VARIANTS.get(r.model, r.model)] = r.latency.p50_ms
    return DeviceSeries(batch=batch, p50_ms=series, emulated_left_out=tuple(emulated))


def _row(name: str, provider: str, result: PipelineResult, batch: int) -> VariantRow:
    bench_row = next(
        (
            r
            for r in (result.benchmark.rows if result.benchmark else [])
            if r.model == name and r.batch == batch and (r.provider == provider or name == "pytorch")
        ),
        None,
    )
    valid_row = next(
        (r for r in (result.validate.rows if result.validate else []) if r.model == name and r.provider == provider),
        None,
    )
    if name == "pytorch":
        any_row = result.validate.rows[0] if result.validate else None
        accuracy = any_row.reference_accuracy.top1 if any_row and any_row.reference_accuracy else None
        agreement, size, ran_on = 1.0, None, "cpu"
    else:
        accuracy = valid_row.accuracy.top1 if valid_row and valid_row.accuracy else None
        agreement = valid_row.parity.top1_agreement if valid_row else None
        size = result.file_sizes().get(name)  # as the stage that wrote the file recorded it
        ran_on = valid_row.ran_on if valid_row else (bench_row.ran_on if bench_row else None)
    latency = bench_row.latency if bench_row else None
    return VariantRow(
        variant=VARIANTS[name],
        file=None if name == "pytorch" else name,
        provider=provider,
        ran_on=ran_on,
        size_bytes=size,
        top1_agreement=agreement,
        accuracy=accuracy,
        p50_ms=latency.p50_ms if latency else None,
        p99_ms=latency.p99_ms if latency else None,
        throughput=latency.throughput if latency else None,
        speedup_vs_onnx_fp32=bench_row.speedup if bench_row else None,
        passed=valid_row.passed if valid_row else None,
        placement=valid_row.placement.describe() if valid_row and valid_row.placement else None,
        int8_coverage=valid_row.coverage.describe() if valid_row and valid_row.coverage else None,
    )


def write_report(result: PipelineResult, folder: Path) -> None:
    """Write report.json, report.md, report.html and the PNG plots into ``folder`` (each atomically).

    The pages are rendered from report.json as written (read back as a :class:`ReportDocument`), exactly as a
    stored report.json renders.

    Args:
        result: the run to report; its model files (``result.artifacts``) are in ``folder``, which the run later
            publishes as ``result.outdir`` (paths in the report are made relative to that).
    """
    rows = summary_rows(result)
    series = plot_series(result, rows)
    plots = dataclasses.replace(series, files=write_plots(series, folder))
    report = _relative_paths(write_document(_document(result, folder, rows, plots)), result, folder)
    write_json_atomic(folder / REPORT_JSON, report)
    document = ReportDocument.from_json(report)  # as written: plain JSON already, read as a stored one is
    write_text_atomic(folder / REPORT_MARKDOWN, render_markdown(document))
    write_text_atomic(folder / REPORT_HTML, render_html(document))


def _document(result: PipelineResult, folder: Path, rows: list[VariantRow], plots: Plots) -> ReportDocument:
    """The run as a report document, paths still in ``folder`` (the staging folder during a run)."""
    # Hashes are read from ``folder``, where the model files are now.
    models = set(FILES.values())
    hashes = {name: sha256_file(folder / name) for name in sorted(result.artifacts) if name in models}
    values, sources = describe_config(result)
    # One per device with --target (each chosen there); the first is ``deployment`` and ``stages.tune`` too.
    listed = tuple(
        DeploymentEntry(_deployment(result, folder, t), _tune_stage(result, folder, t)) for t in result.tunes
    )
    first = listed[0] if listed and result.tunes[0] is result.tune else None
    records = {name: None if name == "tune" else to_jsonable(getattr(result, name)) for name in STAGES}
    records["tune"] = first.tune_record if first else _tune_stage(result, folder, result.tune)
    seed = result.config.seed
    return ReportDocument(
        version=__version__,
        status="complete" if result.completed else f"stopped at {result.failed_stage}",
        error=result.error,
        rows=tuple(rows),
        plots=plots,
        config=RunConfig(values=values, sources=sources),
        stage_seconds=result.stage_seconds,
        files=hashes,
        seeds=Seeds(calibration_subset=seed, init_weights=seed if result.config.resolved_weights() is None else None),
        environment_record=to_jsonable(result.benchmark.environment) if result.benchmark else _environment(),
        stage_records=records,
        deployment=first.deployment if first else _deployment(result, folder, result.tune),
        listed=listed,
    )


def describe_config(result: PipelineResult) -> tuple[dict[str, object], dict[str, str]]:
    """The configuration as run: every option's resolved value, and where each came from.

    Returns:
        option name -> the value used (what a default turned into: the arch and input size the checkpoint records,
        the calibration and validation images, the thread count, the INT8 configuration the target chose), and
        option name -> its origin: ``default``, ``flag``, ``config file NAME``, ``argument`` (library call),
        ``checkpoint`` (recorded in the weights) or ``run`` (decided while running, e.g. detected).
    """
    config = result.config
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    defaults = type(config)().options()
    for name, value in config.options().items():
        key = option_key(name)
        values[key] = list(value) if isinstance(value, tuple) else value
        sources[key] = config.origins.get(name) or (FROM_DEFAULT if value == defaults[name] else FROM_ARGUMENT)

    def resolved(key: str, value: object, source: str) -> None:
        if values[key] is None and value is not None:
            values[key], sources[key] = value, source

    recorded = FROM_CHECKPOINT if config.resolved_weights() is not None else FROM_DEFAULT
    resolved("weights", config.resolved_weights() or f"random init (seed {config.seed})", FROM_DEFAULT)
    if result.export:
        e = result.export
        resolved("arch", e.arch, recorded)
        resolved("variant", e.variant, recorded)
        resolved("num_classes", e.num_classes, recorded)
        resolved("input_size", e.input_shape[-1], recorded)
    if result.quantize:
        q = result.quantize
        resolved("calib", q.calibration_source, FROM_DEFAULT)
        resolved("per_channel", q.config.per_channel, f"target {q.config.target.value}")
        resolved("format", q.config.format.value, f"target {q.config.target.value}")
        if config.target == "auto":
            values["target"], sources["target"] = q.config.target.value, f"{sources['target']} (auto: this CPU)"
    if result.validate:
        resolved("data", result.validate.data, FROM_DEFAULT)
    if result.benchmark:
        resolved("threads", result.benchmark.threads, f"{FROM_DEFAULT} (all cores)")
    return values, sources


def _tune_stage(result: PipelineResult, folder: Path, tuned: TuneResult | None) -> dict | None:
    """A tune run as JSON; a candidate's file only where the run kept it (tune builds the other candidates in a
    temporary folder and keeps only the chosen one)."""
    if tuned is None:
        return None

    def kept(candidate: Candidate) -> Candidate:  # path None: written as null, the file is gone
        return dataclasses.replace(candidate, path=_kept(candidate.path, result, folder))

    return to_jsonable(
        dataclasses.replace(tuned, chosen=kept(tuned.chosen), candidates=[kept(c) for c in tuned.candidates])
    )


def _kept(path: str | None, result: PipelineResult, folder: Path) -> str | None:
    """``path`` where it names one of the run's artifacts in ``folder``, else None (a file already deleted)."""
    return path if path and Path(path).parent == folder and Path(path).name in result.artifacts else None


def _deployment(result: PipelineResult, folder: Path, tuned: TuneResult | None) -> Deployment | None:
    """What tune chose, in a few fields: the file, where to run it, how much faster, how close to FP32, and the
    device it was measured on (None: this machine)."""
    if tuned is None:
        return None
    chosen, batch = tuned.chosen, max(tuned.batch_sizes)
    return Deployment(
        file=_kept(chosen.path, result, folder),
        candidate=chosen.name,
        provider=chosen.provider,
        precision=chosen.precision,
        batch=batch,
        p50_ms=chosen.p50_ms.get(batch),
        speedup_vs_cpu_fp32=chosen.speedup_vs_cpu_fp32.get(batch),
        top1_agreement=chosen.top1_agreement,
        max_abs_error=chosen.max_abs_error,
        parity="pass" if chosen.passed else "fail",
        record=tuned.record,
        target=tuned.target,
        measured_on=_measured_on(tuned.device),
        timing_used=tuned.timing_used,
        reason=tuned.reason,
    )


def _measured_on(facts: dict | None) -> str | None:
    """A device's facts in a line: host name, CPU, cores, onnxruntime (None: measured on this machine)."""
    if not facts:
        return None
    return (
        f"{facts.get('hostname')}, {facts.get('cpu_model')} ({facts.get('architecture')},"
        f" {facts.get('usable_cores')} cores), onnxruntime {facts.get('onnxruntime')}"
        f"{' under emulation' if facts.get('emulated') else ''}"
    )


def _relative_paths(report: dict, result: PipelineResult, folder: Path) -> dict:
    """Paths as a reader of the published report can follow them: relative to the report's folder.

    The stages ran in a staging folder that is renamed to OUTDIR, so its paths become bare file names; the
    temporary checkpoint of fresh weights (deleted after the run) becomes what it was; a user's own files
    (``--calib images/``) are given relative to OUTDIR.
    """
    replacements = [(f"{folder}{os.sep}", ""), (str(folder), ".")]
    if result.random_weights is not None:
        replacements.insert(0, (str(result.random_weights), f"random init (seed {result.config.seed})"))

    def fix(value: object) -> object:
        if isinstance(value, str):
            for old, new in replacements:
                value = value.replace(old, new)
            return value
        if isinstance(value, dict):
            return {fix(k): fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    report = fix(report)
    for key in ("weights", "calib", "data"):
        value = report["config"].get(key)
        if isinstance(value, str) and not value.startswith("builtin:") and Path(value).exists():
            report["config"][key] = os.path.relpath(Path(value).resolve(), result.outdir)
    return report


def _environment() -> dict:
    from resnet_edge.environment import collect_environment

    return to_jsonable(collect_environment())


_FORMATS = {
    "pct": fmt.percent,
    "ms": fmt.ms,
    "x": fmt.ratio,
    "size": fmt.size,
    "ips": fmt.throughput,
    "cv": fmt.cv,
}


def format_cell(value: object, kind: str) -> str:
    if value is None:
        return fmt.MISSING
    return _FORMATS[kind](value) if kind in _FORMATS else str(value)


_COLUMNS: list[tuple[str, Callable[[VariantRow], str]]] = [
    ("Variant", lambda r: r.variant),
    ("File", lambda r: format_cell(r.file, "")),
    ("Size", lambda r: format_cell(r.size_bytes, "size")),
    ("Top-1 agreement", lambda r: format_cell(r.top1_agreement, "pct")),
    ("Accuracy", lambda r: format_cell(r.accuracy, "pct")),
    ("p50 ms", lambda r: format_cell(r.p50_ms, "ms")),
    ("p99 ms", lambda r: format_cell(r.p99_ms, "ms")),
    ("img/s", lambda r: format_cell(r.throughput, "ips")),
    (fmt.SPEEDUP_COLUMN, lambda r: format_cell(r.speedup_vs_onnx_fp32, "x")),
    ("Ran on", lambda r: format_cell(r.ran_on, "")),
]


def _table_cells(report: ReportDocument) -> tuple[list[str], list[list[str]]]:
    headers = [title for title, _ in _COLUMNS]
    rows = [[cell(row) for _, cell in _COLUMNS] for row in report.rows]
    return headers, rows


def _facts(report: ReportDocument) -> list[tuple[str, str]]:
    env, config, stages = report.environment, report.config, report.stages
    export = stages.export
    facts = [
        ("Status", report.status + (f": {report.error}" if report.error else "")),
        (
            "Model",
            f"{export.arch if export else config.arch}"
            f" ({export.variant if export else config.variant or 'residual'}),"
            f" weights {config.weights}",
        ),
        (
            "CPU",
            f"{env.cpu_model}, {env.logical_cores} cores; " + ", ".join(k for k, v in env.cpu_features.items() if v),
        ),
        ("Versions", ", ".join(f"{k} {v}" for k, v in env.packages.items() if v)),
        ("Providers available", ", ".join(env.onnxruntime_providers)),
    ]
    if stages.quantize:
        q = stages.quantize
        facts.append(
            (
                "INT8",
                f"{q.target} {q.format}, activations {q.activation_type}, weights"
                f" {'per-channel' if q.per_channel else 'per-tensor'};"
                f" {q.method} calibration on {q.calibration_images} images from {q.calibration_source}",
            )
        )
    if stages.validate:
        v = stages.validate
        left_out = v.calibration_excluded
        facts.append(
            (
                "Validation",
                f"{v.images} images from {v.data}"
                + (f" ({left_out} calibration images left out)" if left_out else "")
                + f" against {v.reference}",
            )
        )
    if stages.benchmark:
        b = stages.benchmark
        facts.append(
            (
                "Timing",
                f"{b.iterations} round-robin rounds after {b.warmup}"
                f" warm-up, {fmt.count(b.threads, 'thread')},"
                f" batch sizes {', '.join(map(str, b.batch_sizes))}"
                f" (the table above: batch {report.plots.latency.batch})",
            )
        )
    return facts


def _latency(row: TimedRow, value: Callable[[Latency], float | None], kind: str) -> str:
    return format_cell(value(row.latency) if row.latency else None, kind)


# The columns of a timed row (here or on a device) as the report shows it: title and the cell of a row.
_ROW_COLUMNS: dict[str, tuple[str, Callable[[TimedRow], str]]] = {
    "target": ("Target", lambda r: r.target or ""),
    "model": ("Model", lambda r: VARIANTS.get(r.model, r.model)),
    "provider": ("Provider", lambda r: r.provider),
    "ran_on": ("Ran on", lambda r: format_cell(r.ran_on, "")),
    "batch": ("Batch", lambda r: str(r.batch)),
    "cold": ("Cold start ms", lambda r: format_cell(r.cold_start_ms, "ms")),
    "p50": ("p50 ms", lambda r: _latency(r, lambda lat: lat.p50_ms, "ms")),
    "p90": ("p90 ms", lambda r: _latency(r, lambda lat: lat.p90_ms, "ms")),
    "p99": ("p99 ms", lambda r: _latency(r, lambda lat: lat.p99_ms, "ms")),
    "ips": ("img/s", lambda r: _latency(r, lambda lat: lat.throughput, "ips")),
    "cv": ("CV", lambda r: _latency(r, lambda lat: lat.cv, "cv")),
    "speedup": (fmt.SPEEDUP_COLUMN, lambda r: format_cell(r.speedup, "x") if r.latency else r.skipped or "–"),
}


def _row_cells(rows: tuple[TimedRow, ...], columns: list[str]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of timed rows (here or from devices) for the named columns of _ROW_COLUMNS."""
    headers = [_ROW_COLUMNS[c][0] for c in columns]
    return headers, [[_ROW_COLUMNS[c][1](r) for c in columns] for r in rows]


def _benchmark_cells(report: ReportDocument) -> tuple[list[str], list[list[str]]]:
    """Every benchmark row: all batch sizes and providers, cold start and the percentiles."""
    bench = report.stages.benchmark
    columns = ["model", "provider", "ran_on", "batch", "cold", "p50", "p90", "p99", "ips", "cv", "speedup"]
    return _row_cells(bench.rows if bench else (), columns)


def _audits(report: ReportDocument) -> list[tuple[str, list[tuple[VariantRow, str]]]]:
    """Where each node ran and which convolutions ran as INT8 kernels: (section title, [(row, text)]), non-empty."""
    sections = [
        ("Where each node ran", [(r, r.placement) for r in report.rows if r.placement]),
        ("INT8 kernels", [(r, r.int8_coverage) for r in report.rows if r.int8_coverage]),
    ]
    return [(title, items) for title, items in sections if items]


def render_markdown(report: ReportDocument) -> str:
    """``report.md``: the Markdown for a report document (report.json, read by :meth:`ReportDocument.from_json`)."""
    headers, rows = _table_cells(report)
    lines = ["# resnet-edge report", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    note = _speedup_note(report)
    lines += ["", *([note, ""] if note else []), *(f"- **{k}:** {v}" for k, v in _facts(report)), ""]
    for title, items in _audits(report):
        lines += [f"## {title}", ""]
        lines += [f"- {r.variant} on {r.provider}: {text}" for r, text in items] + [""]
    for title, file in _plot_titles(report):
        lines += [f"![{title}]({file})", ""]
    bench_headers, bench_rows = _benchmark_cells(report)
    if bench_rows:
        lines += ["## Benchmark", "", "| " + " | ".join(bench_headers) + " |", "|" + "---|" * len(bench_headers)]
        lines += ["| " + " | ".join(r) + " |" for r in bench_rows] + [""]
    device_headers, device_rows, device_facts = _device_cells(report)
    if device_headers:
        lines += ["## Devices", "", *(f"- **{k}:** {v}" for k, v in device_facts), ""]
        lines += ["| " + " | ".join(device_headers) + " |", "|" + "---|" * len(device_headers)]
        lines += ["| " + " | ".join(r) + " |" for r in device_rows] + [""]
        if report.plots.files.devices:
            lines += [f"![Latency by device]({report.plots.files.devices})", ""]
    for entry in report.deployments:
        chosen = entry.deployment
        tune_sentence, tune_headers, tune_rows = _tune_cells(entry.tune, chosen)
        if not tune_sentence:
            continue
        lines += [f"## {_deployment_title(chosen)}", "", *(f"{line}" for line in _deployment_notes(chosen))]
        lines += [f"Chosen: {tune_sentence}", "", *([f"Why: {chosen.reason}.", ""] if chosen.reason else [])]
        lines += ["| " + " | ".join(tune_headers) + " |", "|" + "---|" * len(tune_headers)]
        lines += ["| " + " | ".join(r) + " |" for r in tune_rows] + [""]
    lines += [
        "## Files",
        "",
        *(f"- `{name}` sha256 `{sha256}`" for name, sha256 in report.files.items()),
        "",
        "## Configuration",
        "",
        "| Option | Value | From |",
        "|---|---|---|",
        *(f"| `{key}` | {value} | {source} |" for key, value, source in _config_rows(report)),
        "",
    ]
    return "\n".join(lines)


def _config_rows(report: ReportDocument) -> list[tuple[str, str, str]]:
    """Option, resolved value as text, and where it came from."""

    def text(value: object) -> str:
        if value is None:
            return fmt.MISSING
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, list):
            return ", ".join(map(str, value))
        return str(value)

    rows = [(e.key, text(e.value), e.source) for e in report.config.entries]
    return [(k, "all" if k == "limit" and v == fmt.MISSING else v, src) for k, v, src in rows]


def _speedup_note(report: ReportDocument) -> str | None:
    """What the Speed-up column means, when the table has one to show."""
    if any(row.speedup_vs_onnx_fp32 is not None for row in report.rows):
        return f"{fmt.SPEEDUP_COLUMN}: {fmt.SPEEDUP_MEANING}."
    return None


def _device_cells(report: ReportDocument) -> tuple[list[str], list[list[str]], list[tuple[str, str]]]:
    """The per-device section (``pipeline --target``): each target's facts, and every row it timed."""
    devices = report.stages.devices
    if not devices:
        return [], [], []
    facts = []
    for t in devices.targets:
        if not t.ok or t.device is None:
            facts.append((t.target, f"failed: {t.error}"))
            continue
        d = t.device
        features = ", ".join(k for k, v in d.features.items() if v) or "no INT8 features of note"
        board = f"{d.board}; " if d.board else ""
        facts.append(
            (
                t.target,
                f"{board}{d.cpu_model}, {d.usable_cores} cores ({features}); {d.os}; onnxruntime"
                f" {d.onnxruntime} ({', '.join(d.onnxruntime_providers)}); {t.threads} threads"
                + "".join(f"; warning: {w}" for w in t.warnings),
            )
        )
    columns = ["target", "model", "provider", "ran_on", "batch", "cold", "p50", "p99", "ips", "speedup"]
    headers, rows = _row_cells(devices.rows, columns)
    return headers, rows, facts


def _deployment_title(chosen: Deployment) -> str:
    """``Deployment (tune)``, and the device it was chosen on (issue 22: it was chosen here, and did not say)."""
    return "Deployment (tune)" + (f" on {chosen.target}" if chosen.target else "")


def _deployment_notes(chosen: Deployment) -> list[str]:
    """Where the candidates were measured and, under emulation, that timing was not used; each a paragraph."""
    notes = []
    if chosen.target:
        notes += [f"Measured on {chosen.target}: {chosen.measured_on or 'the device'}.", ""]
    if not chosen.timing_used:
        notes += [
            "Timing under emulation was not used: the choice rests on parity and integer coverage, which are real"
            " there; the timings of an emulated CPU are no device's.",
            "",
        ]
    return notes


def _tune_cells(tune: TuneSection | None, chosen: Deployment | None) -> tuple[str | None, list[str], list[list[str]]]:
    """The chosen deployment in one sentence, and the table of every candidate tune tried (none without tune)."""
    if not tune or not chosen:
        return None, [], []
    batches = tune.batch_sizes
    sentence = (
        f"{chosen.candidate} on {chosen.provider} ({chosen.file}): {fmt.ratio(chosen.speedup_vs_cpu_fp32)}"
        f" CPU FP32 at batch {chosen.batch}, top-1 agreement with FP32 {fmt.percent(chosen.top1_agreement)},"
        f" parity {chosen.parity}; run it with --providers {chosen.provider} (every candidate:"
        f" {chosen.record})"
    )
    headers = ["Candidate", "Provider", "Ran on", "Top-1 agreement", "Parity"]
    headers += [f"p50 ms b{b}" for b in batches] + [f"× CPU FP32 b{b}" for b in batches] + ["Chosen"]
    rows = [
        [
            c.name,
            c.provider,
            c.ran_on or fmt.MISSING,
            fmt.percent(c.top1_agreement),
            "pass" if c.passed else ("error" if c.error else "FAIL"),
            *(fmt.ms(c.p50_ms.get(b)) for b in batches),
            *(fmt.ratio(c.speedup_vs_cpu_fp32.get(b)) for b in batches),
            fmt.CHOSEN_MARK if (c.name, c.provider) == (chosen.candidate, chosen.provider) else "",
        ]
        for c in tune.candidates
    ]
    return sentence, headers, rows


def _plot_titles(report: ReportDocument) -> list[tuple[str, str]]:
    """The plots shown together under the head table: (title, file), those drawn."""
    plots = report.plots.files
    titles = [
        ("Latency distribution", plots.latency),
        ("Accuracy against latency", plots.accuracy_latency),
        ("Nodes by op type before and after simplification", plots.ops),
    ]
    return [(title, file) for title, file in titles if file]


# The page's content width: every table fits a 1280-px window beside a scroll bar (issue 22: the Deployment
# table's last column hid behind a horizontal scroll bar at 1100 px). Headers wrap between words, and the first two
# columns (names, files, targets) wrap where they must; the numbers never do.
PAGE_WIDTH_PX = 1200
HTML_WINDOW_PX = 1280

# The page's style: one column of tables and figures; at narrow widths the head table becomes one card per variant.
_CSS = f"""body {{ font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: {PAGE_WIDTH_PX}px; color: #1d2430; padding: 0 1rem; }}
h1 {{ font-size: 1.6rem; margin-bottom: .2rem; }} h2 {{ font-size: 1.15rem; margin-top: 2rem; }}
.status {{ display: inline-block; padding: .1rem .6rem; border-radius: 1rem; font-weight: 600; }}
.ok {{ background: #dff5e3; color: #16632a; }} .bad {{ background: #fde2e1; color: #8a1c17; }}
.scroll {{ overflow-x: auto; margin: 1rem 0; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ padding: .4rem .45rem; border-bottom: 1px solid #e3e7ee; text-align: right; white-space: nowrap; }}
th {{ background: #f3f5f9; font-weight: 600; white-space: normal; vertical-align: bottom; }}
td:nth-child(1), td:nth-child(2) {{ white-space: normal; overflow-wrap: anywhere; }}
td:nth-child(1), td:nth-child(2), th:nth-child(1), th:nth-child(2), td:last-child, th:last-child {{ text-align: left; }}
table.text td, table.text th {{ text-align: left; white-space: normal; }}
table.hashes td:last-child {{ font-family: ui-monospace, monospace; font-size: .8rem; word-break: break-all; }}
dl {{ display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1rem; }} dt {{ font-weight: 600; }}
dd {{ margin: 0; overflow-wrap: anywhere; }}
.figures {{ display: grid; grid-template-columns: 1fr; gap: 1rem; max-width: 900px; }}
figure {{ margin: 0; border: 1px solid #e3e7ee; border-radius: 6px; padding: .5rem; background: #fff; }}
img {{ width: 100%; height: auto; }} figcaption {{ text-align: center; color: #5b6472; font-size: .9rem; }}
.note {{ color: #5b6472; font-size: .9rem; }}
@media (max-width: 760px) {{
  body {{ margin: 1rem auto; font-size: 14px; }}
  /* The head table becomes one card per variant, each value beside its column name. */
  table.stack thead {{ display: none; }}
  table.stack tr {{ display: block; border: 1px solid #e3e7ee; border-radius: 6px; margin-bottom: .6rem;
                   padding: .3rem .6rem; }}
  table.stack td {{ display: flex; justify-content: space-between; border: 0; padding: .12rem 0; }}
  table.stack td::before {{ content: attr(data-label); font-weight: 600; color: #5b6472; padding-right: 1rem; }}
  table.stack td:first-child {{ font-weight: 600; }}
  dl {{ grid-template-columns: 1fr; gap: 0 0; }} dd {{ margin-bottom: .5rem; }}
}}
"""


def _html_table(headers: list[str], rows: list[list[str]], css: str = "") -> str:
    """An HTML table of text cells (escaped); each cell carries its column's name for the narrow-width cards."""
    # Wide tables scroll sideways inside their box at narrow widths; the page itself never does.
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td data-label="{esc(h)}">{esc(c)}</td>' for h, c in zip(headers, r, strict=True)) + "</tr>"
        for r in rows
    )
    inner = f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
    opening = f'<table class="{css}">' if css else "<table>"
    return f'<div class="scroll">{opening}{inner}</table></div>'


def _html_devices(report: ReportDocument) -> str:
    """The Devices section (``pipeline --target``): each target's facts, every row it timed, the plot; or nothing."""
    headers, rows, facts = _device_cells(report)
    if not headers:
        return ""
    esc, plot = html.escape, report.plots.files.devices
    return (
        "<h2>Devices</h2><dl>"
        + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts)
        + "</dl>"
        + _html_table(headers, rows)
        + (f'<figure><img src="{esc(plot)}" alt="Latency by device"><figcaption>Latency by device</figcaption>'
           "</figure>" if plot else "")
    )  # fmt: skip


def _html_deployments(report: ReportDocument) -> str:
    """One Deployment section per deployment tune chose: where, why, and every candidate; or nothing."""
    esc, sections = html.escape, ""
    for entry in report.deployments:
        chosen = entry.deployment
        tune_sentence, tune_headers, tune_rows = _tune_cells(entry.tune, chosen)
        if tune_sentence:
            notes = "".join(f"<p>{esc(note)}</p>" for note in _deployment_notes(chosen) if note)
            why = f"<p>Why: {esc(chosen.reason)}.</p>" if chosen.reason else ""
            sections += (
                f"<h2>{esc(_deployment_title(chosen))}</h2>{notes}<p>Chosen: {esc(tune_sentence)}</p>{why}"
                f"{_html_table(tune_headers, tune_rows)}"
            )
    return sections


def render_html(report: ReportDocument) -> str:
    """``report.html``: the page for a report document (report.json, read by :meth:`ReportDocument.from_json`)."""
    headers, rows = _table_cells(report)
    esc = html.escape

    table = _html_table
    facts = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in _facts(report))
    figures = "".join(
        f'<figure><img src="{esc(f)}" alt="{esc(t)}"><figcaption>{esc(t)}</figcaption></figure>'
        for t, f in _plot_titles(report)
    )
    hashes = table(["File", "SHA-256"], [list(digest) for digest in report.files.items()], "text hashes")
    bench_headers, bench_rows = _benchmark_cells(report)
    note = _speedup_note(report)
    audit = "".join(
        f"<h2>{title}</h2><ul>" + "".join(f"<li>{esc(r.variant)} on {esc(r.provider)}: {esc(text)}</li>"
        for r, text in items) + "</ul>"
        for title, items in _audits(report)
    )  # fmt: skip
    status_class = "ok" if report.completed else "bad"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>resnet-edge report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
{_CSS}</style></head>
<body>
<h1>resnet-edge report</h1>
<p><span class="status {status_class}">{esc(report.status)}</span>
 &nbsp;resnet-edge {esc(report.version)}</p>
{table(headers, rows, "stack")}
{f'<p class="note">{esc(note)}</p>' if note else ""}
<dl>{facts}</dl>
{f'<h2>Plots</h2><div class="figures">{figures}</div>' if figures else ""}
{f"<h2>Benchmark</h2>{table(bench_headers, bench_rows)}" if bench_rows else ""}
{_html_devices(report)}
{_html_deployments(report)}
{audit}
<h2>Files</h2>{hashes}
<h2>Configuration</h2>{table(["Option", "Value", "From"], [list(r) for r in _config_rows(report)], "text")}
</body></html>
"""
