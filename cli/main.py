"""The ``resnet-edge`` command: parse options, call one library function, print its result.

No logic lives here. A :class:`~resnet_edge.errors.ResnetEdgeError` is printed as one ``error:`` line with a
non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from resnet_edge import __version__
from resnet_edge.cli import render
from resnet_edge.errors import ResnetEdgeError
from resnet_edge.models import Variant, list_models

INTERRUPTED_EXIT = 130


class _Group(click.Group):
    """Turns user errors into one line and a non-zero exit, and Ctrl-C into a clean exit."""

    def invoke(self, ctx: click.Context) -> object:
        render.install_warning_printer()
        try:
            return super().invoke(ctx)
        except ResnetEdgeError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: no partial output was kept", err=True)
            ctx.exit(INTERRUPTED_EXIT)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", prog_name="resnet-edge")
def main() -> None:
    """Take a PyTorch ResNet to an edge-ready ONNX model: export, simplify, quantize, validate, benchmark."""


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def _positive_or_dynamic(value: str) -> int | None:
    if value == "dynamic":
        return None
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter(f"expected 'dynamic' or a positive integer, got {value!r}")
    return int(value)


@main.command()
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
        input_size=input_size, opset=opset or DEFAULT_OPSET, batch=_positive_or_dynamic(batch),
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


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file. [default: MODEL.sim.onnx]")
@click.option("--allow-unfolded-bn", is_flag=True, help="Keep BatchNorms with no conv to fold into (pre-activation nets).")
@click.option("--timeout", "timeout_s", type=float, default=300.0, show_default=True, help="Seconds onnxsim may run.")
@json_option
def simplify(model, output, allow_unfolded_bn, timeout_s, as_json) -> None:
    """Simplify with onnxsim; verify every BatchNormalization is folded and outputs are unchanged."""
    from resnet_edge.simplify import simplify_onnx

    result = simplify_onnx(model, output or _derived(model, ".sim"), allow_unfolded_bn=allow_unfolded_bn,
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


@main.command()
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


def _derived(model: Path, tag: str) -> Path:
    """``model.onnx`` -> ``model<tag>.onnx`` beside it."""
    return model.with_name(f"{model.name.removesuffix('.onnx')}{tag}.onnx")


if __name__ == "__main__":
    sys.exit(main())
