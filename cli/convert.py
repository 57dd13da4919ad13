"""Commands that make model files: export, simplify, quantize; and inspect, which reads one."""

from __future__ import annotations

from pathlib import Path

import click

from resnet_edge.cli import render
from resnet_edge.cli.options import derived_path, json_option, parse_batch
from resnet_edge.models import Variant, list_models


@click.command()
@click.option("--arch", type=click.Choice(list_models()), help="Architecture; optional when --weights records it.")
@click.option("--weights", type=click.Path(path_type=Path), help="Checkpoint (.pt, .pth, .safetensors); random init if omitted.")
@click.option("--num-classes", type=int, help="Classes; default: the checkpoint's, else 1000 / 10.")
@click.option("--in-chans", type=int, help="Input channels; default: the checkpoint's, else 3.")
@click.option("--variant", type=click.Choice([v.value for v in Variant]), default="residual", show_default=True)
@click.option("--input-size", type=int, help="Input side in pixels; default: the checkpoint's, else 224 / 32.")
@click.option("--opset", type=int, default=None, help="ONNX opset (refused if the exporter cannot write it). [default: 17]")
@click.option("--batch", default="dynamic", show_default=True, help="'dynamic' or a fixed batch size.")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True)
@click.option("--labels", "labels_file", type=click.Path(path_type=Path), help="Text file with one class name per line.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file. [default: model.onnx]")
@json_option
def export(arch, weights, num_classes, in_chans, variant, input_size, opset, batch, exporter, labels_file, output,
           as_json) -> None:
    """Export a ResNet to ONNX, verified against PyTorch at batch 1 and another batch size."""
    from resnet_edge.export import DEFAULT_OPSET, Exporter, ExportOptions, export_onnx, read_labels_file

    options = ExportOptions(
        arch=arch, weights=weights, num_classes=num_classes, in_chans=in_chans, variant=variant,
        input_size=input_size, opset=opset or DEFAULT_OPSET, batch=parse_batch(batch),
        exporter=Exporter(exporter), labels=read_labels_file(labels_file) if labels_file else None,
    )
    result = export_onnx(options, output or Path("model.onnx"))
    if as_json:
        return render.emit_json(result)
    click.echo(f"wrote {result.output} ({render.size(result.file_bytes)}): {result.arch} ({result.variant}),"
               f" {result.num_classes} classes, input {list(result.input_shape)}, opset {result.opset},"
               f" {result.exporter} exporter")
    click.echo(render.table(
        ["batch", "max abs error", "cosine", "top-1 agreement", "vs PyTorch"],
        [[size, p.max_abs_error, p.min_cosine, render.percent(p.top1_agreement), "ok"]
         for size, p in result.parity.items()],
    ))


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file. [default: MODEL.sim.onnx]")
@click.option("--allow-unfolded-bn", is_flag=True, help="Keep BatchNorms with no conv to fold into (pre-activation nets).")
@click.option("--timeout", "timeout_s", type=float, default=300.0, show_default=True, help="Seconds onnxsim may run.")
@json_option
def simplify(model, output, allow_unfolded_bn, timeout_s, as_json) -> None:
    """Simplify with onnxsim; verify every BatchNormalization is folded and outputs are unchanged."""
    from resnet_edge.simplify import simplify_onnx

    result = simplify_onnx(model, output or derived_path(model, ".sim"), allow_unfolded_bn=allow_unfolded_bn,
                           timeout_s=timeout_s)
    if as_json:
        return render.emit_json(result)
    click.echo(f"wrote {result.output} ({render.size(result.bytes_after)}) with onnxsim {result.onnxsim_version}"
               f" in {result.seconds:.1f} s")
    click.echo(f"BatchNormalization: {result.batch_norm_before} before, {len(result.batch_norm_remaining)} after"
               f" ({result.batch_norm_folded} folded into Conv)")
    for name, producer in result.batch_norm_remaining:
        click.echo(f"  kept {name} (fed by {producer}, nothing to fold into)")
    ops = sorted(set(result.ops_before) | set(result.ops_after))
    click.echo(render.table(["op", "before", "after"],
                            [[op, result.ops_before.get(op, 0), result.ops_after.get(op, 0)] for op in ops]))
    click.echo(render.table(
        ["batch", "max abs error", "top-1 agreement", "vs input"],
        [[size, p.max_abs_error, render.percent(p.top1_agreement), "ok"] for size, p in result.parity.items()],
    ))


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@json_option
def inspect(model, as_json) -> None:
    """Describe an ONNX model: I/O, opset, ops, parameters, MACs, metadata, remaining BatchNorms."""
    from resnet_edge.inspection import inspect_onnx

    result = inspect_onnx(model)
    if as_json:
        return render.emit_json(result)
    click.echo(f"{result.path}: {render.size(result.file_bytes)}, opset {result.opset}, producer {result.producer}")
    for kind, tensors in (("input", result.inputs), ("output", result.outputs)):
        for t in tensors:
            click.echo(f"  {kind:6} {t.name}: {t.dtype} {t.shape}")
    click.echo(f"  parameters {result.parameters:,}, {result.macs_per_image / 1e6:,.1f} M MACs per image,"
               f" {'INT8 quantized' if result.quantized else 'floating point'}")
    click.echo(f"  BatchNormalization nodes: {len(result.batch_norm_nodes)}")
    click.echo(f"  ops: {render.ops_line(result.op_counts)}")
    for key, value in result.metadata.items():
        click.echo(f"  {key}: {value if len(value) <= 100 else value[:97] + '...'}")


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file. [default: MODEL.int8.onnx]")
@click.option("--calib", help="Calibration images: folder, .npy/.npz, or builtin:NAME. [default: built-in]")
@click.option("--eval-data", help="Held-out images to judge INT8 on. [default: built-in test split / held-out quarter]")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True)
@click.option("--per-channel/--per-tensor", default=None, help="Weight granularity. [default: the target's]")
@click.option("--format", "quant_format", type=click.Choice(["qdq", "qoperator"]), help="[default: the target's]")
@click.option("--target", type=click.Choice(["auto", "x86-vnni", "x86-avx2", "arm64", "gpu-tensorrt"]), default="auto",
              show_default=True, help="Hardware to choose the configuration for; auto detects this CPU.")
