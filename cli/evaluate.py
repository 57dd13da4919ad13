"""Commands that judge model files: validate, benchmark, and doctor for the machine itself."""

from __future__ import annotations

from pathlib import Path

import click

from resnet_edge import formatting as fmt
from resnet_edge.cli import render
from resnet_edge.cli.options import (
    json_option,
    options_from,
    parse_batches,
    parse_provider_list,
    progress_bars,
    providers_option,
    remote_options,
    take_options,
    target_options,
    target_progress,
)
from resnet_edge.evaluation.options import BenchmarkOptions, ValidateOptions
from resnet_edge.models.registry import list_models


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--reference", help="FP32 .onnx, or a checkpoint (with --arch). [default: the built-in checkpoint]")
@click.option("--arch", type=click.Choice(list_models()), help="Arch of a reference checkpoint. [default: recorded]")
@options_from(ValidateOptions, overrides={"providers": providers_option})
@target_options
@json_option
def validate(
    models,
    reference,
    arch,
    targets,
    remote_python,
    connect_timeout,
    ssh_config,
    as_json,
    **fields,
) -> None:
    """Compare ONNX models with their PyTorch (or FP32 ONNX) reference on each provider; fail on a miss.

    With --target, the models run on the devices; the inputs are preprocessed and the outputs judged here.
    """
    from resnet_edge.evaluation.validate import Reference, require_passed, validate_models

    ref = Reference.parse(reference, arch=arch) if reference else None
    options = take_options(ValidateOptions, fields, providers=parse_provider_list(fields["providers"]))
    remote = remote_options(targets, remote_python, connect_timeout, ssh_config)
    if targets:
        return _validate_on_targets(models, ref, options, targets, remote, as_json)
    result = validate_models(list(models), ref, options)
    if as_json:
        render.emit_json(result)
    else:
        click.echo(
            f"reference: {result.reference}; data: {result.data} ({result.images} images,"
            f" {'labelled' if result.labelled else 'unlabelled'}"
            + (
                f"; {result.calibration_excluded} left out as calibration images)"
                if result.calibration_excluded
                else ")"
            )
        )
        click.echo(_validate_table([(None, r) for r in result.rows]))
        _absent_lines(None, result)
        # Named by the provider that really ran (a fallback's run is the cpu row's: one line, not two).
        render.audit_lines("placement", [(r.model, r.ran_on, r.placement) for r in result.rows])
        render.audit_lines("int8 coverage", [(r.model, r.ran_on, r.coverage) for r in result.rows])
    require_passed(result)


def _absent_lines(target: str | None, result) -> None:
    """One line per requested provider that ran nothing: its rows are cpu's figures, not its own."""
    for provider in result.absent_providers:
        ran = sorted({r.ran_on for r in result.rows if r.provider == provider})
        where = f"on {target}" if target else "here"
        click.echo(
            f"requested {provider}: not available {where}; its rows ran on {', '.join(ran)} and are not {provider}"
            " results (--strict-ep makes this an error)"
        )


def _validate_on_targets(models, ref, options, targets, remote, as_json) -> None:
    from resnet_edge.device.fleet import parse_targets, validate_on_targets
    from resnet_edge.errors import ResnetEdgeError
    from resnet_edge.evaluation.validate import ValidationFailedError

    fleet = validate_on_targets(
        list(models), parse_targets(targets), ref, options, remote, on_progress=None if as_json else target_progress
    )
    done = {name: result for name, result in fleet.results.items() if result is not None}
    if as_json:
        render.emit_json(fleet)
    else:
        first = next(iter(done.values()), None)
        _device_lines(fleet.targets)
        if first is not None:
            click.echo(
                f"reference: {first.reference}; data: {first.data} ({first.images} images,"
                f" {'labelled' if first.labelled else 'unlabelled'}), judged here"
            )
            click.echo(_validate_table([(name, r) for name, result in done.items() for r in result.rows]))
            for name, result in done.items():
                _absent_lines(name, result)
            render.audit_lines(
                "placement",
                [(f"{name}: {r.model}", r.ran_on, r.placement) for name, result in done.items() for r in result.rows],
            )
            render.audit_lines(
                "int8 coverage",
                [(f"{name}: {r.model}", r.ran_on, r.coverage) for name, result in done.items() for r in result.rows],
            )
    errors: list[ResnetEdgeError] = [ResnetEdgeError(run.error) for run in fleet.targets if not run.ok]
    errors += [ValidationFailedError(result, where=name) for name, result in done.items() if not result.passed]
    _raise_last(errors)


def _raise_last(errors: list) -> None:
    """Every error but the last as its own ``error:`` line (targets fail apart); the last is raised (the exit)."""
    for error in errors[:-1]:
        click.echo(f"error: {error}", err=True)
    if errors:
        raise errors[-1]


