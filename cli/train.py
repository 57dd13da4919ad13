"""``resnet-edge train``: a checkpoint from a folder of images, from scratch or fine-tuned."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from resnet_edge import formatting as fmt
from resnet_edge.cli import render
from resnet_edge.cli.interrupts import interrupt_exit_code
from resnet_edge.cli.options import SEED, command_line, json_option, options_from, progress_bars, take_options
from resnet_edge.models.registry import list_models
from resnet_edge.progress import Progress
from resnet_edge.training.options import TrainOptions

if TYPE_CHECKING:
    from resnet_edge.conversion.qat import QatExport


@click.command()
@click.option(
    "--data",
    required=True,
    help="Training images: a folder with one sub-folder per class (labels in sorted folder order), an .npz with"
    " labels, or builtin:NAME.",
)
@options_from(
    TrainOptions,
    overrides={"arch": {"type": click.Choice(list_models())}, "seed": {"type": SEED}},  # registered names; 0..2**32-1
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("model.safetensors"),
    show_default=True,
    help="The checkpoint (.safetensors), or with --qat the QDQ model (.onnx); NAME.metrics.json (every epoch)"
    " and, until the run completes,"
    " NAME.resume.pt go beside it.",
)
@json_option
def train(data, output, as_json, **fields) -> None:
    """Train a ResNet on a folder of images, or fine-tune a checkpoint on it, into a checkpoint that describes itself.

    After every epoch the checkpoint is written (atomically), so Ctrl-C keeps the last complete epoch and --resume
    continues from it. export, validate and pipeline take the checkpoint with no other option.
    """
    from resnet_edge.training.train import train_model

    options = take_options(TrainOptions, fields, command=command_line())
    if options.qat:
        from resnet_edge.conversion.qat import qat_onnx

        run = qat_onnx  # fine-tune with fake quantization, export, write the QDQ model
    else:
        run = train_model
    saved: list[Progress] = []
    with progress_bars(not as_json) as bars:

        def on_progress(event: Progress) -> None:
            if bars is not None:
                bars(event)
            if event.step == "epochs":
                saved.append(event)
                if not as_json:
                    _line(event.detail or "")

        try:
            result = run(data, output, options, on_progress=on_progress)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the last complete epoch is on disk, say where
            if not saved:
                raise
            last = saved[-1]
            click.echo(
                f"interrupted: {output} holds epoch {last.done} of {last.total}; continue with the same command"
                " and --resume",
                err=True,
            )
            click.get_current_context().exit(interrupt_exit_code(exc))
    if as_json:
        return render.emit_json(result)
    if options.qat:
        return _qat_summary(result)
    held = (
        f", val accuracy {fmt.percent(result.val_accuracy)} on {result.val_images:,} images ({result.val_data})"
        if result.val_accuracy is not None
        else ", no held-out images"
    )
    origin = f"fine-tuned from {result.fine_tuned_from}" if result.fine_tuned_from else "from scratch"
    if result.new_head:
        origin += ", new classifier"
    if result.frozen:
        origin += f", frozen: {', '.join(result.frozen)}"
    click.echo(
        f"wrote {result.output}: {result.arch} ({result.variant}) {origin}; {len(result.labels)} classes,"
        f" {result.train_images:,} training images{held}"
    )
    threads = f"{result.threads} thread{'s' if result.threads > 1 else ''}"
    click.echo(f"metrics of every epoch: {result.metrics}; {result.seconds:.1f} s with {threads}")


def _qat_summary(result: QatExport) -> None:
    """What a QAT run wrote, and the held-out accuracy at each stage of it."""
    qat, quantized = result.qat, result.quantize
    recipe = qat.recipe
    grid = f"W{recipe.weight_bits}A8 {'per channel' if recipe.per_channel else 'per tensor'}"
    click.echo(
        f"wrote {result.output} ({fmt.size(quantized.bytes_after)}, {recipe.target.value} {grid}) and the fine-tuned"
        f" checkpoint {result.checkpoint}; {len(qat.train.history)} epochs of quantization-aware training,"
        f" {qat.folded_batchnorms} BatchNorms folded, {qat.quantized_layers} layers and {qat.quantized_activations}"
        f" activations quantized"
    )
    if qat.fp32_val_accuracy is not None:
        click.echo(
            f"held-out accuracy ({qat.train.val_data}): FP32 {fmt.percent(qat.fp32_val_accuracy)}, fake-quantized"
            f" before QAT {fmt.percent(qat.before_val_accuracy)}, after {fmt.percent(qat.train.val_accuracy)}"
        )
    int8 = quantized.int8_accuracy
    click.echo(
        f"the QDQ file on {quantized.evaluation_images:,} images of {quantized.evaluation_source}:"
        f" {fmt.percent(int8.top1) if int8 else 'no labels'}, top-1 agreement"
        f" {fmt.percent(quantized.parity.top1_agreement)} with its FP32 export; weights moved by the export:"
        f" {qat.grid_mismatches}; {result.seconds:.1f} s"
    )


def _line(text: str) -> None:
    """A line under the progress bars (tqdm redraws them below it)."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(train())
