"""``resnet-edge train``: a checkpoint from a folder of images, from scratch or fine-tuned."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from resnet_edge import formatting as fmt
from resnet_edge.cli import render
from resnet_edge.cli.interrupts import interrupt_exit_code
from resnet_edge.cli.options import SEED, command_line, json_option, options_from, progress_bars, take_options
from resnet_edge.models.registry import list_models
from resnet_edge.progress import Progress
from resnet_edge.training.options import TrainOptions


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
    help="The checkpoint (.safetensors); NAME.metrics.json (every epoch) and, until the run completes,"
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
            result = train_model(data, output, options, on_progress=on_progress)
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


def _line(text: str) -> None:
    """A line under the progress bars (tqdm redraws them below it)."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(train())
