"""A pipeline run's options: the stages' own options, with the pipeline's defaults declared once, and TOML files.

A :class:`PipelineConfig` is made of the stages' options (``config.export``, ``config.quantize``,
``config.benchmark``, ...: the pipeline's defaults for each, ``PIPELINE_*``, with the run's values on top, so each
stage checks them as it checks its own) and the run's own options (``weights``, ``seed``, ``targets``, ...). Every
option also has one flat name, which is its CLI flag, its config file key and its key in the report's "configuration
as run" (``batch_sizes`` is ``--batch`` / ``batch``). :data:`OPTIONS` is the one table that maps each flat name to
where the option is kept (``iterations`` -> ``benchmark.iterations``; ``providers`` -> ``validate.providers`` and
``benchmark.providers``); ``config.iterations`` reads it, ``PipelineConfig(iterations=9)`` sets it, and
:meth:`PipelineConfig.options` lists them all.

A config file gives the options at its top level (flat keys, as before), under ``[pipeline]``, or in tables named
after the stages that use them (``[export]``, ``[quantize]``, ``[benchmark]``, ...)::

    arch = "resnet20"        # a flat key still works
    [benchmark]
    batch = "1,4"
    iterations = 20
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from resnet_edge.artifacts import read_user_text
from resnet_edge.conversion.options import DEFAULT_OPSET, ExportOptions, SimplifyOptions
from resnet_edge.device.targets import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_PYTHON, RemoteOptions
from resnet_edge.errors import InputFileError, OptionError
from resnet_edge.evaluation.options import BenchmarkOptions, ValidateOptions
from resnet_edge.models.registry import list_models
from resnet_edge.onnx.providers import Provider, parse_providers, split_provider_list
from resnet_edge.quantization.configs import Int8Target, Method
from resnet_edge.quantization.options import MIN_OPSET, QuantizeOptions

DEFAULT_WEIGHTS = "builtin:digits-resnet20"
# Where a configuration value came from, as the report records it.
FROM_DEFAULT, FROM_FLAG, FROM_ARGUMENT, FROM_CHECKPOINT = "default", "flag", "argument", "checkpoint"

# The pipeline's defaults where they differ from the stages' own, declared once: it exports with every BatchNorm
# kept (the simplify stage folds them and proves it) at the default opset, quantizes without timing (the benchmark
# stage times every model), and times fewer rounds at two batch sizes (a run's benchmark is one look among several
# stages, not a measurement campaign).
PIPELINE_EXPORT = ExportOptions(opset=DEFAULT_OPSET, fold_bn=False)
PIPELINE_SIMPLIFY = SimplifyOptions()
PIPELINE_QUANTIZE = QuantizeOptions(measure_speed=False)
PIPELINE_VALIDATE = ValidateOptions(providers=(Provider.CPU,))
PIPELINE_BENCHMARK = BenchmarkOptions(providers=(Provider.CPU,), batch_sizes=(1, 8), iterations=50, warmup=5)
# The stages whose options a config holds, each under the stage's name, and their defaults.
STAGES: dict[str, object] = {
    "export": PIPELINE_EXPORT,
    "simplify": PIPELINE_SIMPLIFY,
    "quantize": PIPELINE_QUANTIZE,
    "validate": PIPELINE_VALIDATE,
    "benchmark": PIPELINE_BENCHMARK,
}


@dataclass(frozen=True)
class RunOptions:
    """The run's own options, kept beside the stages' (``config.run``): which weights, the seed, which stages run,
    and the devices to run on too. Each is also read and given by its flat name (``config.seed``)."""

    weights: str | None = None  # with neither this nor --arch, DEFAULT_WEIGHTS
    seed: int = 0
    int8: bool = True
    torch_eager: bool = True
    tune: bool = True  # choose the deployment by measurement (evaluation.tune)
    targets: tuple[str, ...] = ()  # devices to benchmark on too: ssh://..., local
    remote_python: str | None = None  # DEFAULT_PYTHON on the device when None
    ssh_config: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S  # seconds ssh waits for a device to answer

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        RemoteOptions(connect_timeout_s=self.connect_timeout)  # its range check, before any stage runs (the
        # interpreter and the ssh config are checked with the targets, so that "no --target given" is said first)

    def remote(self) -> RemoteOptions:
        """How the devices are reached, as the device layer takes it."""
        return RemoteOptions(
            python=self.remote_python or DEFAULT_PYTHON,
            ssh_config=Path(self.ssh_config) if self.ssh_config else None,
            connect_timeout_s=self.connect_timeout,
        )


PIPELINE_RUN = RunOptions()
# Where a config keeps each part, and its defaults: the stages' options, then the run's own.
STAGES["run"] = PIPELINE_RUN


@dataclass(frozen=True)
class Option:
    """One option of a run, by its flat name: the CLI flag, the config file key, the report's "configuration as run".

    Its type and its default are those of the field it is kept in (the first of ``fields``), so they are declared
    once, in the options class; the flag and the config file's check are made from them.

    Attributes:
        tables: the ``[stage]`` tables of a config file it may be given in.
        fields: where it is kept, ``part.field`` (``benchmark.iterations``, ``run.seed``); the first is where it is
            read from, and a value given is set in every one.
        help: the flag's help, without its default (which is added from the declaration); empty: the field's own.
        flag: the flag's declaration when it is not ``--name`` (``--int8/--no-int8``, ``--batch``).
        default: the default as the help says it, where the value does not say it alone (None: "all cores").
        multiple: a repeatable flag (``--target A --target B``), rather than one comma-separated value.
        choices: the values a text option takes, where no enum declares them (the registered architectures).
    """

    tables: tuple[str, ...]
    fields: tuple[str, ...]
    help: str = ""
    flag: str | None = None
    default: str | None = None
    multiple: bool = False
    choices: tuple[str, ...] | None = None


def _option(table: str | tuple[str, ...], *fields: str, **details: object) -> Option:
    return Option((table,) if isinstance(table, str) else table, fields, **details)  # type: ignore[arg-type]


_FROM_CHECKPOINT = "the checkpoint's, else {}"
# The one table of a run's options, in the order the report and --help list them: each flat name, where it is kept,
# and its flag's help. The run's own options (weights, seed, int8, ...) sit with the stage that uses them first.
OPTIONS: dict[str, Option] = {
    "arch": _option(
        "export",
        "export.arch",
        help="Architecture.",
        default="the built-in digits resnet20",
        choices=tuple(list_models()),  # registered names, not an enum
    ),
    "weights": _option(
        "export",
        "run.weights",
        help="Checkpoint (.pt, .pth, .safetensors) or builtin:NAME.",
        default="builtin:digits-resnet20 unless --arch; with --arch alone: random weights drawn with --seed",
    ),
    "variant": _option(
        "export",
        "export.variant",
        help="Block design: residual, plain (skips off) or preact.",
        default=_FROM_CHECKPOINT.format("residual"),
    ),
    "num_classes": _option(
        "export", "export.num_classes", help="Output classes.", default=_FROM_CHECKPOINT.format("1000 / 10")
    ),
    "input_size": _option(
        "export", "export.input_size", help="Input side in pixels.", default=_FROM_CHECKPOINT.format("224 / 32")
    ),
    "opset": _option("export", "export.opset", help="ONNX opset to export."),
    "calib": _option(
        "quantize",
        "quantize.calib",
        help="Calibration images.",
        default="the model's built-in calibration split / photos",
    ),
    # The held-out images judge INT8 in the quantize stage too: with --data, all of --calib is calibrated on.
    "data": _option(
        "validate",
        "validate.data",
        "benchmark.data",
        "quantize.eval_data",
        help="Validation images; any image also used for calibration is left out.",
        default="the model's built-in test split / photos",
    ),
    "label_map": _option(("validate", "quantize"), "validate.label_map", "quantize.label_map"),  # its help: LABEL_MAP
    "providers": _option(
        ("validate", "benchmark"),
        "validate.providers",
        "benchmark.providers",
        help="Comma-separated: cpu, cuda, tensorrt, openvino, ep:NAME; options as name[k=v;k=v].",
    ),
    "strict_ep": _option(
        ("validate", "benchmark"),
        "validate.strict_ep",
        "benchmark.strict_ep",
        help="Fail instead of falling back to cpu.",
    ),
    "int8": _option("quantize", "run.int8", help="Quantize to INT8.", flag="--int8/--no-int8"),
    "method": _option("quantize", "quantize.method", help="How calibration turns activations into ranges."),
    "target": _option(
        "quantize",
        "quantize.target",
        help="Hardware to choose the INT8 configuration for; auto reads this CPU.",
        flag="--int8-target",
    ),
    "per_channel": _option(
        "quantize",
        "quantize.per_channel",
        help="INT8 weight granularity.",
        flag="--per-channel/--per-tensor",
        default="the target's",
    ),
    "format": _option("quantize", "quantize.format", help="INT8 graph format.", default="the target's"),
    "limit": _option("quantize", "quantize.limit", help="Calibration images to draw (with --seed).", default="all"),
    "seed": _option(
        ("export", "quantize"),
        "run.seed",
        "quantize.seed",
        help="Seed for the calibration subset and for random weights.",
    ),
    "allow_unfolded_bn": _option(
        "simplify", "simplify.allow_unfolded_bn", help="Keep BatchNorms with no conv to fold into (preact)."
    ),
    "allow_accuracy_drop": _option(
        "quantize",
        "quantize.allow_accuracy_drop",
        help="Keep an INT8 model that misses validate's INT8 bar on held-out images (random weights, say).",
    ),
    "batch_sizes": _option("benchmark", "benchmark.batch_sizes", help="Benchmark batch sizes, comma-separated."),
    # the pipeline never times for a duration
    "iterations": _option("benchmark", "benchmark.iterations", help="Benchmark rounds."),
    "warmup": _option("benchmark", "benchmark.warmup", help="Untimed benchmark rounds first."),
    "threads": _option("benchmark", "benchmark.threads", help="Intra-op threads.", default="all cores"),
    "torch_eager": _option(
        "benchmark",
        "run.torch_eager",
        help="Also time the PyTorch model (the slowest phase; --no-torch-eager skips it).",
        flag="--torch-eager/--no-torch-eager",
    ),
    "tune": _option(
        "tune",
        "run.tune",
        help="Choose the deployment by measurement (as resnet-edge tune) and write {tune}.",
        flag="--tune/--no-tune",
    ),
    "targets": _option(
        "benchmark",
        "run.targets",
        help="Also benchmark and report on this device, and choose the deployment there (tune runs on it, one"
        " model.tuned file per device), repeatable: ssh://[user@]host[:port], local or 'exec:COMMAND PREFIX' (see"
        " benchmark --help; an emulated one is reported, never ranked, and its deployment is chosen by parity and"
        " integer coverage). (A value that names an INT8 target, as in earlier releases, is taken as --int8-target.)",
        flag="--target",
        multiple=True,
    ),
    "remote_python": _option(
        "benchmark", "run.remote_python", help="Interpreter on the target devices.", default=DEFAULT_PYTHON
    ),
    "ssh_config": _option(
        "benchmark",
        "run.ssh_config",
        help="ssh config file instead of ~/.ssh/config (ssh -F).",
        default="ssh's own",
    ),
    "connect_timeout": _option("benchmark", "run.connect_timeout", help="Seconds ssh waits for a target device."),
}
# The [stage] tables of a config file and the options each may hold (from OPTIONS).
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    stage: tuple(name for name, option in OPTIONS.items() if stage in option.tables)
    for stage in dict.fromkeys(t for option in OPTIONS.values() for t in option.tables)
}
# Option names (the CLI's, and the config file's keys) that differ from the field they set.
_KEY_TO_FIELD = {"batch": "batch_sizes"}
_FIELD_TO_KEY = {v: k for k, v in _KEY_TO_FIELD.items()}


def _plain(value: object) -> object:
    """A stage option's value as a user writes it: an enum or a provider as its text, a tuple item by item."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return value.value if isinstance(value, (enum.Enum, Provider)) else value


