"""A pipeline run's options: the stages' own options, with the pipeline's defaults declared once, and TOML files.

Every option of a run is a CLI flag, a config file key and a field of :class:`PipelineConfig` of the same name
(``batch_sizes`` is ``--batch`` / ``batch``); the report's "configuration as run" lists them by that name with where
each value came from. Each field sets one stage's option (``STAGE_KEYS``), and the stage's options are made from
the pipeline's defaults for that stage (``PIPELINE_EXPORT``, ``PIPELINE_BENCHMARK``, ...) with the run's values on
top, so each stage checks them as it checks its own.

A config file gives the options at its top level (flat keys, as before), under ``[pipeline]``, or in tables named
after the stages that use them (``[export]``, ``[quantize]``, ``[benchmark]``, ...)::

    arch = "resnet20"        # a flat key still works
    [benchmark]
    batch = "1,4"
    iterations = 20
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from resnet_edge.artifacts import read_user_text
from resnet_edge.conversion.options import DEFAULT_OPSET, OPSET_RANGE, ExportOptions, SimplifyOptions
from resnet_edge.errors import InputFileError, OptionError
from resnet_edge.evaluation.options import MAX_ITERATIONS, MAX_WARMUP, BenchmarkOptions, ValidateOptions
from resnet_edge.onnx.runtime import Provider, parse_providers, split_provider_list
from resnet_edge.quantization.calibrate import MIN_OPSET
from resnet_edge.quantization.configs import Int8Target, Method

DEFAULT_WEIGHTS = "builtin:digits-resnet20"
# Where a configuration value came from, as the report records it.
FROM_DEFAULT, FROM_FLAG, FROM_ARGUMENT, FROM_CHECKPOINT, FROM_RUN = "default", "flag", "argument", "checkpoint", "run"

# The pipeline's defaults where they differ from the stages' own, declared once: it exports with every BatchNorm
# kept (the simplify stage folds them and proves it) at the default opset, and times fewer rounds at two batch
# sizes (a run's benchmark is one look among several stages, not a measurement campaign).
PIPELINE_EXPORT = ExportOptions(opset=DEFAULT_OPSET, fold_bn=False)
PIPELINE_SIMPLIFY = SimplifyOptions()
PIPELINE_BENCHMARK = BenchmarkOptions(providers=(Provider.CPU,), batch_sizes=(1, 8), iterations=50, warmup=5)

# The stage each option belongs to: the table a config file may give it in. ``providers`` serves validate and
# benchmark; the run's own options (weights, seed, targets) sit with the stage that uses them first.
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "export": ("arch", "weights", "variant", "num_classes", "input_size", "opset", "seed"),
    "simplify": ("allow_unfolded_bn",),
    "quantize": ("int8", "calib", "method", "target", "per_channel", "format", "limit", "seed", "allow_accuracy_drop"),
    "validate": ("data", "providers", "strict_ep"),
    "benchmark": (
        "providers",
        "strict_ep",
        "batch_sizes",
        "iterations",
        "warmup",
        "threads",
        "torch_eager",
        "targets",
        "remote_python",
        "ssh_config",
    ),
    "tune": ("tune",),
}
# Option names (the CLI's, and the config file's keys) that differ from the field they set.
_KEY_TO_FIELD = {"batch": "batch_sizes"}
_FIELD_TO_KEY = {v: k for k, v in _KEY_TO_FIELD.items()}


@dataclass(frozen=True)
class PipelineConfig:
    """Every option of a pipeline run; the report records it resolved, so the run can be repeated.

    With neither ``arch`` nor ``weights``, the built-in trained digits model is used. With ``arch`` alone, the
    weights are fresh, drawn with ``seed``. ``origins`` records where each given value came from. The defaults are
    the stages' (``PIPELINE_*`` where the pipeline's differ); :meth:`export_options` and the like give each stage
    its options.
    """

    arch: str | None = PIPELINE_EXPORT.arch
    weights: str | None = None
    variant: str | None = None
    num_classes: int | None = PIPELINE_EXPORT.num_classes
    input_size: int | None = PIPELINE_EXPORT.input_size
    opset: int = PIPELINE_EXPORT.resolved_opset
    calib: str | None = None
    data: str | None = None
    providers: tuple[str, ...] = tuple(p.value for p in PIPELINE_BENCHMARK.providers)
    strict_ep: bool = PIPELINE_BENCHMARK.strict_ep
    int8: bool = True
    method: str = Method.MINMAX.value
    target: str = Int8Target.AUTO.value
    per_channel: bool | None = None
    format: str | None = None
    limit: int | None = None
    seed: int = 0
    allow_unfolded_bn: bool = PIPELINE_SIMPLIFY.allow_unfolded_bn
    allow_accuracy_drop: bool = False
    batch_sizes: tuple[int, ...] = PIPELINE_BENCHMARK.batch_sizes
    iterations: int = PIPELINE_BENCHMARK.rounds  # set: the pipeline never times for a duration
    warmup: int = PIPELINE_BENCHMARK.warmup
    threads: int | None = PIPELINE_BENCHMARK.threads
    torch_eager: bool = True
    tune: bool = True  # choose the deployment by measurement (resnet_edge.evaluation.tune) on model.sim.onnx
    targets: tuple[str, ...] = ()  # devices to benchmark the models on too (ssh://[user@]host[:port] or local)
    remote_python: str | None = None  # python3 on the device when None
    ssh_config: str | None = None
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Checked here, before any stage runs: a bad benchmark option must not surface after minutes of work.
        parse_providers(list(self.providers))
        if self.targets:
            from resnet_edge.device.fleet import parse_targets

            parse_targets(list(self.targets))
        for name, enum_type in (("method", Method), ("target", Int8Target)):
            value = getattr(self, name)
            if value not in {e.value for e in enum_type}:
                raise OptionError(f"{name} {value!r} is not one of: {', '.join(e.value for e in enum_type)}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise OptionError(f"batch sizes must be at least 1, got {list(self.batch_sizes)}")
        for name, low in (
            ("iterations", 1),
            ("warmup", 0),
            ("threads", 1),
            ("limit", 1),
            ("num_classes", 1),
            ("input_size", 1),
            ("seed", 0),
        ):
            value = getattr(self, name)
            if value is not None and value < low:
                raise OptionError(f"{name} must be at least {low}, got {value}")
        low, high = OPSET_RANGE["torchscript"]  # the pipeline exports with the TorchScript exporter
        if not low <= self.opset <= high:
            raise OptionError(f"opset must be from {low} to {high} (what the exporter writes), got {self.opset}")
        if not self.targets and (self.remote_python is not None or self.ssh_config is not None):
            raise OptionError("remote_python and ssh_config apply to --target devices, and no target was given")
        if self.int8 and self.opset < MIN_OPSET:
            raise OptionError(f"INT8 needs opset {MIN_OPSET} or later, got opset {self.opset}; or pass --no-int8")
        for name, high in (("iterations", MAX_ITERATIONS), ("warmup", MAX_WARMUP)):
            if getattr(self, name) > high:
                raise OptionError(f"{name} must be at most {high:,}, got {getattr(self, name)}")

    def resolved_weights(self) -> str | None:
        return self.weights if self.weights or self.arch else DEFAULT_WEIGHTS

    def export_options(self) -> ExportOptions:
        """The export stage's options: the pipeline's export defaults with this run's values."""
        return dataclasses.replace(
            PIPELINE_EXPORT,
            arch=self.arch,
            num_classes=self.num_classes,
            variant=self.variant,
            input_size=self.input_size,
            opset=self.opset,
        )

    def simplify_options(self) -> SimplifyOptions:
        return dataclasses.replace(PIPELINE_SIMPLIFY, allow_unfolded_bn=self.allow_unfolded_bn)

    def validate_options(self) -> ValidateOptions:
        return ValidateOptions(
            data=self.data, providers=tuple(parse_providers(list(self.providers))), strict_ep=self.strict_ep
        )

    def benchmark_options(self, *, torch_reference: str | None) -> BenchmarkOptions:
        """The benchmark stage's options; ``torch_reference`` is the checkpoint PyTorch eager is timed with, if any."""
        return dataclasses.replace(
            PIPELINE_BENCHMARK,
            providers=tuple(parse_providers(list(self.providers))),
            batch_sizes=self.batch_sizes,
            threads=self.threads,
            warmup=self.warmup,
            iterations=self.iterations,
            torch_reference=torch_reference if self.torch_eager else None,
            strict_ep=self.strict_ep,
            data=self.data,
        )


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
    data = data.get("pipeline", data)
    if not isinstance(data, dict):
        raise OptionError(f"{path}: [pipeline] must be a table of options, got {type(data).__name__} {data!r}")
    data = _flatten_stage_tables(data, source=str(path))
    given = {k: v for k, v in overrides.items() if v is not None}
    from_file = {k: v for k, v in data.items() if _field_of(k) not in {_field_of(g) for g in given}}
    origins = {_field_of(k): f"config file {path.name}" for k in from_file} | {_field_of(k): FROM_FLAG for k in given}
    return make_config({**from_file, **given}, source=str(path), origins=origins)


