"""Commands that judge model files: validate, benchmark, and doctor for the machine itself."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from resnet_edge.cli import render
from resnet_edge.cli.options import json_option, parse_batches, parse_provider_list, providers_option
from resnet_edge.models import list_models


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--reference", help="FP32 .onnx, or a checkpoint (with --arch). [default: the built-in checkpoint]")
@click.option("--arch", type=click.Choice(list_models()), help="Arch of a reference checkpoint. [default: recorded]")
@click.option("--data", help="Images: folder (class sub-folders = labels), .npy/.npz, builtin:NAME.")
@click.option("--labels", "labels_file", type=click.Path(path_type=Path), help="CSV of relative/path,label.")
@providers_option
@click.option("--strict-ep", is_flag=True, help="Fail if a provider is missing instead of falling back to cpu.")
@click.option("--min-agreement", type=float, help="Top-1 agreement required (fraction). [default: 1 FP32, 0.99 INT8]")
@click.option("--max-top1-drop", type=float, help="Accuracy points a model may lose. [default: 0 FP32, 1 INT8]")
@click.option("--batch", type=int, default=8, show_default=True)
@json_option
def validate(
    models, reference, arch, data, labels_file, providers, strict_ep, min_agreement, max_top1_drop, batch, as_json
) -> None:
    """Compare ONNX models with their PyTorch (or FP32 ONNX) reference on each provider; fail on a miss."""
    from resnet_edge.validate import Reference, ValidateOptions, describe_failures, validate_models

    ref = Reference.parse(reference, arch=arch) if reference else None
    options = ValidateOptions(
        data=data,
        labels_file=labels_file,
        providers=parse_provider_list(providers),
        strict_ep=strict_ep,
        min_agreement=min_agreement,
        max_top1_drop=max_top1_drop,
        batch=batch,
    )
    result = validate_models(list(models), ref, options)
    if as_json:
        render.emit_json(result)
    else:
        click.echo(
            f"reference: {result.reference}; data: {result.data} ({result.images} images,"
            f" {'labelled' if result.labelled else 'unlabelled'})"
        )
        click.echo(
            render.table(
                [
                    "model",
                    "provider",
                    "ran on",
                    "max abs",
                    "mean abs",
                    "cosine",
                    "top-1 agree",
                    "top-5 overlap",
                    "KL",
                    "top-1 acc",
                    "ref acc",
                    "drop pts",
                    "result",
                ],
                [
                    [
                        r.model,
                        r.provider,
                        r.ran_on + (" (fallback)" if r.fell_back else ""),
                        r.parity.max_abs_error,
                        r.parity.mean_abs_error,
                        r.parity.cosine,
                        render.percent(r.parity.top1_agreement),
                        render.percent(r.parity.top5_overlap),
                        r.parity.kl_divergence,
                        render.percent(r.accuracy.top1) if r.accuracy else "-",
                        render.percent(r.reference_accuracy.top1) if r.reference_accuracy else "-",
                        r.top1_drop_points,
                        "pass" if r.passed else "FAIL",
                    ]
                    for r in result.rows
                ],
            )
        )
    if not result.passed:
        click.echo(f"error: validation failed: {describe_failures(result)}", err=True)
        sys.exit(1)


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--torch", "torch_reference", help="Also time PyTorch eager: an arch name or a checkpoint.")
@providers_option
@click.option("--strict-ep", is_flag=True, help="Fail if a provider is missing instead of falling back to cpu.")
@click.option("--batch", "batch_sizes", default="1", show_default=True, help="Comma-separated batch sizes.")
@click.option("--threads", type=int, help="Intra-op threads. [default: all cores]")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed rounds first.")
@click.option("--iterations", type=int, help="Timed rounds. [default: 100]")
@click.option("--duration", type=float, help="Seconds to time each batch size, instead of --iterations.")
@click.option("--data", help="Images to time on. [default: built-in]")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Also write the JSON result here.")
@json_option
def benchmark(
    models,
    torch_reference,
    providers,
    strict_ep,
    batch_sizes,
    threads,
    warmup,
    iterations,
    duration,
    data,
    output,
    as_json,
) -> None:
    """Time models side by side (round-robin): cold start, p50/p90/p99, throughput, ratios to the first."""
    from tqdm import tqdm

    from resnet_edge.artifacts import refuse_overwriting_inputs, require_writable_destination, write_json_atomic
    from resnet_edge.benchmark import BenchmarkOptions, benchmark_models
    from resnet_edge.jsonable import to_jsonable

    if output is not None:
        require_writable_destination(output)
        refuse_overwriting_inputs([output], [*models, data, torch_reference], command="benchmark output")
    options = BenchmarkOptions(
        providers=parse_provider_list(providers),
        batch_sizes=parse_batches(batch_sizes),
        threads=threads,
        warmup=warmup,
        iterations=iterations,
        duration_s=duration,
        torch_reference=torch_reference,
        strict_ep=strict_ep,
        data=data,
    )
    rounds = (options.rounds or 0) * len(options.providers) * len(options.batch_sizes)
    with tqdm(total=rounds or None, desc="timing", unit="round", leave=False, disable=as_json, delay=0.5) as bar:
        result = benchmark_models(list(models), options, progress=bar.update)
    if output is not None:
        write_json_atomic(output, to_jsonable(result))
    if as_json:
        return render.emit_json(result)
    cpu = result.environment.cpu
    click.echo(
        f"{cpu.model}, {cpu.logical_cores} cores ({', '.join(k for k, v in cpu.features.items() if v)});"
        f" {result.threads} threads; {', '.join(f'{k}: {v}' for k, v in result.io.items())}"
    )
    click.echo(
        render.table(
            [
                "model",
                "provider",
                "ran on",
                "batch",
                "cold ms",
                "mean ms",
                "std",
                "min",
                "p50",
                "p90",
                "p99",
                "max",
                "img/s",
                "cv",
                "x first",
            ],
            [
                [
                    r.model,
                    r.provider,
                    r.ran_on,
                    r.batch,
                    r.cold_start_ms,
                    *(
                        [
                            r.latency.mean_ms,
                            r.latency.std_ms,
                            r.latency.min_ms,
                            r.latency.p50_ms,
                            r.latency.p90_ms,
                            r.latency.p99_ms,
                            r.latency.max_ms,
                            r.latency.throughput,
                            r.latency.cv,
                        ]
                        if r.latency
                        else ["-"] * 9
                    ),
                    f"{r.speedup:.2f}x" if r.speedup else (r.skipped or "-"),
                ]
                for r in result.rows
            ],
        )
    )
    click.echo("x first: the first model's p50 divided by this row's p50 (higher is faster)")


@click.command()
@json_option
def doctor(as_json) -> None:
    """Versions, execution providers, CPU features for INT8, GPUs, and known installation problems."""
    from resnet_edge.environment import collect_environment

    env = collect_environment()
    if as_json:
        render.emit_json(env)
        sys.exit(1 if env.problems else 0)
    click.echo(f"python {env.python} on {env.platform}")
    for name, ver in env.packages.items():
        click.echo(f"  {name:16} {ver or 'not installed'}")
    click.echo(f"onnxruntime providers: {', '.join(env.onnxruntime_providers)}")
    features = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in env.cpu.features.items())
    click.echo(f"cpu: {env.cpu.model} ({env.cpu.architecture}, {env.cpu.logical_cores} logical cores): {features}")
    click.echo(f"gpu: {', '.join(env.gpus) or 'none found'}")
    if env.onnxruntime_providers:
        from resnet_edge.quantize import detect_target, resolve_config  # needs onnxruntime

        config = resolve_config(detect_target())
        click.echo(f"INT8 target for this machine: {config.target.value} ({config.reason})")
    for problem in env.problems:
        click.echo(f"problem: {problem}", err=True)
    if env.problems:  # a check that found something wrong does not exit 0
        sys.exit(1)