def _for_stage(stage_field: str, value: object) -> object:
    """A user's value as a stage's options take it (providers parsed; enums are made by the options classes)."""
    if stage_field.endswith(".providers"):
        return tuple(parse_providers(list(value)))
    if stage_field.endswith(".label_map") and value is not None:
        return Path(value)
    return value


@dataclass(frozen=True, init=False)
class PipelineConfig:
    """Every option of a pipeline run, as the stages' own options plus the run's; the report records it resolved.

    A config is made of the stages' options (``export``, ``simplify``, ``quantize``, ``validate``, ``benchmark``;
    the ``PIPELINE_*`` defaults) and the run's own options (``run``: :class:`RunOptions`). Each option is also read
    and given by its flat name (``config.iterations``, ``PipelineConfig(iterations=9)``): :data:`OPTIONS` says where
    each is kept.

    With neither ``arch`` nor ``weights``, the built-in trained digits model is used. With ``arch`` alone, the
    weights are fresh, drawn with ``seed``. ``origins`` records where each given value came from, by flat name.

    Raises:
        OptionError: an unknown option, or a bad value (checked here, before any stage runs, so that a bad
            benchmark option does not surface after minutes of work).
    """

    export: ExportOptions
    simplify: SimplifyOptions
    quantize: QuantizeOptions
    validate: ValidateOptions
    benchmark: BenchmarkOptions
    run: RunOptions
    origins: dict[str, str] = field(compare=False, repr=False)

    def __init__(
        self,
        *,
        export: ExportOptions | None = None,
        simplify: SimplifyOptions | None = None,
        quantize: QuantizeOptions | None = None,
        validate: ValidateOptions | None = None,
        benchmark: BenchmarkOptions | None = None,
        run: RunOptions | None = None,
        origins: dict[str, str] | None = None,
        **options: object,
    ) -> None:
        """A config from stage options (default: ``PIPELINE_*``) and, on top, options by flat name.

        Raises:
            OptionError: a name that is no option, or a bad value.
        """
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(f"PipelineConfig has no option(s) {', '.join(unknown)}")
        given = {"export": export, "simplify": simplify, "quantize": quantize, "validate": validate}
        parts = {name: given.get(name) or default for name, default in STAGES.items()}
        parts |= {"benchmark": benchmark or PIPELINE_BENCHMARK, "run": run or PIPELINE_RUN}
        flat = {name: options[name] if name in options else _read(parts, name) for name in OPTIONS}
        _check(flat)
        changes: dict[str, dict[str, object]] = {name: {} for name in parts}
        for name, value in options.items():
            for place in OPTIONS[name].fields:
                part, _, part_field = place.partition(".")
                changes[part][part_field] = _for_stage(place, value)
        for name, part_options in parts.items():
            if changes[name]:
                part_options = dataclasses.replace(part_options, **changes[name])  # each part checks its own
            object.__setattr__(self, name, part_options)
        object.__setattr__(self, "origins", dict(origins or {}))

    def options(self) -> dict[str, object]:
        """Every option by its flat name, in :data:`OPTIONS`' order, as a user writes it (enums as their text)."""
        return {name: _read(vars(self), name) for name in OPTIONS}

    def resolved_weights(self) -> str | None:
        return self.run.weights if self.run.weights or self.export.arch else DEFAULT_WEIGHTS

    def benchmark_options(self, *, torch_reference: str | None) -> BenchmarkOptions:
        """The benchmark stage's options; ``torch_reference`` is the checkpoint PyTorch eager is timed with, if any."""
        return dataclasses.replace(self.benchmark, torch_reference=torch_reference if self.run.torch_eager else None)


