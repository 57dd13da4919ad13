"""The tune command: the fastest deployment that still gives FP32's answers, chosen by measurement."""

from __future__ import annotations

from pathlib import Path

import click

from resnet_edge import formatting as fmt
from resnet_edge.cli import render
from resnet_edge.cli.options import (
    SEED,
    derived_path,
    json_option,
    options_from,
    parse_provider_list,
    remote_options,
    take_options,
    target_options,
    target_progress,
)
from resnet_edge.evaluation.options import TuneOptions


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="The chosen model. [default: MODEL.tuned.onnx]")
@options_from(
    TuneOptions,
    overrides={
        "providers": click.option(
            "--providers",
            help="Comma-separated providers to try (cpu, cuda, tensorrt, openvino, ep:NAME[k=v])."
            " [default: all that run here]",
        ),
        "seed": {"type": SEED},
    },
)
@target_options
@json_option
def tune(model, output, targets, remote_python, connect_timeout, ssh_config, as_json, **fields) -> None:
    """Try providers x precisions, keep the fastest candidate that passes parity against FP32, write it.

    With --target, the candidates are built here for the device's CPU and providers, judged and timed there.
    """
    from resnet_edge.errors import OptionError
    from resnet_edge.evaluation.tune import tune_model

    if len(targets) > 1:
        raise OptionError(f"tune measures on one device at a time, got {len(targets)} --target")
    remote = remote_options(targets, remote_python, connect_timeout, ssh_config)
    providers = fields["providers"]
    options = take_options(TuneOptions, fields, providers=parse_provider_list(providers) if providers else None)
    output = output or derived_path(model, ".tuned")
    if targets:
        from resnet_edge.device.fleet import tune_on_target

        progress = None if as_json else target_progress
        result = tune_on_target(model, output, options, targets[0], remote, on_progress=progress)
    else:
        result = tune_model(model, output, options)
    if as_json:
        return render.emit_json(result)
    click.echo(_candidates_table(result))
    if result.device is not None:  # the device's facts, as its runner reported them
        d = result.device
        click.echo(
            f"measured on {result.target}: {d.get('hostname')}, {d.get('cpu_model')} ({d.get('architecture')},"
            f" {d.get('usable_cores')} cores), onnxruntime {d.get('onnxruntime')}"
            f"{', EMULATED: timings are not the device' if d.get('emulated') else ''}"
        )
    if result.random_weights:
        _random_weights_lines(result.candidates)
    for c in result.candidates:
        if c.error or c.failures:
            click.echo(f"{c.name} on {c.provider}: {c.error or ', '.join(c.failures)}")
    click.echo(f"why: {result.reason}")
    click.echo(
        f"chosen: {result.chosen.name} on {result.chosen.provider} -> {result.output}"
        f" (record: {result.record}; run it with --providers {result.chosen.provider})"
    )


def _candidates_table(result) -> str:
    """Every candidate with its parity and timings, the chosen one marked."""
    batches = result.batch_sizes
    # As the other commands and the report print: milliseconds with fmt.ms, ratios with ×, the chosen row marked.
    return render.table(
        ["candidate", "provider", "ran on", "top-1 agree", "max abs", "int8 MACs", "parity"]
        + [f"p50 ms b{b}" for b in batches]
        + [f"× CPU FP32 b{b}" for b in batches]
        + ["chosen"],
        [
            [
                c.name,
                c.provider,
                c.ran_on or fmt.MISSING,
                fmt.percent(c.top1_agreement),
                fmt.error(c.max_abs_error),
                fmt.percent(c.integer_fraction),
                "pass" if c.passed else ("FAIL" if not c.error else "error"),
                *(fmt.ms_interval(c.p50_ms.get(b), c.p50_interval_ms.get(b)) for b in batches),
                *(fmt.ratio(c.speedup_vs_cpu_fp32.get(b)) for b in batches),
                fmt.CHOSEN_MARK if (c.name, c.provider) == (result.chosen.name, result.chosen.provider) else "",
            ]
            for c in result.candidates
        ],
    )


def _random_weights_lines(candidates) -> None:
    """Why the INT8 and FP16 candidates of a random-weights model were judged by logit error, and each one's."""
    click.echo(
        "INT8 and FP16 candidates judged by logit error (worst-image cosine, max error in output steps), not top-1"
        " agreement: the weights are random (their agreement measures noise)"
    )
    for c in candidates:
        if c.judged_by == "logit error" and c.max_error_steps is not None:
            click.echo(f"{c.name} on {c.provider}: max logit error {c.max_error_steps:.1f} output steps")