def _device_lines(runs) -> None:
    """One line of facts per target that answered: what the numbers were measured on (emulated or not)."""
    for run in runs:
        if run.ok:
            d = run.device
            features = ", ".join(k for k, v in d.features.items() if v) or "none of note"
            board = f"{d.board}; " if d.board else ""
            threads = f"; {fmt.count(run.threads, 'thread')}" if run.threads else ""
            click.echo(
                f"{run.target}: {board}{d.cpu_model}, {d.usable_cores} cores ({features}); {d.os};"
                f" onnxruntime {d.onnxruntime} ({', '.join(d.onnxruntime_providers)}){threads}"
            )


def _verdict(row) -> str:
    """pass or FAIL; a row that fell back says so instead of passing as the provider asked for (issue 22)."""
    if row.fell_back:
        return f"fell back to {row.ran_on}" if row.passed else f"FAIL (fell back to {row.ran_on})"
    return "pass" if row.passed else "FAIL"


def _validate_table(rows) -> str:
    """(target or None, row) pairs as the validate table; a target column when any row has one. ``steps``: an INT8
    model's max abs logit error in units of its output's quantisation step."""
    with_target = any(target for target, _ in rows)
    return render.table(
        [
            *(["target"] if with_target else []),
            "model",
            "provider",
            "ran on",
            "max abs",
            "steps",
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
                *([target] if with_target else []),
                r.model,
                r.provider,
                r.ran_on,
                fmt.error(r.parity.max_abs_error),
                f"{r.max_error_steps:.2f}" if r.max_error_steps is not None else fmt.MISSING,
                fmt.error(r.parity.mean_abs_error),
                fmt.cosine(r.parity.cosine),
                fmt.percent(r.parity.top1_agreement),
                fmt.percent(r.parity.top5_overlap),
                fmt.error(r.parity.kl_divergence),
                fmt.percent(r.accuracy.top1) if r.accuracy else fmt.MISSING,
                fmt.percent(r.reference_accuracy.top1) if r.reference_accuracy else fmt.MISSING,
                fmt.points(r.top1_drop_points),
                _verdict(r),
            ]
            for target, r in rows
        ],
    )


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@options_from(
    BenchmarkOptions,
    overrides={
        "providers": providers_option,
        "batch_sizes": {"type": str, "default": "1"},  # comma-separated: parse_batches reads it
    },
)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Also write the JSON result here.")
@target_options
@json_option
def benchmark(
    models,
    output,
    targets,
    remote_python,
    connect_timeout,
    ssh_config,
    as_json,
    **fields,
) -> None:
    """Time models side by side (round-robin): cold start, p50/p90/p99, throughput, ratios to the first.

    With --target, the device runner times them on each device (the same timing code), one row per
    (target, model, provider, batch).
    """
    from resnet_edge.artifacts import refuse_overwriting_inputs, require_writable_destination, write_json_atomic
    from resnet_edge.jsonable import to_jsonable

    if output is not None:
        require_writable_destination(output)
        refuse_overwriting_inputs(
            [output], [*models, fields["data"], fields["torch_reference"]], command="benchmark output"
        )
    options = take_options(
        BenchmarkOptions,
        fields,
        providers=parse_provider_list(fields["providers"]),
        batch_sizes=parse_batches(fields["batch_sizes"]),
    )
    remote = remote_options(targets, remote_python, connect_timeout, ssh_config)
    if targets:
        return _benchmark_on_targets(models, options, targets, remote, output, as_json)
    from resnet_edge.evaluation.benchmark import benchmark_models

    with progress_bars(True, steps=True) as bars:  # on stderr, with --json too (stdout holds the JSON alone)
        result = benchmark_models(list(models), options, on_progress=bars)
    if output is not None:
        write_json_atomic(output, to_jsonable(result))
    if as_json:
        return render.emit_json(result)
    cpu = result.environment.cpu
    click.echo(
        f"{cpu.model}, {cpu.logical_cores} cores ({', '.join(k for k, v in cpu.features.items() if v)});"
        f" {fmt.count(result.threads, 'thread')}, {result.threading['timed']}"
        f" ({'spinning' if result.options.spinning else 'not spinning'});"
        f" {', '.join(f'{k}: {v}' for k, v in result.io.items())}"
    )
    click.echo(_benchmark_table(result.rows))
    render.audit_lines(
        "placement", [(r.model, r.provider, r.placement) for r in result.rows if r.batch == result.rows[0].batch]
    )
    render.audit_lines("int8 coverage", [(r.model, r.provider, r.coverage) for r in result.rows])