def _flat_property(name: str) -> property:
    def get(config: PipelineConfig) -> object:
        return _read(vars(config), name)

    where = OPTIONS[name].fields[0]
    return property(get, doc=f"Option {_FIELD_TO_KEY.get(name, name)}, kept in ``{where}``, as a user writes it.")


# Each option is read by its flat name too (``config.iterations`` is ``config.benchmark.iterations``).
for _name in OPTIONS:
    setattr(PipelineConfig, _name, _flat_property(_name))


def _read(parts: dict[str, object], name: str) -> object:
    """Option ``name``'s value from where :data:`OPTIONS` keeps it first, as a user writes it."""
    part, _, part_field = OPTIONS[name].fields[0].partition(".")
    return _plain(getattr(parts[part], part_field))


def declared(name: str) -> tuple[type, dataclasses.Field]:
    """The options class and the field that declare option ``name`` (its type, its default, its checks)."""
    part, _, part_field = OPTIONS[name].fields[0].partition(".")
    cls = type(STAGES[part])
    return cls, next(f for f in dataclasses.fields(cls) if f.name == part_field)


def declared_type(name: str) -> object:
    """Option ``name``'s type as its field declares it (``Method``, ``int | None``, ``tuple[Provider, ...]``)."""
    cls, declaration = declared(name)
    if not isinstance(declaration.type, str):
        return declaration.type
    return eval(declaration.type, vars(sys.modules[cls.__module__]))  # the annotation, in its class's module