def _flatten_stage_tables(data: dict[str, object], *, source: str) -> dict[str, object]:
    """A file's options as flat keys: each ``[stage]`` table's keys checked against that stage's, then merged."""
    # "tune" names a stage and an option (tune = false): a stage's name with a value that is not a table is the option.
    tables = {k: v for k, v in data.items() if k in STAGE_KEYS and (isinstance(v, dict) or k not in _option_fields())}
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


def _option_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(PipelineConfig)} - {"origins"}


def option_keys() -> list[str]:
    """Every option's name as a config file key (``batch``, ``strict_ep``, ...)."""
    return [_FIELD_TO_KEY.get(f.name, f.name) for f in dataclasses.fields(PipelineConfig) if f.name != "origins"]


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
    types_of = _field_types()
    unknown = sorted(k for k in values if _field_of(k) not in types_of)
    if unknown:
        raise OptionError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(option_keys())}")
    clean: dict[str, object] = {}
    for given_key, value in values.items():
        key = _field_of(given_key)
        expected = types_of[key]
        if _is_tuple(expected):
            if isinstance(value, str):  # a provider's [options] may hold commas
                value = (
                    tuple(split_provider_list(value))
                    if key == "providers"
                    else tuple(v.strip() for v in value.split(","))
                )
            elif isinstance(value, (list, tuple)):
                value = tuple(value)
            if isinstance(value, tuple) and _tuple_item(expected) is int:
                value = tuple(int(v) if isinstance(v, str) and v.isdigit() else v for v in value)
        if not _is_a(value, expected):
            raise OptionError(f"{source}: {given_key} must be {_describe(expected)}, got {value!r}")
        clean[key] = value
    return PipelineConfig(**clean, origins=origins if origins is not None else dict.fromkeys(clean, source))


