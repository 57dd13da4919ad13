"""report.json as typed data: what the report's pages and the terminal's table read, parsed and checked once.

:func:`resnet_edge.pipeline.report.write_report` writes report.json from the run's typed result; a
:class:`ReportDocument` is that JSON read back (:meth:`ReportDocument.from_json`, or :meth:`ReportDocument.read` for
a stored file) into frozen dataclasses, so the renderers read attributes, never string keys. Only what a page shows
is parsed (the head table, the facts, the benchmark, device and tune sections, the files and the configuration);
the rest of report.json (each stage's full record) is for machines and stays as it was written.

A report.json that lacks what a page needs, or holds it with the wrong type (a truncated file, another tool's JSON,
or one written by a resnet-edge that had no tune stage yet), raises one :class:`ReportFormatError` (an
:class:`~resnet_edge.errors.InputFileError`: one ``error:`` line, exit 1) naming the key:
``stages.quantize.config.target: missing``. Nothing here imports a stage's code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from resnet_edge.errors import InputFileError
from resnet_edge.pipeline.result import REPORT_JSON

T = TypeVar("T")
_NUMBER = (int, float)


class _Object:
    """One JSON object of report.json being read, and where it sits (``stages.quantize``), for the error."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise _malformed(where, "an object", data)
        self._data = data
        self.where = where

    def names(self) -> list[str]:
        """The object's keys, in the file's order."""
        return list(self._data)

    def _at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _get(self, key: str, kinds: tuple[type, ...], what: str, *, optional: bool, missing_ok: bool) -> object:
        if key not in self._data:
            if missing_ok:
                return None
            raise ReportFormatError(f"{self._at(key)}: missing")
        value = self._data[key]
        if value is None and optional:
            return None
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise _malformed(self._at(key), what, value)
        return value

    def text(self, key: str, *, optional: bool = False, missing_ok: bool = False) -> str | None:
        return self._get(key, (str,), "a string", optional=optional, missing_ok=missing_ok)

    def integer(self, key: str, *, optional: bool = False, missing_ok: bool = False) -> int | None:
        return self._get(key, (int,), "an integer", optional=optional, missing_ok=missing_ok)

    def number(self, key: str, *, optional: bool = False, missing_ok: bool = False) -> float | None:
        return self._get(key, _NUMBER, "a number", optional=optional, missing_ok=missing_ok)

    def flag(self, key: str, *, optional: bool = False, missing_ok: bool = False) -> bool | None:
        return self._get(key, (bool,), "true or false", optional=optional, missing_ok=missing_ok)

    def value(self, key: str) -> object:
        """Any JSON value (a configuration option's), present but of no fixed type."""
        return self._get(key, (str, int, float, bool, list, dict), "a value", optional=True, missing_ok=False)

    def child(self, key: str, *, optional: bool = False) -> _Object | None:
        data = self._get(key, (dict,), "an object", optional=optional, missing_ok=False)
        return None if data is None else _Object(data, self._at(key))

    def parse(self, key: str, parser: Callable[[_Object], T], *, optional: bool = False) -> T | None:
        """The object under ``key`` read by ``parser`` (a ``from_json``); None where it is null and may be."""
        found = self.child(key, optional=optional)
        return None if found is None else parser(found)

    def items(self, key: str, parser: Callable[[_Object], T]) -> tuple[T, ...]:
        """A list of objects, each read by ``parser``."""
        data = self._get(key, (list,), "a list", optional=False, missing_ok=False)
        return tuple(parser(_Object(item, f"{self._at(key)}[{i}]")) for i, item in enumerate(data))

    def texts(self, key: str) -> tuple[str, ...]:
        data = self._get(key, (list,), "a list", optional=False, missing_ok=False)
        for i, item in enumerate(data):
            if not isinstance(item, str):
                raise _malformed(f"{self._at(key)}[{i}]", "a string", item)
        return tuple(data)

    def integers(self, key: str) -> tuple[int, ...]:
        data = self._get(key, (list,), "a list", optional=False, missing_ok=False)
        for i, item in enumerate(data):
            if not isinstance(item, int) or isinstance(item, bool):
                raise _malformed(f"{self._at(key)}[{i}]", "an integer", item)
        return tuple(data)

    def mapping(self, key: str, kinds: tuple[type, ...], what: str, *, nullable: bool = False) -> dict[str, object]:
        """An object of name -> value, each value of ``kinds`` (or null where ``nullable``), in the file's order."""
        data = self._get(key, (dict,), "an object", optional=False, missing_ok=False)
        for name, item in data.items():
            if (item is None and not nullable) or (
                item is not None and (not isinstance(item, kinds) or (isinstance(item, bool) and bool not in kinds))
            ):
                raise _malformed(f"{self._at(key)}.{name}", what, item)
        return dict(data)

    def by_batch(self, key: str) -> dict[int, float]:
        """An object of batch size (its key, as JSON writes it: ``"8"``) -> a number."""
        values = self.mapping(key, _NUMBER, "a number")
        try:
            return {int(batch): value for batch, value in values.items()}
        except ValueError:
            raise _malformed(self._at(key), "an object keyed by batch size", values) from None