def option_type(name: str) -> object:
    """Option ``name``'s type as a user writes it (in TOML, on the command line): enums, providers and paths are
    text; ``int | None`` stays, ``tuple[Provider, ...]`` is ``tuple[str, ...]``."""

    def as_written(member: object) -> object:
        if typing.get_origin(member) is tuple:
            return tuple[as_written(typing.get_args(member)[0]), ...]  # type: ignore[misc]
        if member is Path or member is Provider or (isinstance(member, type) and issubclass(member, enum.Enum)):
            return str
        return member

    members = tuple(dict.fromkeys(as_written(m) for m in _members(declared_type(name))))
    return members[0] if len(members) == 1 else typing.Union[members]  # noqa: UP007 (built from a tuple)


def pipeline_default(name: str) -> object:
    """Option ``name``'s default in a pipeline run, as a user writes it (``PIPELINE_*``, :class:`RunOptions`)."""
    return _read(STAGES, name)


def _check(flat: dict[str, object]) -> None:
    """The checks that span stages or that come before any stage's own, on the options by flat name (ranges are the
    options classes' own: a stage's options check themselves when the config is made).

    Raises:
        OptionError: a bad provider, target, method, INT8 target, count or remote option.
    """
    parse_providers(list(flat["providers"]))
    if flat["targets"]:
        from resnet_edge.device.fleet import parse_targets
        from resnet_edge.device.targets import check_ssh_options

        check_ssh_options(
            parse_targets(list(flat["targets"])),
            {"remote_python": flat["remote_python"], "ssh_config": flat["ssh_config"]},
        )
    # Before QuantizeOptions' own check, with the pipeline's wording (the option's name, then its choices).
    for name, enum_type in (("method", Method), ("target", Int8Target)):
        value = flat[name]
        if value not in {e.value for e in enum_type}:
            raise OptionError(f"{name} {value!r} is not one of: {', '.join(e.value for e in enum_type)}")
    # Counts no options class bounds (export takes num_classes and input_size from a checkpoint, and checks them
    # there), and iterations' floor in the pipeline's wording, before BenchmarkOptions' own range.
    for name, low in (("iterations", 1), ("num_classes", 1), ("input_size", 1), ("seed", 0)):
        value = flat[name]
        if value is not None and value < low:
            raise OptionError(f"{name} must be at least {low}, got {value}")
    remote = [
        name for name in ("remote_python", "ssh_config", "connect_timeout") if flat[name] != pipeline_default(name)
    ]
    if not flat["targets"] and remote:
        raise OptionError(
            f"{' and '.join(remote)} appl{'y' if len(remote) > 1 else 'ies'} to --target devices,"
            " and no target was given"
        )
    if flat["int8"] and flat["opset"] is not None and flat["opset"] < MIN_OPSET:
        raise OptionError(f"INT8 needs opset {MIN_OPSET} or later, got opset {flat['opset']}; or pass --no-int8")


def load_config(path: Path | str, **overrides: object) -> PipelineConfig:
    """A config from a TOML file, then ``overrides`` on top.

    The file's options are at its top level, under ``[pipeline]``, or in tables named after the stages
    (``[export]``, ``[quantize]``, ``[benchmark]``, ...; ``STAGE_KEYS`` says which option goes where).

    Raises:
        InputFileError: the file is missing or not valid TOML.
        OptionError: an unknown key, a key in the wrong stage's table or given twice, or a value of the wrong type.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"config file not found: {path}")
    text = read_user_text(path, what="config file")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputFileError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:  # tomllib recurses once per nested array or table: 5,000 brackets deep is not a config
        raise InputFileError(f"{path}: nested too deeply to be a configuration") from None
    pipeline = data.pop("pipeline", {})
    if not isinstance(pipeline, dict):
        raise OptionError(f"{path}: [pipeline] must be a table of options, got {type(pipeline).__name__} {pipeline!r}")
    twice = sorted(set(pipeline) & set(data))
    if twice:
        raise OptionError(f"{path}: {', '.join(twice)} given both in [pipeline] and outside it")
    data = _flatten_stage_tables({**pipeline, **data}, source=str(path))
    given = {k: v for k, v in overrides.items() if v is not None}
    from_file = {k: v for k, v in data.items() if _field_of(k) not in {_field_of(g) for g in given}}
    origins = {_field_of(k): f"config file {path.name}" for k in from_file} | {_field_of(k): FROM_FLAG for k in given}
    return make_config({**from_file, **given}, source=str(path), origins=origins)


def _flatten_stage_tables(data: dict[str, object], *, source: str) -> dict[str, object]:
    """A file's options as flat keys: each ``[stage]`` table's keys checked against that stage's, then merged."""
    # "tune" names a stage and an option (tune = false): a stage's name with a value that is not a table is the option.
    tables = {k: v for k, v in data.items() if k in STAGE_KEYS and (isinstance(v, dict) or k not in OPTIONS)}
    flat = {k: v for k, v in data.items() if k not in tables}
    for stage, table in tables.items():
        if not isinstance(table, dict):
            raise OptionError(f"{source}: [{stage}] must be a table of options, got {type(table).__name__} {table!r}")
        for key, value in table.items():
            if _field_of(key) not in STAGE_KEYS[stage]:
                known = ", ".join(_FIELD_TO_KEY.get(k, k) for k in STAGE_KEYS[stage])
                raise OptionError(f"{source}: [{stage}] has no option {key}; its options: {known}")
            if any(_field_of(k) == _field_of(key) for k in flat):
                raise OptionError(f"{source}: {key} is given twice")
            flat[key] = value
    return flat


