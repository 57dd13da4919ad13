"""``resnet-edge pipeline``: the whole flow, one command, built-in defaults."""

from __future__ import annotations

from pathlib import Path

import click

from resnet_edge.cli import render
from resnet_edge.cli.options import json_option, parse_batches
from resnet_edge.models import list_models


@click.command()
@click.option("--arch", type=click.Choice(list_models()), help="Architecture. [default: the built-in digits resnet20]")
@click.option("--weights", help="Checkpoint or builtin:NAME. [default: builtin:digits-resnet20 unless --arch]")
@click.option("--variant", type=click.Choice(["residual", "plain", "preact"]))
@click.option("--num-classes", type=int)
@click.option("--input-size", type=int)
@click.option("--calib", help="Calibration images. [default: the model's built-in calibration split / photos]")
@click.option("--data", help="Validation images. [default: the model's built-in test split / photos]")
@click.option("--providers", help="Comma-separated: cpu,cuda. [default: cpu]")
@click.option("--strict-ep", is_flag=True, default=None, help="Fail instead of falling back to cpu.")
@click.option("--int8/--no-int8", default=None, help="Quantize to INT8. [default: yes]")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]))
@click.option("--target", type=click.Choice(["auto", "x86-vnni", "x86-avx2", "arm64", "gpu-tensorrt"]))
@click.option("--limit", type=int, help="Calibration images to draw.")
@click.option("--batch", "batch_sizes", help="Benchmark batch sizes, comma-separated. [default: 1,8]")
@click.option("--iterations", type=int, help="Benchmark rounds. [default: 50]")
@click.option("--threads", type=int, help="Intra-op threads. [default: all cores]")
@click.option("--allow-unfolded-bn", is_flag=True, default=None, help="Keep BatchNorms with no conv to fold into.")
@click.option(
    "--allow-accuracy-drop",
    is_flag=True,
    default=None,
    help="Keep an INT8 model that misses validate's INT8 bar on held-out images (random weights, say).",
)
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML file with any of these options.")
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
    """Export, simplify, quantize, validate and benchmark in one go, and write a report."""
    from resnet_edge.pipeline import StageEvent, load_config, make_config, run_pipeline

    if options["batch_sizes"] is not None:
        options["batch_sizes"] = parse_batches(options["batch_sizes"])
    given = {k: v for k, v in options.items() if v is not None}
    config = load_config(config_file, **given) if config_file else make_config(given)

    def show(event: StageEvent) -> None:
        if as_json:
            return
        if event.status == "start":
            click.echo(f"[{event.stage}] running ...", err=True)
        elif event.status == "done":
            click.echo(f"[{event.stage}] done in {event.seconds:.1f} s: {event.summary}")
        else:
            click.echo(f"[{event.stage}] failed after {event.seconds:.1f} s", err=True)

    result = run_pipeline(
        config,
        outdir,
        overwrite=overwrite,
        inputs=[config_file] if config_file else [],
        on_event=show,
        progress=not as_json,
    )
    if as_json:
        return render.emit_json(
            {"outdir": result.outdir, "artifacts": result.artifacts, "report": str(result.outdir / "report.json")}
        )
    from resnet_edge.report import summarize

    rows = summarize(result)["rows"]
    click.echo(
        render.table(
            ["variant", "size", "top-1 agree", "accuracy", "p50 ms", "p99 ms", "img/s", "speed-up", "ran on"],
            [
                [
                    r["variant"],
                    render.size(r["size_bytes"]) if r["size_bytes"] else "-",
                    render.percent(r["top1_agreement"]),
                    render.percent(r["accuracy"]),
                    r["p50_ms"],
                    r["p99_ms"],
                    r["throughput"],
                    f"{r['speedup_vs_onnx_fp32']:.2f}x" if r["speedup_vs_onnx_fp32"] else "-",
                    r["ran_on"],
                ]
                for r in rows
            ],
        )
    )
    click.echo(f"wrote {result.outdir}/: {', '.join(result.artifacts)}")
