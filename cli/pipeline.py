"""``resnet-edge pipeline``: the whole flow, one command, built-in defaults."""

from __future__ import annotations

from pathlib import Path

import click

from resnet_edge import formatting as fmt
from resnet_edge.cli import render
from resnet_edge.cli.options import (
    INT8_FORMATS,
    INT8_METHODS,
    INT8_TARGETS,
    field_option,
    json_option,
    progress_bars,
)
from resnet_edge.evaluation.options import ValidateOptions
from resnet_edge.models.registry import Variant, list_models
from resnet_edge.pipeline.result import FILES


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


@click.command()
@click.option("--arch", type=click.Choice(list_models()), help="Architecture. [default: the built-in digits resnet20]")
@click.option(
    "--weights",
    help="Checkpoint (.pt, .pth, .safetensors) or builtin:NAME. [default: builtin:digits-resnet20 unless --arch;"
    " with --arch alone: random weights drawn with --seed]",
)
@click.option(
    "--variant",
    type=click.Choice([v.value for v in Variant]),
    help="Block design: residual, plain (skips off) or preact. [default: the checkpoint's, else residual]",
)
@click.option("--num-classes", type=int, help="Output classes. [default: the checkpoint's, else 1000 / 10]")
@click.option("--input-size", type=int, help="Input side in pixels. [default: the checkpoint's, else 224 / 32]")
@click.option("--opset", type=int, help="ONNX opset to export. [default: 17]")
@click.option("--calib", help="Calibration images. [default: the model's built-in calibration split / photos]")
@click.option(
    "--data",
    help="Validation images; any image also used for calibration is left out. [default: the model's built-in"
    " test split / photos]",
)
@field_option(ValidateOptions, "label_map", type=click.Path())  # declared once (calibration.labels); text, as in TOML
@click.option(
    "--providers",
    help="Comma-separated: cpu, cuda, tensorrt, openvino, ep:NAME; options as name[k=v;k=v]. [default: cpu]",
)
@click.option("--strict-ep", is_flag=True, default=None, help="Fail instead of falling back to cpu.")
@click.option("--int8/--no-int8", default=None, help="Quantize to INT8. [default: yes]")
@click.option(
    "--method",
    type=click.Choice(INT8_METHODS),
    help="How calibration turns activations into ranges. [default: minmax]",
)
@click.option(
    "--int8-target",
    "target",
    type=click.Choice(INT8_TARGETS),
    help="Hardware to choose the INT8 configuration for; auto reads this CPU. [default: auto]",
)
@click.option("--per-channel/--per-tensor", default=None, help="INT8 weight granularity. [default: the target's]")
@click.option("--format", type=click.Choice(INT8_FORMATS), help="INT8 graph format. [default: the target's]")
@click.option("--limit", type=int, help="Calibration images to draw (with --seed). [default: all]")
@click.option("--seed", type=int, help="Seed for the calibration subset and for random weights. [default: 0]")
@click.option("--batch", help="Benchmark batch sizes, comma-separated. [default: 1,8]")
@click.option("--iterations", type=int, help="Benchmark rounds. [default: 50]")
@click.option("--warmup", type=int, help="Untimed benchmark rounds first. [default: 5]")
@click.option("--threads", type=int, help="Intra-op threads. [default: all cores]")
@click.option(
    "--torch-eager/--no-torch-eager",
    default=None,
    help="Also time the PyTorch model (the slowest phase; --no-torch-eager skips it). [default: yes]",
)
@click.option(
    "--tune/--no-tune",
    default=None,
    help=f"Choose the deployment by measurement (as resnet-edge tune) and write {FILES['tune']}. [default: yes]",
)
@click.option(
    "--allow-unfolded-bn", is_flag=True, default=None, help="Keep BatchNorms with no conv to fold into (preact)."
)
@click.option(
    "--allow-accuracy-drop",
    is_flag=True,
    default=None,
    help="Keep an INT8 model that misses validate's INT8 bar on held-out images (random weights, say).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help='TOML file whose keys are these options\' names (batch = "1,8", strict_ep = true); flags win.',
)
@click.option(
    "--target",
    "targets",
    multiple=True,
    help="Also benchmark and report on this device, and choose the deployment there (tune runs on it, one"
    " model.tuned file per device), repeatable: ssh://[user@]host[:port], local or 'exec:COMMAND PREFIX' (see"
    " benchmark --help; an emulated one is reported, never ranked, and its deployment is chosen by parity and"
    " integer coverage). (A value that names an INT8 target, as in earlier releases, is taken as --int8-target.)",
)
@click.option("--remote-python", help="Interpreter on the target devices. [default: python3]")
@click.option("--ssh-config", help="ssh config file instead of ~/.ssh/config (ssh -F). [default: ssh's own]")
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
    from resnet_edge.pipeline.result import REPORT_JSON, StageEvent
    from resnet_edge.pipeline.run import run_pipeline

    given = {k: v for k, v in options.items() if v is not None and v != ()}
    given = route_int8_targets(given)
    config = load_config(config_file, **given) if config_file else make_config(given, source=FROM_FLAG)

    def show(event: StageEvent) -> None:
        if as_json:
            return
        if event.status == "progress":
            click.echo(f"[{event.stage}] {event.summary}", err=True)
        elif event.status == "start":
            click.echo(f"[{event.stage}] running ...", err=True)
        elif event.status == "done":
            click.echo(f"[{event.stage}] done in {fmt.seconds(event.seconds)}: {event.summary}")
        else:
            click.echo(f"[{event.stage}] failed after {fmt.seconds(event.seconds)}", err=True)

    with progress_bars(not as_json) as bars:
        result = run_pipeline(
            config,
            outdir,
            overwrite=overwrite,
            inputs=[config_file] if config_file else [],
            on_event=show,
            on_progress=bars,
        )
    if as_json:
        return render.emit_json(
            {"outdir": result.outdir, "artifacts": result.artifacts, "report": str(result.outdir / REPORT_JSON)}
        )
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
