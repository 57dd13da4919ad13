"""report.json as typed data, written and read through one schema: the dataclasses here.

:func:`resnet_edge.pipeline.report.write_report` builds a :class:`ReportDocument` from the run's typed result and
writes it with :func:`~resnet_edge.schema.write_document`; :meth:`ReportDocument.from_json` (or
:meth:`ReportDocument.read` for a stored file) reads that JSON back into the same frozen dataclasses, so the renderers
read attributes, never string keys, and every key of report.json is declared once, as a field (:mod:`resnet_edge.schema`
says how fields map to keys). What report.json holds for machines but no page parses (each stage's full record, the
environment) is a JSON value (a field typed ``object``), written by the stage result's own ``to_jsonable``; the pages
read a typed view of it (``stages.tune``, of the stages' records: a field filled by :func:`~resnet_edge.schema.derive`).

A report.json that lacks what a page needs, or holds it with the wrong type (a truncated file, another tool's JSON,
or one written by a resnet-edge that had no tune stage yet), raises one :class:`ReportFormatError` (an
:class:`~resnet_edge.errors.InputFileError`: one ``error:`` line, exit 1) naming the key:
``stages.quantize.config.target: missing``. Nothing here imports a stage's code.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_edge.errors import InputFileError
from resnet_edge.pipeline.result import REPORT_JSON
from resnet_edge.schema import (
    DocumentFormatError,
    absent_when_none,
    at,
    derive,
    malformed,
    read_as,
    write_document,
)

_HINT = "not a report.json this version of resnet-edge writes; run the pipeline again to get one"


class ReportFormatError(DocumentFormatError):
    """A report.json lacks a key the report's pages need, or holds it with the wrong type; ``detail`` names it."""

    def __init__(self, detail: str, *, source: str = REPORT_JSON) -> None:
        super().__init__(detail, source=source, hint=_HINT)


@dataclass(frozen=True)
class VariantRow:
    """One row of the head table (report.json ``summary``): a variant on a provider, at the first batch size.

    A value not measured is None. ``file`` is None for PyTorch eager, which has no file.
    """

    variant: str
    file: str | None
    provider: str
    ran_on: str | None
    size_bytes: int | None
    top1_agreement: float | None
    accuracy: float | None
    p50_ms: float | None
    p99_ms: float | None
    throughput: float | None
    speedup_vs_onnx_fp32: float | None
    passed: bool | None
    placement: str | None  # where each node ran (the runtime's placement audit), in words
    int8_coverage: str | None  # which convolutions ran as integer kernels, in words

    def to_json(self) -> dict[str, object]:
        """The row as report.json's ``summary`` holds it (these field names, in this order)."""
        return write_document(self)


@dataclass(frozen=True, kw_only=True)
class Latency:
    """The percentiles of one timed row (what the report shows of ``timing.LatencyStats``)."""

    p50_ms: float | None
    p90_ms: float | None = None
    p99_ms: float | None
    throughput: float | None
    cv: float | None = None


@dataclass(frozen=True)
class TimedRow:
    """One benchmark row, here (``stages.benchmark.rows``) or on a device (``stages.devices.rows``)."""

    target: str | None  # the device (``--target``); None: this machine
    model: str  # a model file's name, or ``pytorch``
    provider: str
    ran_on: str | None
    batch: int
    cold_start_ms: float | None
    latency: Latency | None  # None where the row was skipped
    speedup: float | None
    skipped: str | None  # why, where it was


@dataclass(frozen=True)
class ExportSection:
    arch: str
    variant: str


@dataclass(frozen=True)
class QuantizeSection:
    """The INT8 configuration (``config``) and the calibration that made the INT8 model."""

    target: str = field(metadata=at("config.target"))
    format: str = field(metadata=at("config.format"))
    activation_type: str = field(metadata=at("config.activation_type"))
    per_channel: bool = field(metadata=at("config.per_channel"))
    method: str
    calibration_images: int
    calibration_source: str


@dataclass(frozen=True, kw_only=True)
class ValidateSection:
    images: int
    data: str
    calibration_excluded: int = 0  # validation images left out because calibration used them (absent before)
    reference: str


@dataclass(frozen=True)
class BenchmarkSection:
    iterations: int = field(metadata=at("options.iterations"))
    warmup: int = field(metadata=at("options.warmup"))
    batch_sizes: tuple[int, ...] = field(metadata=at("options.batch_sizes"))
    threads: int
    rows: tuple[TimedRow, ...]


@dataclass(frozen=True)
class DeviceFacts:
    """What the report says of a target device (a few of ``device.facts.DeviceFacts``)."""

    board: str | None
    cpu_model: str
    usable_cores: int
    features: dict[str, bool]
    os: str
    onnxruntime: str | None
    onnxruntime_providers: tuple[str, ...]


