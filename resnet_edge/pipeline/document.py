"""report.json as typed data, written and read through one schema: the dataclasses here.

:func:`resnet_edge.pipeline.report.write_report` builds a :class:`ReportDocument` from the run's typed result and
writes it with :func:`write_document`; :meth:`ReportDocument.from_json` (or :meth:`ReportDocument.read` for a stored
file) reads that JSON back into the same frozen dataclasses, so the renderers read attributes, never string keys,
and every key of report.json is declared once, as a field. What report.json holds for machines but no page parses
(each stage's full record, the environment) is a JSON value (a field typed ``object``), written by the stage
result's own ``to_jsonable``; the pages read a typed view of it.

Each key is declared once, as a field: one reader (:func:`read_document`) reads any of these dataclasses from its
field types (``str``, ``int``, ``float``, ``bool``, ``object``, ``X | None``, ``tuple[X, ...]``, ``dict[str, X]``,
``dict[int, X]``, a nested dataclass), and one writer (:func:`write_document`) writes it back. A field is read from
and written to the key of its name, or where :func:`_at` says (``config.target``: under another object); a field
with a default may be missing (a report written before it existed), one typed ``X | None`` may be null, one made by
:func:`_absent_when_none` is left out when None. A field not passed to the constructor (``init=False``) is a view: a
typed reading of part of what another field holds whole (``stages.tune``, of the stages' records), filled by
:func:`_derive` in ``__post_init__``, never written. A class checks what spans its fields in ``__post_init__``,
raising a ReportFormatError that names the key from the class's own object.

A report.json that lacks what a page needs, or holds it with the wrong type (a truncated file, another tool's JSON,
or one written by a resnet-edge that had no tune stage yet), raises one :class:`ReportFormatError` (an
:class:`~resnet_edge.errors.InputFileError`: one ``error:`` line, exit 1) naming the key:
``stages.quantize.config.target: missing``. Nothing here imports a stage's code.
"""

from __future__ import annotations

import functools
import json
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from resnet_edge.errors import InputFileError
from resnet_edge.jsonable import to_jsonable
from resnet_edge.pipeline.result import REPORT_JSON

T = TypeVar("T")

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


_PATH = "report_json_path"  # field metadata: where the field's value sits, when not under the field's own name
_OMITTED = "report_json_omitted_when_none"  # field metadata: left out of the JSON when None


def _at(path: str) -> dict[str, str]:
    """The metadata of a field read from ``path`` in its object (``config.target``: key ``target`` of the object
    under ``config``; ``""``: the object itself, for a dataclass that gathers keys of its parent)."""
    return {_PATH: path}


def _absent_when_none(path: str | None = None) -> Any:
    """A field that is None where its key is missing, and written only when it is not None (a key reports written
    before it existed lack, or a plot that was not drawn)."""
    return field(default=None, metadata={_OMITTED: True, **(_at(path) if path else {})})


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


