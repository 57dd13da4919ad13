"""``resnet-edge gradflow``: the gradient at each block at initialisation, with and without skips."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from resnet_edge.cli import render
from resnet_edge.cli.options import SEED, json_option, options_from, take_options
from resnet_edge.errors import OptionError
from resnet_edge.models.options import GradFlowOptions
from resnet_edge.models.registry import Variant, list_models

if TYPE_CHECKING:  # models.gradflow imports torch: only when the command runs
    from resnet_edge.models.gradflow import GradFlowComparison, GradFlowResult


@click.command()
@options_from(
    GradFlowOptions,
    overrides={"arch": {"type": click.Choice(list_models())}, "seed": {"type": SEED}},  # registered names; 0..2**32-1
)
@click.option("--plain", is_flag=True, help="Switch the skip connections off.")
@click.option("--compare", "side_by_side", is_flag=True, help="Residual and plain side by side.")
@click.option(
    "--data",
    help="Images: folder, .npy/.npz, or builtin:NAME. [default: digits for resnet20..110,"
    " the bundled photos for the ImageNet-stem archs]",
)
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(path_type=Path),
    default=Path("."),
    help="Folder for the plot, gradflow_ARCH[_VARIANT].png. [default: .]",
)
@json_option
def gradflow(plain, side_by_side, data, output_dir, as_json, **fields) -> None:
    """Measure dL/dx at every block's input in one backward pass at initialisation, and plot it.

    Each block's gradient is split into the branch term (through F) and the shortcut term (the "+ I").
    """
    from resnet_edge.artifacts import output_folder
    from resnet_edge.models.gradflow import compare_gradient_flow, gradient_flow

    if plain and side_by_side:
        raise OptionError("--plain and --compare exclude each other: --compare runs the plain network too")
    options = take_options(GradFlowOptions, fields, variant=Variant.PLAIN if plain else Variant.RESIDUAL)
    arch = options.arch
    with output_folder(output_dir) as folder:  # a folder it made goes again if the run fails
        if side_by_side:
            result = compare_gradient_flow(data, folder / f"gradflow_{arch}.png", options)
        else:
            result = gradient_flow(data, folder / f"gradflow_{arch}_{options.variant.value}.png", options)
    if as_json:
        return render.emit_json(result)
    first = result.residual if side_by_side else result
    click.echo(
        f"{arch} at initialisation, BatchNorm in training mode: one backward pass on {first.batch}"
        f" images of {first.data}, {first.labels}"
    )
    (_print_comparison if side_by_side else _print_one)(result)
    click.echo(f"wrote {result.plot}")


def _print_comparison(result: GradFlowComparison) -> None:
    """Residual and plain, block by block, and how their gradients grow."""
    res, pl = result.residual, result.plain
    click.echo(
        render.table(
            [
                "depth",
                "block",
                "shortcut",
                "residual |dL/dx|",
                "branch term",
                "shortcut term",
                "plain |dL/dx|",
                "plain/residual",
            ],
            [
                [
                    d,
                    r.path,
                    r.shortcut,
                    r.grad_norm,
                    r.branch_term_norm,
                    r.shortcut_term_norm,
                    p.grad_norm,
                    p.grad_norm / r.grad_norm,
                ]
                for d, (r, p) in enumerate(zip(res.blocks, pl.blocks, strict=True), 1)
            ],
        )
    )
    for name, r in (("residual", res), ("plain", pl)):
        click.echo(
            f"{name}: loss {r.loss:.4f}; gradient first/last block x{r.first_to_last:.4g}"
            f" (x{r.per_block_growth:.3f} per block)"
        )
    click.echo(f"gradient at the first block, plain/residual: x{result.first_block_ratio:.4g}")


def _print_one(result: GradFlowResult) -> None:
    """One network, block by block, and how its gradient grows."""
    click.echo(
        render.table(
            ["depth", "block", "shortcut", "|x|", "|dL/dx|", "branch term", "shortcut term"],
            [
                [d, b.path, b.shortcut, b.activation_norm, b.grad_norm, b.branch_term_norm, b.shortcut_term_norm]
                for d, b in enumerate(result.blocks, 1)
            ],
        )
    )
    click.echo(
        f"loss {result.loss:.4f}; gradient first/last block x{result.first_to_last:.4g}"
        f" (x{result.per_block_growth:.3f} per block)"
    )


if __name__ == "__main__":
    sys.exit(gradflow())