@dataclass(frozen=True)
class DeviceTarget:
    """One ``--target``: reached (``ok``, with its facts) or not (``error``)."""

    target: str
    ok: bool
    error: str | None
    device: DeviceFacts | None  # None where it was not reached
    threads: int | None
    warnings: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.ok and self.device is None:
            raise malformed("device", "an object", None)


@dataclass(frozen=True)
class DevicesSection:
    """The models benchmarked on the ``--target`` devices."""

    targets: tuple[DeviceTarget, ...]
    rows: tuple[TimedRow, ...]


@dataclass(frozen=True)
class TuneCandidate:
    """One (model variant, provider) pair tune tried, and what it measured."""

    name: str
    provider: str
    ran_on: str | None
    top1_agreement: float | None
    passed: bool
    error: str | None
    p50_ms: dict[int, float]  # batch size -> median latency
    speedup_vs_cpu_fp32: dict[int, float]  # batch size -> FP32-on-CPU p50 / this p50


@dataclass(frozen=True)
class TuneSection:
    batch_sizes: tuple[int, ...]
    candidates: tuple[TuneCandidate, ...]


@dataclass(frozen=True)
class Deployment:
    """What tune chose (report.json ``deployment``): the file, where to run it, how fast, how close to FP32."""

    file: str | None
    candidate: str
    provider: str
    precision: str
    batch: int
    p50_ms: float | None
    speedup_vs_cpu_fp32: float | None
    top1_agreement: float | None
    max_abs_error: float | None
    parity: str  # "pass" or "fail"
    record: str  # the file that lists every candidate
    # Where it was measured (issue 22; absent from reports written before): a --target device or None (here), the
    # device in a line, whether timing counted (not under emulation), and why this candidate.
    target: str | None = None
    measured_on: str | None = None
    timing_used: bool = True
    reason: str | None = None


@dataclass(frozen=True)
class DeploymentEntry:
    """One entry of report.json ``deployments``: a deployment and the candidates it was chosen from."""

    deployment: Deployment
    tune_record: object = field(metadata=at("tune"))  # the tune run's full record, as the stages' ``tune``
    tune: TuneSection | None = field(init=False, metadata=at("tune"))  # what the pages read of it

    def __post_init__(self) -> None:
        derive(self)


@dataclass(frozen=True)
class Stages:
    """The stages the pages describe; None for one that did not run (report.json writes null)."""

    export: ExportSection | None
    quantize: QuantizeSection | None
    validate: ValidateSection | None
    benchmark: BenchmarkSection | None
    devices: DevicesSection | None
    tune: TuneSection | None


@dataclass(frozen=True)
class Environment:
    """The machine the run timed on: its CPU, the package versions, the providers onnxruntime offered (what the pages
    read of ``environment.Environment``'s record)."""

    cpu_model: str = field(metadata=at("cpu.model"))
    logical_cores: int = field(metadata=at("cpu.logical_cores"))
    cpu_features: dict[str, bool] = field(metadata=at("cpu.features"))
    packages: dict[str, str | None]  # package -> version (None: not installed)
    onnxruntime_providers: tuple[str, ...]


@dataclass(frozen=True)
class LatencySeries:
    """The latency plot's series: every timed call (ms) of each variant at ``batch``, keyed ``variant (ran on)``."""

    batch: int  # the first batch size: the one the head table shows too
    series: dict[str, tuple[float, ...]]


@dataclass(frozen=True)
class AccuracyPoint:
    """One variant in the accuracy-against-latency plot."""

    label: str  # ``variant (ran on)``
    p50_ms: float
    value: float | None  # the plot's metric; None where it was not measured


@dataclass(frozen=True)
class AccuracyLatency:
    """The accuracy-against-latency plot's points: one per variant of the head table that was timed."""

    metric: str  # top-1 accuracy (labelled images), else top-1 agreement with the reference
    points: tuple[AccuracyPoint, ...]


@dataclass(frozen=True)
class OpCounts:
    """Nodes by op type before and after simplification (empty without the simplify stage)."""

    before: dict[str, int]
    after: dict[str, int]


@dataclass(frozen=True)
class DeviceSeries:
    """The latency-by-device plot's series (``pipeline --target``): p50 per device and model at ``batch``."""

    batch: int
    p50_ms: dict[str, dict[str, float]]  # device (this machine first) -> model variant -> ms
    emulated_left_out: tuple[str, ...]  # targets under emulation, whose timings are no device's


@dataclass(frozen=True)
class PlotFiles:
    """Each plot's file beside the report; a plot not drawn (nothing to show) has none, and no key."""

    latency: str | None = absent_when_none()
    accuracy_latency: str | None = absent_when_none()
    ops: str | None = absent_when_none()
    devices: str | None = absent_when_none()