def _benchmark_on_targets(models, options, targets, remote, output, as_json) -> None:
    """benchmark --target: the devices' facts and rows; each target that failed is an ``error:`` line."""
    from resnet_edge.artifacts import write_json_atomic
    from resnet_edge.device.fleet import benchmark_on_targets, parse_targets
    from resnet_edge.errors import ResnetEdgeError
    from resnet_edge.jsonable import to_jsonable

    fleet = benchmark_on_targets(
        list(models),
        parse_targets(targets),
        options,
        remote,
        on_progress=None if as_json else target_progress,
    )
    if output is not None:
        write_json_atomic(output, to_jsonable(fleet))
    if as_json:
        render.emit_json(fleet)
    else:
        _device_lines(fleet.targets)
        if fleet.rows:
            click.echo(_benchmark_table(fleet.rows))
            rows = [r for r in fleet.rows if r.batch == fleet.rows[0].batch]
            render.audit_lines("placement", [(f"{r.target}: {r.model}", r.provider, r.placement) for r in rows])
            render.audit_lines("int8 coverage", [(f"{r.target}: {r.model}", r.provider, r.coverage) for r in rows])
    _raise_last([ResnetEdgeError(run.error) for run in fleet.targets if not run.ok])


def _benchmark_table(rows) -> str:
    """Benchmark rows as a table; a target column first when the rows come from target devices."""
    with_target = any(r.target for r in rows)
    return "\n".join(
        [
            render.table(
                [
                    *(["target"] if with_target else []),
                    "model",
                    "provider",
                    "ran on",
                    "batch",
                    "cold ms",
                    "mean ms",
                    "std ms",
                    "min ms",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "max ms",
                    "img/s",
                    "CV",
                    fmt.SPEEDUP_COLUMN,
                ],
                [
                    [
                        *([r.target] if with_target else []),
                        r.model,
                        r.provider,
                        r.ran_on,
                        r.batch,
                        fmt.ms(r.cold_start_ms),
                        *(
                            [
                                *(
                                    fmt.ms(v)
                                    for v in (
                                        r.latency.mean_ms,
                                        r.latency.std_ms,
                                        r.latency.min_ms,
                                        r.latency.p50_ms,
                                        r.latency.p90_ms,
                                        r.latency.p99_ms,
                                        r.latency.max_ms,
                                    )
                                ),
                                fmt.throughput(r.latency.throughput),
                                fmt.cv(r.latency.cv),
                            ]
                            if r.latency
                            else [fmt.MISSING] * 9
                        ),
                        fmt.ratio(r.speedup) if r.speedup else (r.skipped or fmt.MISSING),
                    ]
                    for r in rows
                ],
            ),
            f"{fmt.SPEEDUP_COLUMN}: the first model's p50 divided by this row's (higher is faster)",
        ]
    )


@click.command()
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), default=Path("runner.pyz"), show_default=True, help="File."
)
@json_option
def runner(output, as_json) -> None:
    """Write the device runner: one file that needs only Python 3.8+, numpy and onnxruntime on the device."""
    from resnet_edge.device.bundle import write_runner

    written = write_runner(output)
    if as_json:
        return render.emit_json(written)
    click.echo(f"wrote {written.path} ({render.size(written.size_bytes)}, sha256 {written.sha256[:16]}...)")
    click.echo(f"on the device: python3 {written.path.name} JOB.json  (or --facts); needs Python {written.python},")
    click.echo("numpy and onnxruntime. resnet-edge benchmark/validate --target ssh://HOST copy it there for you.")


@click.command()
@json_option
def doctor(as_json) -> None:
    """Versions, execution providers, CPU features for INT8, GPUs, and known installation problems."""
    from resnet_edge.environment import collect_environment

    env = collect_environment()
    if as_json:
        render.emit_json(env)
        return _require_no_problems(env.problems)
    click.echo(f"python {env.python} on {env.platform}")
    for name, ver in env.packages.items():
        click.echo(f"  {name:24} {ver or 'not installed'}")
    click.echo(f"onnxruntime providers: {', '.join(env.onnxruntime_providers)}")
    for p in env.providers:
        mark = "yes" if p["available"] else "no "
        click.echo(f"  {mark} {p['name']:10} {p['via']}" + ("" if p["available"] else f"; to add: {p['install']}"))
    features = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in env.cpu.features.items())
    click.echo(f"cpu: {env.cpu.model} ({env.cpu.architecture}, {env.cpu.logical_cores} logical cores): {features}")
    click.echo(f"gpu: {', '.join(env.gpus) or 'none found'}")
    if env.onnxruntime_providers:
        from resnet_edge.quantization.configs import detect_target, resolve_config

        config = resolve_config(detect_target())
        click.echo(f"INT8 target for this machine: {config.target.value} ({config.reason})")
    for problem in env.problems:
        click.echo(f"problem: {problem}", err=True)
    _require_no_problems(env.problems)


def _require_no_problems(problems: list[str]) -> None:
    """Raises: CheckFailedError: the environment has problems (a check that found something wrong does not exit 0)."""
    from resnet_edge.errors import CheckFailedError

    if problems:
        raise CheckFailedError(f"{fmt.count(len(problems), 'installation problem')} found (resnet-edge doctor)")
