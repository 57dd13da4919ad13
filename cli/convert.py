"""Commands that make model files: export, simplify, quantize; and inspect, which reads one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from resnet_edge import formatting as fmt
from resnet_edge.cli import render
from resnet_edge.cli.options import (
    SEED,
    derived_path,
    field_option,
    json_option,
    options_from,
    parse_batch,
    parse_provider_list,
    progress_bars,
    take_options,
)
from resnet_edge.conversion.options import ExportOptions, SimplifyOptions
from resnet_edge.models.registry import list_models
from resnet_edge.quantization.options import AccuracyGoal, QuantizeOptions

if TYPE_CHECKING:  # annotations only: the commands import the library lazily, so --help stays fast
    from resnet_edge.quantization.mixed_precision import MixedPrecisionResult
    from resnet_edge.quantization.quantize import QuantizeResult


@click.command()
@click.option(
    "--weights", type=click.Path(path_type=Path), help="Checkpoint (.pt, .pth, .safetensors); random init if omitted."
)
@options_from(
    ExportOptions,
    overrides={
        "arch": {"type": click.Choice(list_models())},  # registered names, not an enum
        "batch": {"type": str, "default": "dynamic"},  # 'dynamic' or a number: parse_batch reads it
    },
)
@click.option(
    "--labels", "labels_file", type=click.Path(path_type=Path), help="Text file with one class name per line."
)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file. [default: model.onnx]")
@json_option
def export(weights, labels_file, output, as_json, **fields) -> None:
    """Export a ResNet to ONNX, verified against PyTorch at batch 1 and another batch size."""
    from resnet_edge.artifacts import refuse_overwriting_inputs
    from resnet_edge.conversion.export import export_onnx, read_labels_file

    output = output or Path("model.onnx")
    refuse_overwriting_inputs([output], [weights, labels_file], command="export output")
    options = take_options(
        ExportOptions,
        fields,
        batch=parse_batch(fields["batch"]),
        labels=read_labels_file(labels_file) if labels_file else None,
    )
    with progress_bars(True, steps=True) as bars:  # a ResNet-50 takes half a minute: say which step (on stderr)
        result = export_onnx(weights, output, options, on_progress=bars)
    if as_json:
        return render.emit_json(result)
    click.echo(
        f"wrote {result.output} ({render.size(result.file_bytes)}): {result.arch} ({result.variant}),"
        f" {result.num_classes} classes, input {list(result.input_shape)}, opset {result.opset},"
        f" {result.exporter} exporter, BatchNormalization nodes {result.batch_norm_nodes}"
        f" ({'folded into Conv' if options.fold_bn else 'kept'})"
    )
    click.echo(
        render.table(
            ["batch", "max abs error", "cosine", "top-1 agreement", "vs PyTorch"],
            [
                [size, fmt.error(p.max_abs_error), fmt.cosine(p.min_cosine), fmt.percent(p.top1_agreement), "ok"]
                for size, p in result.parity.items()
            ],
        )
    )


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file. [default: MODEL.sim.onnx]")
@options_from(SimplifyOptions)
@json_option
def simplify(model, output, as_json, **fields) -> None:
    """Simplify with onnxsim; verify every BatchNormalization is folded and outputs are unchanged."""
    from resnet_edge.conversion.simplify import simplify_onnx

    result = simplify_onnx(model, output or derived_path(model, ".sim"), take_options(SimplifyOptions, fields))
    if as_json:
        return render.emit_json(result)
    click.echo(
        f"wrote {result.output} ({render.size(result.bytes_after)}) with onnxsim {result.onnxsim_version}"
        f" in {fmt.seconds(result.seconds)}"
    )
    click.echo(
        f"BatchNormalization: {result.batch_norm_before} before, {len(result.batch_norm_remaining)} after"
        f" ({result.batch_norm_folded} folded into Conv)"
    )
    for name, producer in result.batch_norm_remaining:
        click.echo(f"  kept {name} (fed by {producer}, nothing to fold into)")
    ops = sorted(set(result.ops_before) | set(result.ops_after))
    click.echo(
        render.table(
            ["op", "before", "after"], [[op, result.ops_before.get(op, 0), result.ops_after.get(op, 0)] for op in ops]
        )
    )
    click.echo(
        render.table(
            ["batch", "max abs error", "top-1 agreement", "vs input"],
            [
                [size, fmt.error(p.max_abs_error), fmt.percent(p.top1_agreement), "ok"]
                for size, p in result.parity.items()
            ],
        )
    )


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@json_option
def inspect(model, as_json) -> None:
    """Describe an ONNX model: I/O, opset, ops, parameters, MACs, metadata, remaining BatchNorms."""
    from resnet_edge.onnx.inspection import inspect_onnx

    result = inspect_onnx(model)
    if as_json:
        return render.emit_json(result)
    click.echo(f"{result.path}: {render.size(result.file_bytes)}, opset {result.opset}, producer {result.producer}")
    for kind, tensors in (("input", result.inputs), ("output", result.outputs)):
        for t in tensors:
            click.echo(f"  {kind:6} {t.name}: {t.dtype} {t.shape}")
    click.echo(
        f"  parameters {result.parameters:,}, {result.macs_per_image / 1e6:,.1f} M MACs per image,"
        f" {'INT8 quantized' if result.quantized else 'floating point'}"
    )
    click.echo(f"  BatchNormalization nodes: {len(result.batch_norm_nodes)}")
    click.echo(f"  ops: {render.ops_line(result.op_counts)}")
    for key, value in result.metadata.items():
        click.echo(f"  {key}: {value if len(value) <= 100 else value[:97] + '...'}")


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file. [default: MODEL.int8.onnx]")
@options_from(
    QuantizeOptions,
    overrides={
        "seed": {"type": SEED},
        "provider": click.option(
            "--providers",
            "provider",
            default="cpu",
            show_default=True,
            help="The provider INT8 is checked on (one): cpu, cuda, tensorrt, openvino, ep:NAME, with [key=value]"
            " options.",
        ),
        "allow_accuracy_drop": None,  # after the accuracy goal's flags, below
    },
)
@options_from(AccuracyGoal)
@field_option(QuantizeOptions, "allow_accuracy_drop")
@json_option
def quantize(model, output, as_json, **fields) -> None:
    """Quantize to INT8 from calibration images; report agreement with FP32 on held-out images.

    With --max-top1-drop or --min-agreement, blocks are kept in FP32, most sensitive first, until the target holds.
    """
    from resnet_edge.quantization.quantize import quantize_onnx

    options = take_options(QuantizeOptions, fields, provider=_one_provider(fields["provider"]))
    goal = take_options(AccuracyGoal, fields)
    output = output or derived_path(model, ".int8")
    if goal.given:
        from resnet_edge.quantization.mixed_precision import SearchStep, quantize_mixed_precision

        def show_step(step: SearchStep) -> None:
            if not as_json:
                click.echo(
                    f"step {step.step}: FP32 {', '.join(step.fp32_blocks) or 'none'}: top-1 agreement"
                    f" {render.percent(step.top1_agreement)}"
                    f"{'' if step.met else ', target missed'}",
                    err=True,
                )

        with progress_bars(not as_json) as on_progress:
            mixed = quantize_mixed_precision(
                model,
                output,
                options,
                goal=goal,
                on_progress=on_progress,
                on_step=show_step,
            )
        if as_json:
            return render.emit_json(mixed)
        _print_quantize(mixed.quantize)
        _print_mixed_precision(mixed, model, output, options)
        return None
    with progress_bars(not as_json) as on_progress:
        result = quantize_onnx(model, output, options, on_progress=on_progress)
    if as_json:
        return render.emit_json(result)
    _print_quantize(result)


def _print_quantize(result: QuantizeResult) -> None:
    c = result.config
    click.echo(
        f"wrote {result.output} ({render.size(result.bytes_after)}, FP32 {render.size(result.bytes_before)})"
        f" and {result.sidecar.name}"
    )
    click.echo(
        f"config: {c.target.value}: {c.format.value}, activations {c.activation_type}, weights"
        f" {c.weight_type} {'per-channel' if c.per_channel else 'per-tensor'}"
        f"{', reduce_range' if c.reduce_range else ''}; {result.method} calibration ({c.reason})"
    )
    skipped = f", {result.skipped_files} non-image files skipped" if result.skipped_files else ""
    if result.calibration_source == "builtin:photos":
        from resnet_edge.quantization.calibrate import BUNDLED_PHOTOS_NOTE

        skipped += f" ({BUNDLED_PHOTOS_NOTE})"
    click.echo(
        f"calibrated on {result.calibration_images} images from {result.calibration_source}{skipped};"
        f" {result.quantized_nodes} compute nodes quantized, FP32 kept: {', '.join(result.fp32_nodes) or 'none'}"
    )
    p = result.parity
    rows = [
        ["top-1 agreement with FP32", render.percent(p.top1_agreement)],
        ["logit cosine (mean)", fmt.cosine(p.cosine)],
        ["max abs logit error", fmt.error(p.max_abs_error)],
    ]
    if result.judged_by == "logit error":
        click.echo(
            "judged by logit error, not top-1 agreement: the weights are random (their agreement measures noise)"
        )
        rows += [["logit cosine (worst image)", fmt.cosine(p.min_cosine)]]
        if result.max_error_steps is not None:
            rows += [["max logit error, output steps", f"{result.max_error_steps:.1f}"]]
    if result.fp32_accuracy and result.int8_accuracy:
        rows += [
            [
                "top-1 accuracy FP32 -> INT8",
                f"{render.percent(result.fp32_accuracy.top1)} -> {render.percent(result.int8_accuracy.top1)}",
            ]
        ]
    if result.speed:
        rows += [
            [
                "latency p50 FP32 -> INT8 (batch 1)",
                f"{fmt.ms(result.speed.fp32_p50_ms, unit=True)} -> {fmt.ms(result.speed.int8_p50_ms, unit=True)}"
                f" ({fmt.ratio(result.speed.speedup)})",
            ]
        ]
    if result.coverage is not None:
        click.echo(f"on {result.provider}: {result.coverage.describe()}")
    overlap = f", {result.overlap_excluded} dropped as calibration images" if result.overlap_excluded else ""
    click.echo(f"held-out evaluation: {result.evaluation_images} images from {result.evaluation_source}{overlap}")
    click.echo(render.table(["metric", "value"], rows))
    _print_recovery(result)


def _print_recovery(result: QuantizeResult) -> None:
    """The accuracy-recovery steps, each judged before and after (see the record's ``accuracy_recovery``)."""
    if result.weight_grid:
        click.echo(f"weights: {result.weight_grid.grid}, written by resnet-edge")
    if result.config.weight_bits == 4:
        click.echo(
            "int4 weights: on the CPU EP they are dequantized and the convolutions run in FP32 (see the"
            " integer line above); the gain is file size and NPU support, not CPU speed"
        )
    if not result.recovery:
        return

    def judged(j, what: str) -> str:
        if j is None:
            return "-"
        value = j.top1 if what == "top1" else j.top1_agreement
        return render.percent(value) if value is not None else "-"

    rows = [
        [
            step.name,
            f"{judged(step.before, 'agreement')} -> {judged(step.after, 'agreement')}",
            f"{judged(step.before, 'top1')} -> {judged(step.after, 'top1')}",
            fmt.seconds(step.seconds),
        ]
        for step in result.recovery
    ]
    click.echo(f"accuracy recovery ({result.recovery_judged or None}):")
    click.echo(render.table(["step", "top-1 agreement", "top-1 accuracy", "time"], rows))


def _print_mixed_precision(mixed: MixedPrecisionResult, model: Path, output: Path, options: QuantizeOptions) -> None:
    click.echo(
        f"mixed precision: target {mixed.target.describe()}; blocks ranked by logit SQNR with only that block"
        " INT8 (lower = more sensitive): "
        + (", ".join(f"{r.block} {r.sensitivity_db:.1f} dB" for r in mixed.ranking) or "not needed")
    )
    rows = []
    for s in mixed.steps:
        rows.append(
            [
                s.step,
                ", ".join(s.fp32_blocks) or "none",
                len(s.fp32_nodes),
                render.percent(s.top1_agreement),
                render.percent(s.int8_top1) if s.int8_top1 is not None else "-",
                fmt.points(s.top1_drop_points),
                fmt.ms(s.p50_ms),
                fmt.ratio(s.speedup),
                "yes" if s.met else "no",
            ]
        )
    click.echo(
        render.table(
            [
                "step",
                "FP32 blocks",
                "FP32 convs",
                "top-1 agreement",
                "INT8 top-1",
                "drop (pts)",
                "p50 ms",
                fmt.SPEEDUP_COLUMN,
                "target met",
            ],
            rows,
        )
    )
    if mixed.fp32_p50_ms is not None:
        click.echo(
            f"FP32 p50 {fmt.ms(mixed.fp32_p50_ms, unit=True)}, timed side by side with every step (batch 1,"
            f" {mixed.timing_iterations} rounds)"
        )
    needs_drop = bool(mixed.quantize.shortfalls)
    click.echo("reproduce: " + _quantize_command(model, output, options, mixed.exclude, allow_drop=needs_drop))


def _quantize_command(
    model: Path, output: Path, options: QuantizeOptions, exclude: list[str], *, allow_drop: bool
) -> str:
    """A ``resnet-edge quantize`` command line that rebuilds the chosen model with plain --exclude; with
    ``--allow-accuracy-drop`` only where the model misses quantize's default bar (the search's target accepted it)."""
    import shlex

    args = ["resnet-edge", "quantize", str(model), "-o", str(output)]
    for flag, value in (
        ("--calib", options.calib),
        ("--eval-data", options.eval_data),
        ("--label-map", options.label_map),
        ("--limit", options.limit),
        ("--format", options.format and options.format.value),
    ):
        if value is not None:
            args += [flag, str(value)]
    if options.method.value != "minmax":
        args += ["--method", options.method.value]
    if options.per_channel is not None:
        args.append("--per-channel" if options.per_channel else "--per-tensor")
    if options.target.value != "auto":
        args += ["--target", options.target.value]
    if options.seed:
        args += ["--seed", str(options.seed)]
    for item in exclude:
        args += ["--exclude", item]
    if allow_drop:
        args.append("--allow-accuracy-drop")
    return shlex.join(args)


def _one_provider(text: str):
    from resnet_edge.errors import OptionError

    providers = parse_provider_list(text)
    if len(providers) != 1:
        raise OptionError(f"quantize checks INT8 on one provider, got {len(providers)}: {text}")
    return providers[0]