@click.option("--exclude", multiple=True, help="Node name or module path (layer1.0, fc) to keep in FP32; repeatable.")
@click.option("--limit", type=int, help="Calibrate on this many images, drawn with --seed.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-speed", is_flag=True, help="Skip the FP32 vs INT8 timing.")
@json_option
def quantize(model, output, calib, eval_data, method, per_channel, quant_format, target, exclude, limit, seed,
             no_speed, as_json) -> None:
    """Quantize to INT8 from calibration images; report agreement with FP32 on held-out images."""
    from resnet_edge.quantize import Format, Method, QuantizeOptions, Target, quantize_onnx

    options = QuantizeOptions(
        calib=calib, eval_data=eval_data, method=Method(method), per_channel=per_channel,
        format=Format(quant_format) if quant_format else None, target=Target(target), exclude=tuple(exclude),
        limit=limit, seed=seed, measure_speed=not no_speed,
    )
    result = quantize_onnx(model, output or derived_path(model, ".int8"), options, progress=not as_json)
    if as_json:
        return render.emit_json(result)
    c = result.config
    click.echo(f"wrote {result.output} ({render.size(result.bytes_after)}, FP32 {render.size(result.bytes_before)})"
               f" and {result.sidecar.name}")
    click.echo(f"config: {c.target.value}: {c.format.value}, activations {c.activation_type}, weights"
               f" {c.weight_type} {'per-channel' if c.per_channel else 'per-tensor'}"
               f"{', reduce_range' if c.reduce_range else ''}; {result.method} calibration ({c.reason})")
    skipped = f", {result.skipped_files} non-image files skipped" if result.skipped_files else ""
    click.echo(f"calibrated on {result.calibration_images} images from {result.calibration_source}{skipped};"
               f" {result.quantized_nodes} compute nodes quantized, FP32 kept: {', '.join(result.fp32_nodes) or 'none'}")
    p = result.parity
    rows = [["top-1 agreement with FP32", render.percent(p.top1_agreement)],
            ["logit cosine (mean)", f"{p.cosine:.5f}"], ["max abs logit error", f"{p.max_abs_error:.4g}"]]
    if result.fp32_accuracy and result.int8_accuracy:
        rows += [["top-1 accuracy FP32 -> INT8", f"{render.percent(result.fp32_accuracy.top1)} ->"
                                                  f" {render.percent(result.int8_accuracy.top1)}"]]
    if result.speed:
        rows += [["latency p50 FP32 -> INT8 (batch 1)", f"{result.speed.fp32_p50_ms:.2f} ms -> "
                                                        f"{result.speed.int8_p50_ms:.2f} ms ({result.speed.speedup:.2f}x)"]]
    overlap = f", {result.overlap_excluded} dropped as calibration images" if result.overlap_excluded else ""
    click.echo(f"held-out evaluation: {result.evaluation_images} images from {result.evaluation_source}{overlap}")
    click.echo(render.table(["metric", "value"], rows))