@dataclass(frozen=True)
class Plots:
    """report.json ``plots``: the series each plot draws (:mod:`resnet_edge.pipeline.plots` reads them, not the run)
    and the files drawn from them; the field names are the plots' names."""

    latency: LatencySeries
    accuracy_latency: AccuracyLatency
    ops: OpCounts
    devices: DeviceSeries
    files: PlotFiles = field(default_factory=PlotFiles)


@dataclass(frozen=True)
class Seeds:
    """The seeds the run drew with (report.json ``seeds``)."""

    calibration_subset: int  # which images calibrate
    init_weights: int | None  # fresh weights are drawn with the seed only when no checkpoint is given


@dataclass(frozen=True)
class ConfigEntry:
    """One option as run: its resolved value (any JSON value) and where it came from."""

    key: str
    value: object
    source: str


@dataclass(frozen=True)
class RunConfig:
    """Every option as run (report.json ``config``) and where each came from (``config_sources``); the few the facts
    name, typed."""

    values: dict[str, object] = field(metadata=at("config"))
    sources: dict[str, str] = field(metadata=at("config_sources"))
    arch: str | None = field(init=False, metadata=at("config.arch"))
    variant: str | None = field(init=False, metadata=at("config.variant"))
    weights: str = field(init=False, metadata=at("config.weights"))

    def __post_init__(self) -> None:
        derive(self)
        missing = next((key for key in self.values if key not in self.sources), None)
        if missing is not None:
            raise ReportFormatError(f"config_sources.{missing}: missing")

    @property
    def entries(self) -> tuple[ConfigEntry, ...]:
        """Every option, in report.json's order."""
        return tuple(ConfigEntry(key, value, self.sources[key]) for key, value in self.values.items())


@dataclass(frozen=True)
class ReportDocument:
    """A report.json, typed: what report.md, report.html and the terminal's table are rendered from."""

    version: str = field(metadata=at("resnet_edge"))  # the resnet-edge that wrote it
    status: str  # "complete" or "stopped at STAGE"
    error: str | None  # why it stopped
    rows: tuple[VariantRow, ...] = field(metadata=at("summary"))  # the head table
    plots: Plots
    config: RunConfig = field(metadata=at(""))  # from ``config`` and ``config_sources``
    stage_seconds: dict[str, float]  # stage -> how long it ran
    files: dict[str, str] = field(metadata=at("file_sha256"))  # every model file's name -> its SHA-256
    seeds: Seeds
    environment_record: object = field(metadata=at("environment"))  # ``environment.Environment``, as written
    # Each stage's full record (its result's ``to_jsonable``; null: it did not run), for machines.
    stage_records: dict[str, object] = field(metadata=at("stages"))
    deployment: Deployment | None  # what tune chose; None without tune
    # Every deployment with its candidates: one per --target device, else the one chosen here (or none); absent
    # from reports written before issue 22.
    listed: tuple[DeploymentEntry, ...] | None = absent_when_none("deployments")
    environment: Environment = field(init=False, metadata=at("environment"))  # what the pages read of these
    stages: Stages = field(init=False, metadata=at("stages"))

    def __post_init__(self) -> None:
        derive(self)

    @property
    def completed(self) -> bool:
        return self.status == "complete"

    @functools.cached_property
    def deployments(self) -> tuple[DeploymentEntry, ...]:
        """Every deployment (``deployments``), or a report written before it listed them: its one deployment."""
        if self.listed is not None:
            return self.listed
        return (DeploymentEntry(self.deployment, self.stage_records.get("tune")),) if self.deployment else ()

    def to_json(self) -> dict[str, Any]:
        """The document as report.json holds it: what :meth:`from_json` reads back to an equal document."""
        return write_document(self)

    @classmethod
    def from_json(cls, data: object) -> ReportDocument:
        """Read and check a report document (report.json's content, as ``json.load`` gives it).

        Raises:
            ReportFormatError: a key a page needs is missing or holds the wrong type; the message names it.
        """
        return read_as(cls, data, REPORT_JSON, error=ReportFormatError)

    @classmethod
    def read(cls, path: Path | str) -> ReportDocument:
        """Read a stored report.json.

        Raises:
            InputFileError: the file is missing or not JSON; :class:`ReportFormatError` (an InputFileError): not a
                report this version writes.
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputFileError(f"{path}: not found") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise InputFileError(f"{path}: cannot read it as JSON: {exc}") from None
        try:
            return cls.from_json(data)
        except ReportFormatError as exc:
            raise ReportFormatError(exc.detail, source=str(path)) from None