# What a JSON value of each Python type is called in an error; bool is no integer and no number here.
_SCALARS: dict[object, tuple[tuple[type, ...], str]] = {
    str: ((str,), "a string"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    bool: ((bool,), "true or false"),
}


def _read(kind: Any, value: object, where: str) -> Any:
    """``value`` (found at ``where``) read as the type ``kind``; a ReportFormatError where it is not one."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (kind,) = (a for a in args if a is not type(None))  # only ``X | None`` is declared here
        origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is object:  # any JSON value (a configuration option's)
        return value
    if is_dataclass(kind):
        return read_document(kind, value, where)
    if origin is tuple:  # tuple[X, ...]: a JSON list
        if not isinstance(value, list):
            raise _malformed(where, "a list", value)
        return tuple(_read(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _malformed(where, "an object", value)
        if args[0] is int:  # JSON writes an integer key as a string: every such object here is keyed by batch size
            try:
                value = {int(key): item for key, item in value.items()}
            except ValueError:
                raise _malformed(where, "an object keyed by batch size", value) from None
        return {key: _read(args[1], item, _join(where, str(key))) for key, item in value.items()}
    kinds, what = _SCALARS[kind]
    if not isinstance(value, kinds) or (isinstance(value, bool) and kind is not bool):
        raise _malformed(where, what, value)
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _read_field(cls: type, f: Field, data: dict, where: str, values: dict[str, Any]) -> None:
    """Put the field ``f`` of ``cls``, read from the JSON object ``data`` (found at ``where``), into ``values``;
    nothing where it is missing and has a default."""
    *parents, key = f.metadata.get(_PATH, f.name).split(".")
    found, place = data, where
    for parent in parents:
        if parent not in found:
            raise ReportFormatError(f"{_join(place, parent)}: missing")
        found, place = found[parent], _join(place, parent)
        if not isinstance(found, dict):
            raise _malformed(place, "an object", found)
    if key == "":  # the object itself
        values[f.name] = _read(_hints(cls)[f.name], found, place)
    elif key in found:
        values[f.name] = _read(_hints(cls)[f.name], found[key], _join(place, key))
    elif f.default is MISSING and f.default_factory is MISSING:
        raise ReportFormatError(f"{_join(place, key)}: missing")


def read_document(cls: type[T], data: object, where: str = "") -> T:
    """The dataclass ``cls`` read from the JSON object ``data`` (found at ``where``), field by field in declared order
    (report.json's, so that the first key amiss is the one named); its views are read by its ``__post_init__``.

    Raises:
        ReportFormatError: a key is missing (and its field has no default) or holds the wrong type; names the key.
    """
    if not isinstance(data, dict):
        raise _malformed(where, "an object", data)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.init:
            _read_field(cls, f, data, where, values)
    try:
        return cls(**values)
    except ReportFormatError as exc:  # a class's own check across its fields names a key relative to the object
        raise ReportFormatError(_join(where, exc.detail)) from None


def _derive(document: object) -> None:
    """Fill the views of ``document`` (its fields not passed to the constructor), each read from its path in the JSON
    the document writes, and checked as any field is; for a class's ``__post_init__``.

    Raises:
        ReportFormatError: what a view reads is missing or of the wrong type; names the key from the document.
    """
    data, values = write_document(document), {}
    for f in fields(document):
        if not f.init:
            _read_field(type(document), f, data, "", values)
    for name, value in values.items():
        object.__setattr__(document, name, value)  # a frozen dataclass's own fields, set once while it is made


def _write(value: object) -> object:
    """A field's value as JSON: a document written by :func:`write_document`, a tuple as a list, a key as text."""
    if is_dataclass(value) and not isinstance(value, type):
        return write_document(value)
    if isinstance(value, dict):
        return {str(key): _write(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_write(item) for item in value]
    return to_jsonable(value)  # a scalar: a NumPy number as a Python one, NaN as null


def write_document(document: object) -> dict[str, Any]:
    """One of these dataclasses as the JSON object :func:`read_document` reads it from: each field at its key (or
    where :func:`_at` puts it), in declared order; views left out (the field they read holds the value whole), and a
    field made by :func:`_absent_when_none` left out when None."""
    data: dict[str, Any] = {}
    for f in fields(document):
        if not f.init:
            continue
        value = getattr(document, f.name)
        if value is None and f.metadata.get(_OMITTED):
            continue
        *parents, key = f.metadata.get(_PATH, f.name).split(".")
        place = data
        for parent in parents:
            place = place.setdefault(parent, {})
        if key == "":  # a dataclass that gathers keys of this object
            place.update(_write(value))
        else:
            place[key] = _write(value)
    return data


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

    target: str = field(metadata=_at("config.target"))
    format: str = field(metadata=_at("config.format"))
    activation_type: str = field(metadata=_at("config.activation_type"))
    per_channel: bool = field(metadata=_at("config.per_channel"))
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
    iterations: int = field(metadata=_at("options.iterations"))
    warmup: int = field(metadata=_at("options.warmup"))
    batch_sizes: tuple[int, ...] = field(metadata=_at("options.batch_sizes"))
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
            raise _malformed("device", "an object", None)


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
    tune_record: object = field(metadata=_at("tune"))  # the tune run's full record, as the stages' ``tune``
    tune: TuneSection | None = field(init=False, metadata=_at("tune"))  # what the pages read of it

    def __post_init__(self) -> None:
        _derive(self)


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

    cpu_model: str = field(metadata=_at("cpu.model"))
    logical_cores: int = field(metadata=_at("cpu.logical_cores"))
    cpu_features: dict[str, bool] = field(metadata=_at("cpu.features"))
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

    latency: str | None = _absent_when_none()
    accuracy_latency: str | None = _absent_when_none()
    ops: str | None = _absent_when_none()
    devices: str | None = _absent_when_none()


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

    values: dict[str, object] = field(metadata=_at("config"))
    sources: dict[str, str] = field(metadata=_at("config_sources"))
    arch: str | None = field(init=False, metadata=_at("config.arch"))
    variant: str | None = field(init=False, metadata=_at("config.variant"))
    weights: str = field(init=False, metadata=_at("config.weights"))

    def __post_init__(self) -> None:
        _derive(self)
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

    version: str = field(metadata=_at("resnet_edge"))  # the resnet-edge that wrote it
    status: str  # "complete" or "stopped at STAGE"
    error: str | None  # why it stopped
    rows: tuple[VariantRow, ...] = field(metadata=_at("summary"))  # the head table
    plots: Plots
    config: RunConfig = field(metadata=_at(""))  # from ``config`` and ``config_sources``
    stage_seconds: dict[str, float]  # stage -> how long it ran
    files: dict[str, str] = field(metadata=_at("file_sha256"))  # every model file's name -> its SHA-256
    seeds: Seeds
    environment_record: object = field(metadata=_at("environment"))  # ``environment.Environment``, as written
    # Each stage's full record (its result's ``to_jsonable``; null: it did not run), for machines.
    stage_records: dict[str, object] = field(metadata=_at("stages"))
    deployment: Deployment | None  # what tune chose; None without tune
    # Every deployment with its candidates: one per --target device, else the one chosen here (or none); absent
    # from reports written before issue 22.
    listed: tuple[DeploymentEntry, ...] | None = _absent_when_none("deployments")
    environment: Environment = field(init=False, metadata=_at("environment"))  # what the pages read of these
    stages: Stages = field(init=False, metadata=_at("stages"))

    def __post_init__(self) -> None:
        _derive(self)

    @property
    def completed(self) -> bool:
        return self.status == "complete"

    @property
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
        return read_document(cls, data)

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