_HINT = "not a report.json this version of resnet-edge writes; run the pipeline again to get one"


class ReportFormatError(InputFileError):
    """A report.json lacks a key the report's pages need, or holds it with the wrong type; ``detail`` names it."""

    def __init__(self, detail: str, *, source: str = REPORT_JSON) -> None:
        super().__init__(f"malformed {source}: {detail} ({_HINT})")
        self.detail = detail


def _malformed(where: str, what: str, value: object) -> ReportFormatError:
    shown = json.dumps(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return ReportFormatError(f"{where or 'the document'}: expected {what}, found {shown}")


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

    @classmethod
    def from_json(cls, data: _Object) -> VariantRow:
        return cls(
            variant=data.text("variant"),
            file=data.text("file", optional=True),
            provider=data.text("provider"),
            ran_on=data.text("ran_on", optional=True),
            size_bytes=data.integer("size_bytes", optional=True),
            top1_agreement=data.number("top1_agreement", optional=True),
            accuracy=data.number("accuracy", optional=True),
            p50_ms=data.number("p50_ms", optional=True),
            p99_ms=data.number("p99_ms", optional=True),
            throughput=data.number("throughput", optional=True),
            speedup_vs_onnx_fp32=data.number("speedup_vs_onnx_fp32", optional=True),
            passed=data.flag("passed", optional=True),
            placement=data.text("placement", optional=True),
            int8_coverage=data.text("int8_coverage", optional=True),
        )

    def to_json(self) -> dict[str, object]:
        """The row as report.json's ``summary`` holds it (these field names, in this order)."""
        return asdict(self)


@dataclass(frozen=True)
class Latency:
    """The percentiles of one timed row (what the report shows of ``timing.LatencyStats``)."""

    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    throughput: float | None
    cv: float | None

    @classmethod
    def from_json(cls, data: _Object) -> Latency:
        return cls(
            p50_ms=data.number("p50_ms", optional=True),
            p90_ms=data.number("p90_ms", optional=True, missing_ok=True),
            p99_ms=data.number("p99_ms", optional=True),
            throughput=data.number("throughput", optional=True),
            cv=data.number("cv", optional=True, missing_ok=True),
        )


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

    @classmethod
    def from_json(cls, data: _Object) -> TimedRow:
        return cls(
            target=data.text("target", optional=True),
            model=data.text("model"),
            provider=data.text("provider"),
            ran_on=data.text("ran_on", optional=True),
            batch=data.integer("batch"),
            cold_start_ms=data.number("cold_start_ms", optional=True),
            latency=data.parse("latency", Latency.from_json, optional=True),
            speedup=data.number("speedup", optional=True),
            skipped=data.text("skipped", optional=True),
        )


@dataclass(frozen=True)
class ExportSection:
    arch: str
    variant: str

    @classmethod
    def from_json(cls, data: _Object) -> ExportSection:
        return cls(arch=data.text("arch"), variant=data.text("variant"))


@dataclass(frozen=True)
class QuantizeSection:
    """The INT8 configuration (``config``) and the calibration that made the INT8 model."""

    target: str
    format: str
    activation_type: str
    per_channel: bool
    method: str
    calibration_images: int
    calibration_source: str

    @classmethod
    def from_json(cls, data: _Object) -> QuantizeSection:
        config = data.child("config")
        return cls(
            target=config.text("target"),
            format=config.text("format"),
            activation_type=config.text("activation_type"),
            per_channel=config.flag("per_channel"),
            method=data.text("method"),
            calibration_images=data.integer("calibration_images"),
            calibration_source=data.text("calibration_source"),
        )


@dataclass(frozen=True)
class ValidateSection:
    images: int
    data: str
    calibration_excluded: int  # validation images left out because calibration used them
    reference: str

    @classmethod
    def from_json(cls, data: _Object) -> ValidateSection:
        return cls(
            images=data.integer("images"),
            data=data.text("data"),
            calibration_excluded=data.integer("calibration_excluded", optional=True, missing_ok=True) or 0,
            reference=data.text("reference"),
        )


@dataclass(frozen=True)
class BenchmarkSection:
    iterations: int
    warmup: int
    batch_sizes: tuple[int, ...]
    threads: int
    rows: tuple[TimedRow, ...]

    @classmethod
    def from_json(cls, data: _Object) -> BenchmarkSection:
        options = data.child("options")
        return cls(
            iterations=options.integer("iterations"),
            warmup=options.integer("warmup"),
            batch_sizes=options.integers("batch_sizes"),
            threads=data.integer("threads"),
            rows=data.items("rows", TimedRow.from_json),
        )


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

    @classmethod
    def from_json(cls, data: _Object) -> DeviceFacts:
        return cls(
            board=data.text("board", optional=True),
            cpu_model=data.text("cpu_model"),
            usable_cores=data.integer("usable_cores"),
            features=data.mapping("features", (bool,), "true or false"),
            os=data.text("os"),
            onnxruntime=data.text("onnxruntime", optional=True),
            onnxruntime_providers=data.texts("onnxruntime_providers"),
        )


@dataclass(frozen=True)
class DeviceTarget:
    """One ``--target``: reached (``ok``, with its facts) or not (``error``)."""

    target: str
    ok: bool
    error: str | None
    device: DeviceFacts | None
    threads: int | None
    warnings: tuple[str, ...]

    @classmethod
    def from_json(cls, data: _Object) -> DeviceTarget:
        ok = data.flag("ok")
        return cls(
            target=data.text("target"),
            ok=ok,
            error=data.text("error", optional=True),
            device=data.parse("device", DeviceFacts.from_json, optional=not ok),
            threads=data.integer("threads", optional=True),
            warnings=data.texts("warnings"),
        )


@dataclass(frozen=True)
class DevicesSection:
    """The models benchmarked on the ``--target`` devices."""

    targets: tuple[DeviceTarget, ...]
    rows: tuple[TimedRow, ...]

    @classmethod
    def from_json(cls, data: _Object) -> DevicesSection:
        return cls(targets=data.items("targets", DeviceTarget.from_json), rows=data.items("rows", TimedRow.from_json))


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

    @classmethod
    def from_json(cls, data: _Object) -> TuneCandidate:
        return cls(
            name=data.text("name"),
            provider=data.text("provider"),
            ran_on=data.text("ran_on", optional=True),
            top1_agreement=data.number("top1_agreement", optional=True),
            passed=data.flag("passed"),
            error=data.text("error", optional=True),
            p50_ms=data.by_batch("p50_ms"),
            speedup_vs_cpu_fp32=data.by_batch("speedup_vs_cpu_fp32"),
        )


@dataclass(frozen=True)
class TuneSection:
    batch_sizes: tuple[int, ...]
    candidates: tuple[TuneCandidate, ...]

    @classmethod
    def from_json(cls, data: _Object) -> TuneSection:
        return cls(
            batch_sizes=data.integers("batch_sizes"), candidates=data.items("candidates", TuneCandidate.from_json)
        )


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

    @classmethod
    def from_json(cls, data: _Object) -> Deployment:
        return cls(
            file=data.text("file", optional=True),
            candidate=data.text("candidate"),
            provider=data.text("provider"),
            precision=data.text("precision"),
            batch=data.integer("batch"),
            p50_ms=data.number("p50_ms", optional=True),
            speedup_vs_cpu_fp32=data.number("speedup_vs_cpu_fp32", optional=True),
            top1_agreement=data.number("top1_agreement", optional=True),
            max_abs_error=data.number("max_abs_error", optional=True),
            parity=data.text("parity"),
            record=data.text("record"),
            target=data.text("target", optional=True, missing_ok=True),
            measured_on=data.text("measured_on", optional=True, missing_ok=True),
            timing_used=data.flag("timing_used", missing_ok=True) is not False,
            reason=data.text("reason", optional=True, missing_ok=True),
        )


def _deployment_entry(data: _Object) -> tuple[Deployment, TuneSection | None]:
    return data.parse("deployment", Deployment.from_json), data.parse("tune", TuneSection.from_json, optional=True)


@dataclass(frozen=True)
class Stages:
    """The stages the pages describe; None for one that did not run (report.json writes null)."""

    export: ExportSection | None
    quantize: QuantizeSection | None
    validate: ValidateSection | None
    benchmark: BenchmarkSection | None
    devices: DevicesSection | None
    tune: TuneSection | None

    @classmethod
    def from_json(cls, data: _Object) -> Stages:
        return cls(
            export=data.parse("export", ExportSection.from_json, optional=True),
            quantize=data.parse("quantize", QuantizeSection.from_json, optional=True),
            validate=data.parse("validate", ValidateSection.from_json, optional=True),
            benchmark=data.parse("benchmark", BenchmarkSection.from_json, optional=True),
            devices=data.parse("devices", DevicesSection.from_json, optional=True),
            tune=data.parse("tune", TuneSection.from_json, optional=True),
        )


@dataclass(frozen=True)
class Environment:
    """The machine the run timed on: its CPU, the package versions, the providers onnxruntime offered."""

    cpu_model: str
    logical_cores: int
    cpu_features: dict[str, bool]
    packages: dict[str, str | None]  # package -> version (None: not installed)
    onnxruntime_providers: tuple[str, ...]

    @classmethod
    def from_json(cls, data: _Object) -> Environment:
        cpu = data.child("cpu")
        return cls(
            cpu_model=cpu.text("model"),
            logical_cores=cpu.integer("logical_cores"),
            cpu_features=cpu.mapping("features", (bool,), "true or false"),
            packages=data.mapping("packages", (str,), "a version", nullable=True),
            onnxruntime_providers=data.texts("onnxruntime_providers"),
        )


@dataclass(frozen=True)
class PlotFiles:
    """The batch size the head table and the latency plot show, and each plot's file (None: not drawn)."""

    batch: int
    latency: str | None
    accuracy_latency: str | None
    ops: str | None
    devices: str | None

    @classmethod
    def from_json(cls, data: _Object) -> PlotFiles:
        files = data.mapping("files", (str,), "a file name")
        return cls(
            batch=data.child("latency").integer("batch"),
            latency=files.get("latency"),
            accuracy_latency=files.get("accuracy_latency"),
            ops=files.get("ops"),
            devices=files.get("devices"),
        )


@dataclass(frozen=True)
class ConfigEntry:
    """One option as run: its resolved value (any JSON value) and where it came from."""

    key: str
    value: object
    source: str


@dataclass(frozen=True)
class RunConfig:
    """Every option as run, in report.json's order; the few the facts name, typed."""

    entries: tuple[ConfigEntry, ...]
    arch: str | None
    variant: str | None
    weights: str

    @classmethod
    def from_json(cls, values: _Object, sources: _Object) -> RunConfig:
        entries = tuple(ConfigEntry(key, values.value(key), sources.text(key)) for key in values.names())
        return cls(
            entries=entries,
            arch=values.text("arch", optional=True),
            variant=values.text("variant", optional=True),
            weights=values.text("weights"),
        )


@dataclass(frozen=True)
class FileDigest:
    name: str
    sha256: str


@dataclass(frozen=True)
class ReportDocument:
    """A report.json, typed: what report.md, report.html and the terminal's table are rendered from."""

    version: str  # the resnet-edge that wrote it
    status: str  # "complete" or "stopped at STAGE"
    error: str | None  # why it stopped
    rows: tuple[VariantRow, ...]  # the head table
    plots: PlotFiles
    config: RunConfig
    files: tuple[FileDigest, ...]  # every model file's SHA-256, by name
    environment: Environment
    stages: Stages
    deployment: Deployment | None  # what tune chose; None without tune
    # Every deployment with its candidates: one per --target device, else the one chosen here (or none).
    deployments: tuple[tuple[Deployment, TuneSection | None], ...] = ()

    @property
    def completed(self) -> bool:
        return self.status == "complete"

    @classmethod
    def from_json(cls, data: object) -> ReportDocument:
        """Read and check a report document (report.json's content, as ``json.load`` gives it).

        Raises:
            ReportFormatError: a key a page needs is missing or holds the wrong type; the message names it.
        """
        root = _Object(data, "")  # read in report.json's order, so the first key amiss is the one named
        fields = dict(
            version=root.text("resnet_edge"),
            status=root.text("status"),
            error=root.text("error", optional=True),
            rows=root.items("summary", VariantRow.from_json),
            plots=root.parse("plots", PlotFiles.from_json),
            config=RunConfig.from_json(root.child("config"), root.child("config_sources")),
            files=tuple(FileDigest(n, d) for n, d in root.mapping("file_sha256", (str,), "a SHA-256").items()),
            environment=root.parse("environment", Environment.from_json),
            stages=root.parse("stages", Stages.from_json),
            deployment=root.parse("deployment", Deployment.from_json, optional=True),
        )
        listed = root._get("deployments", (list,), "a list", optional=True, missing_ok=True)  # added in issue 22
        if listed is not None:
            deployments = root.items("deployments", _deployment_entry)
        else:  # a report written before: its one deployment
            deployments = ((fields["deployment"], fields["stages"].tune),) if fields["deployment"] else ()
        return cls(**fields, deployments=deployments)

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
