"""``resnet-edge pipeline``: the whole flow, one command, built-in defaults."""

from __future__ import annotations

import enum
import typing
from collections.abc import Callable
from pathlib import Path

import click

from resnet_edge import formatting as fmt
from resnet_edge.cli import render
from resnet_edge.cli.options import INT8_TARGETS, F, _without_none, field_option, json_option, progress_bars
from resnet_edge.pipeline.config import OPTIONS, declared, declared_type, option_key, option_type, pipeline_default
from resnet_edge.pipeline.result import FILES, PipelineResult
from resnet_edge.progress import DONE, FAILED, STARTED, Progress, ProgressCallback


def route_int8_targets(given: dict[str, object]) -> dict[str, object]:
    """``--target x86-vnni`` meant the INT8 configuration before ``--target`` named devices: keep it working."""
    targets = list(given.get("targets", ()))
    int8 = [t for t in targets if t in INT8_TARGETS]
    if not int8:
        return given
    if len(int8) > 1 or ("target" in given and given["target"] != int8[0]):
        raise click.BadParameter(f"more than one INT8 target given: {', '.join(int8)}", param_hint="--int8-target")
    given = {k: v for k, v in given.items() if k != "targets"} | {"target": int8[0]}
    devices = tuple(t for t in targets if t not in INT8_TARGETS)
    return given | ({"targets": devices} if devices else {})


def _default_text(name: str) -> str | None:
    """The default a flag's help shows: the declaration's (``PIPELINE_*``, ``RunOptions``), or the table's words for
    one that the value alone does not say (None: "all cores")."""
    option, value = OPTIONS[name], pipeline_default(name)
    if option.default is not None:
        return option.default
    if value is None or value is False or value == ():
        return None
    if value is True:
        return "yes"
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def pipeline_option(name: str) -> Callable[[F], F]:
    """The flag of the pipeline option ``name``, made from its declaration: the type and default of the field that
    keeps it, the flag and help of :data:`~resnet_edge.pipeline.config.OPTIONS`. Every flag defaults to None, so
    that what was given is told apart from the defaults (a config file's values win over those)."""
    option = OPTIONS[name]
    cls, declaration = declared(name)
    if not option.help:  # a field declared for every command (--label-map): its own flag and help
        return field_option(cls, declaration.name, type=click.Path())
    key = option_key(name)  # the parameter's name is the config file's key (batch), as make_config reads it
    flag = option.flag or "--" + key.replace("_", "-")
    default = _default_text(name)
    help_text = option.help.format(**FILES) + (f" [default: {default}]" if default else "")
    if option_type(name) is bool:
        if "/" in flag:
            return click.option(flag, key, default=None, help=help_text)
        return click.option(flag, key, is_flag=True, default=None, help=help_text)
    kept = _without_none(declared_type(name))
    if isinstance(kept, type) and issubclass(kept, enum.Enum):
        click_type: object = click.Choice([e.value for e in kept])
    elif option.choices:
        click_type = click.Choice(option.choices)
    elif typing.get_origin(kept) is tuple:
        click_type = str  # a list is given as on the command line: "1,8", or repeated (--target)
    else:
        click_type = _without_none(option_type(name))
    return click.option(flag, key, type=click_type, multiple=option.multiple, help=help_text)


def pipeline_options(*, until: str | None = None, start: str | None = None) -> Callable[[F], F]:
    """The pipeline options' flags, in :data:`~resnet_edge.pipeline.config.OPTIONS`' order: those before ``until``,
    or those from ``start`` on (so that --config stands before the device options, as it did)."""
    names = list(OPTIONS)
    names = names[: names.index(until)] if until else names[names.index(start) :] if start else names

    def decorate(function: F) -> F:
        for name in reversed(names):
            function = pipeline_option(name)(function)
        return function

    return decorate


@click.command()
@pipeline_options(until="targets")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help='TOML file whose keys are these options\' names (batch = "1,8", strict_ep = true); flags win.',
)
@pipeline_options(start="targets")
@click.option(
    "-o",
    "--output",
    "outdir",
    type=click.Path(path_type=Path),
    default=Path("resnet-edge-out"),
    show_default=True,
    help="Output folder.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@json_option
def pipeline(config_file, outdir, overwrite, as_json, **options) -> None:
    """Export, simplify, quantize, validate, benchmark and tune in one go, and write a report."""
    from resnet_edge.pipeline.config import FROM_FLAG, load_config, make_config
    from resnet_edge.pipeline.result import REPORT_JSON
    from resnet_edge.pipeline.run import run_pipeline

    given = {k: v for k, v in options.items() if v is not None and v != ()}
    given = route_int8_targets(given)
    config = load_config(config_file, **given) if config_file else make_config(given, source=FROM_FLAG)

    with progress_bars(not as_json) as bars:
        result = run_pipeline(
            config,
            outdir,
            overwrite=overwrite,
            inputs=[config_file] if config_file else [],
            on_progress=_stage_lines(bars) if bars else None,
        )
    if as_json:
        return render.emit_json(
            {"outdir": result.outdir, "artifacts": result.artifacts, "report": str(result.outdir / REPORT_JSON)}
        )
    _print_result(result)


def _stage_lines(bars: ProgressCallback) -> ProgressCallback:
    """The run's progress as the terminal shows it: a line as each stage starts (stderr), ends (stdout, with its
    summary) or fails (stderr), a line per step on a --target device (stderr), a bar for each countable step."""

    def show(event: Progress) -> None:
        if event.step == STARTED:
            click.echo(f"[{event.stage}] running ...", err=True)
        elif event.step == DONE:
            click.echo(f"[{event.stage}] done in {fmt.seconds(event.seconds)}: {event.detail}")
        elif event.step == FAILED:
            click.echo(f"[{event.stage}] failed after {fmt.seconds(event.seconds)}", err=True)
        elif event.target is not None:
            click.echo(f"[{event.stage}] [{event.target}] {event.step}", err=True)
        else:
            bars(event)

    return show


def _print_result(result: PipelineResult) -> None:
    """The run's table (one row per variant), the deployment tune chose, and the files written."""
    from resnet_edge.pipeline.report import summary_rows

    rows = summary_rows(result)
    click.echo(
        render.table(
            ["variant", "size", "top-1 agree", "accuracy", "p50 ms", "p99 ms", "img/s", fmt.SPEEDUP_COLUMN, "ran on"],
            [
                [
                    r.variant,
                    fmt.size(r.size_bytes),
                    fmt.percent(r.top1_agreement),
                    fmt.percent(r.accuracy),
                    fmt.ms(r.p50_ms),
                    fmt.ms(r.p99_ms),
                    fmt.throughput(r.throughput),
                    fmt.ratio(r.speedup_vs_onnx_fp32),
                    r.ran_on,
                ]
                for r in rows
            ],
        )
    )
    for tuned in result.tunes:  # one per --target device, chosen there; else the one chosen here
        chosen = tuned.chosen
        click.echo(
            f"deployment{f' for {tuned.target}' if tuned.target else ''}: {chosen.name} on {chosen.provider}"
            f" -> {result.outdir / tuned.output.name} (run it with --providers {chosen.provider})"
            f"{'' if tuned.timing_used else '; timing under emulation was not used'}"
        )
    click.echo(f"wrote {result.outdir}/: {', '.join(result.artifacts)}")