# --- the fields' types, for checking a TOML file's values ------------------------------------------------------------


def _field_types() -> dict[str, object]:
    hints = typing.get_type_hints(PipelineConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(PipelineConfig) if f.name != "origins"}


def _members(expected: object) -> tuple[object, ...]:
    """``int | None`` -> (int, NoneType); a plain type -> (type,)."""
    if isinstance(expected, types.UnionType) or typing.get_origin(expected) is typing.Union:
        return typing.get_args(expected)
    return (expected,)


def _is_tuple(expected: object) -> bool:
    return any(typing.get_origin(m) is tuple for m in _members(expected))


def _tuple_item(expected: object) -> object:
    return next(typing.get_args(m)[0] for m in _members(expected) if typing.get_origin(m) is tuple)


def _is_a(value: object, expected: object) -> bool:
    """Whether ``value`` fits a field of type ``expected`` (``int``, ``str | None``, ``tuple[int, ...]``)."""
    for member in _members(expected):
        if member is type(None) and value is None:
            return True
        if typing.get_origin(member) is tuple and isinstance(value, tuple):
            item = typing.get_args(member)[0]
            if all(isinstance(v, item) and not (item is int and isinstance(v, bool)) for v in value):
                return True
        if member is bool and isinstance(value, bool):
            return True
        if member in (int, str) and isinstance(value, member) and not isinstance(value, bool):
            return True
    return False


def _describe(expected: object) -> str:
    """How an error names a type: ``int | None``, ``list of strings``."""
    names = {type(None): "None", tuple[str, ...]: "list of strings", tuple[int, ...]: "list of integers"}
    return " | ".join(names.get(m, getattr(m, "__name__", str(m))) for m in _members(expected))