def option_keys() -> list[str]:
    """Every option's name as a config file key (``batch``, ``strict_ep``, ...)."""
    return [_FIELD_TO_KEY.get(name, name) for name in OPTIONS]


def option_key(field_name: str) -> str:
    """The option name (flag and config key) of a field: ``batch_sizes`` -> ``batch``."""
    return _FIELD_TO_KEY.get(field_name, field_name)


def _field_of(key: str) -> str:
    key = key.replace("-", "_")  # TOML keys may be spelled like the flags: allow-unfolded-bn
    return _KEY_TO_FIELD.get(key, key)


def make_config(
    values: dict[str, object], *, source: str = "options", origins: dict[str, str] | None = None
) -> PipelineConfig:
    """A config from plain values (a TOML table, CLI options), checked against the fields' types.

    Keys are the options' names (``batch``, ``strict_ep`` or ``strict-ep``); a list may also be given as a
    comma-separated string, as on the command line (``batch = "1,4"``).

    Args:
        origins: field -> where its value came from; by default every given value is ``source``'s.

    Raises:
        OptionError: an unknown key or a value of the wrong type.
    """
    unknown = sorted(k for k in values if _field_of(k) not in OPTIONS)
    if unknown:
        raise OptionError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(option_keys())}")
    clean: dict[str, object] = {}
    for given_key, value in values.items():
        key = _field_of(given_key)
        expected = option_type(key)  # the declaring field's type, as a user writes it
        value = _as_list(key, value, expected)
        if not any(_fits(value, member) for member in _members(expected)):
            raise OptionError(f"{source}: {given_key} must be {_describe(expected)}, got {value!r}")
        clean[key] = value
    return PipelineConfig(**clean, origins=origins if origins is not None else dict.fromkeys(clean, source))


# --- the fields' types, for checking a TOML file's values ------------------------------------------------------------


def _members(expected: object) -> tuple[object, ...]:
    """``int | None`` -> (int, NoneType); a plain type -> (type,)."""
    if isinstance(expected, types.UnionType) or typing.get_origin(expected) is typing.Union:
        return typing.get_args(expected)
    return (expected,)


def _as_list(key: str, value: object, expected: object) -> object:
    """A list option's value as a tuple: from a TOML list, or from text as on the command line (``"1,4"``, whose
    numbers become integers where the option holds integers); any other value as it is."""
    item = next((typing.get_args(m)[0] for m in _members(expected) if typing.get_origin(m) is tuple), None)
    if item is None or not isinstance(value, (str, list, tuple)):
        return value
    if isinstance(value, str):  # a provider's [options] may hold commas
        value = split_provider_list(value) if key == "providers" else [v.strip() for v in value.split(",")]
    if item is int:
        value = [int(v) if isinstance(v, str) and v.isdigit() else v for v in value]
    return tuple(value)


def _fits(value: object, member: object) -> bool:
    """Whether ``value`` is a ``member`` (``int``, ``None``, ``tuple[int, ...]``); a bool is no number here."""
    if typing.get_origin(member) is tuple:
        return isinstance(value, tuple) and all(_fits(v, typing.get_args(member)[0]) for v in value)
    if member is type(None):
        return value is None
    kinds = (int, float) if member is float else member
    return isinstance(value, kinds) and (member is bool or not isinstance(value, bool))


def _describe(expected: object) -> str:
    """How an error names a type: ``int | None``, ``list of strings``."""
    names = {type(None): "None", tuple[str, ...]: "list of strings", tuple[int, ...]: "list of integers"}
    return " | ".join(names.get(m, getattr(m, "__name__", str(m))) for m in _members(expected))
