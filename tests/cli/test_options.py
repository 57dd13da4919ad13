"""The flags made from the options classes: one per field, enum choices from the enums, checks in the classes."""

from __future__ import annotations

import dataclasses
import enum
import math

import click
import pytest
from click.testing import CliRunner

from resnet_edge.cli.main import main
from resnet_edge.cli.options import flag_name, options_from, take_options
from resnet_edge.conversion.options import Exporter, ExportOptions, SimplifyOptions
from resnet_edge.errors import OptionError
from resnet_edge.evaluation.options import BenchmarkOptions, TuneOptions, ValidateOptions
from resnet_edge.models.options import GradFlowOptions
from resnet_edge.models.registry import Variant
from resnet_edge.quantization.configs import Format, Int8Target, Method
from resnet_edge.quantization.options import AccuracyGoal, QuantizeOptions
from resnet_edge.training.options import TrainOptions

COMMANDS = {
    "export": ExportOptions,
    "simplify": SimplifyOptions,
    "validate": ValidateOptions,
    "benchmark": BenchmarkOptions,
    "tune": TuneOptions,
    "gradflow": GradFlowOptions,
    "quantize": QuantizeOptions,
    "train": TrainOptions,
}


def _options(command: click.Command) -> dict[str, click.Option]:
    return {name: p for p in command.params if isinstance(p, click.Option) for name in p.opts + p.secondary_opts}


@pytest.mark.parametrize(("command", "cls"), COMMANDS.items())
def test_every_field_is_a_flag_of_its_command(command: str, cls: type) -> None:
    flags = _options(main.commands[command])
    for field in dataclasses.fields(cls):
        if field.metadata.get("cli", True):
            assert flag_name(field).split("/")[0] in flags, (command, field.name)


def test_choices_are_the_enums_values() -> None:
    export = _options(main.commands["export"])
    assert list(export["--exporter"].type.choices) == [e.value for e in Exporter]
    assert list(export["--variant"].type.choices) == [v.value for v in Variant]
    assert export["--exporter"].default == ExportOptions().exporter.value


def test_the_int8_choices_are_the_enums_values() -> None:
    quantize, pipeline = _options(main.commands["quantize"]), _options(main.commands["pipeline"])
    for flags, target in ((quantize, "--target"), (pipeline, "--int8-target")):
        assert list(flags[target].type.choices) == [t.value for t in Int8Target]
        assert list(flags["--method"].type.choices) == [m.value for m in Method]
        assert list(flags["--format"].type.choices) == [f.value for f in Format]
    assert quantize["--target"].default == QuantizeOptions().target.value
    assert quantize["--method"].default == QuantizeOptions().method.value
    # the accuracy goal's flags are its fields', and sit before --allow-accuracy-drop as they always did
    names = [p.name for p in main.commands["quantize"].params]
    goal = [f.name for f in dataclasses.fields(AccuracyGoal)]
    assert names[names.index("require_int8") + 1 : names.index("allow_accuracy_drop")] == goal
    assert quantize["--min-agreement"].metavar == "FRACTION"


def test_defaults_and_help_come_from_the_fields() -> None:
    simplify = _options(main.commands["simplify"])
    (timeout,) = (f for f in dataclasses.fields(SimplifyOptions) if f.name == "timeout_s")
    assert (
        simplify["--timeout"].default == SimplifyOptions().timeout_s
        and simplify["--timeout"].help == timeout.metadata["help"]
    )
    assert _options(main.commands["tune"])["--iterations"].default == TuneOptions().iterations
    assert _options(main.commands["validate"])["--batch"].default == ValidateOptions().batch


class _Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class _Toy:
    name: str = dataclasses.field(metadata={"help": "Required: no default."})
    colour: _Colour = _Colour.RED
    loud: bool = False
    quiet: bool = dataclasses.field(default=True, metadata={"flag": "--no-quiet"})
    count: int | None = None
    hidden: int = dataclasses.field(default=3, metadata={"cli": False})


def test_generator_on_a_dataclass_of_its_own() -> None:
    @click.command()
    @options_from(_Toy)
    def toy(**fields) -> None:
        click.echo(repr(take_options(_Toy, fields)))

    flags = _options(toy)
    assert set(flags) == {"--name", "--colour", "--loud", "--no-quiet", "--count"}
    assert flags["--name"].required and list(flags["--colour"].type.choices) == ["red", "blue"]
    out = CliRunner().invoke(toy, ["--name", "x", "--colour", "blue", "--loud", "--no-quiet"]).output
    assert out.strip() == repr(_Toy(name="x", colour=_Colour.BLUE, loud=True, quiet=False))
    out = CliRunner().invoke(toy, ["--name", "x"]).output
    assert out.strip() == repr(_Toy(name="x"))
    with pytest.raises(TypeError, match="no field"):
        options_from(_Toy, overrides={"nothing": None})


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SimplifyOptions(timeout_s=math.nan), "onnxsim timeout"),
        (lambda: SimplifyOptions(timeout_s=math.inf), "onnxsim timeout"),
        (lambda: ExportOptions(batch=0), "batch must be 'dynamic' or at least 1"),
        (lambda: ExportOptions(opset=9), "writes opsets 11 to 20, not 9"),
        (lambda: ValidateOptions(min_agreement=math.nan), "min agreement is a fraction"),
        (lambda: ValidateOptions(batch=0), "batch must be at least 1"),
        (lambda: TuneOptions(iterations=0), "iterations must be at least 1"),
        (lambda: TuneOptions(limit=0), "limit must be at least 1"),
        (lambda: BenchmarkOptions(duration_s=math.inf), "duration must be more than 0"),
        (lambda: GradFlowOptions("resnet20", batch=1), "batch must be at least 2"),
        (lambda: GradFlowOptions("resnet20", variant="skipless"), "unknown variant 'skipless'"),
        (lambda: QuantizeOptions(limit=0), "limit must be at least 1"),
        (lambda: QuantizeOptions(method="kl"), "method must be one of minmax, entropy, percentile"),
    ],
)
def test_each_options_class_checks_itself(make, match: str) -> None:
    with pytest.raises(OptionError, match=match):
        make()


def test_the_cli_imports_the_options_modules_without_heavy_libraries() -> None:
    import subprocess
    import sys

    code = (
        "import sys, resnet_edge.conversion.options, resnet_edge.evaluation.options, resnet_edge.models.options,"
        " resnet_edge.quantization.options, resnet_edge.training.options;"
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules))"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )
