"""The ``analyze`` command: where an INT8 model loses accuracy, block by block."""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import click

from resnet_edge.cli import render
from resnet_edge.cli.options import SEED, field_option, json_option, parse_provider_list, providers_option
from resnet_edge.evaluation.options import ValidateOptions

if TYPE_CHECKING:
    from resnet_edge.quantization.sensitivity.result import SensitivityResult


@click.command()
@click.argument("fp32_model", type=click.Path(path_type=Path))
@click.argument("int8_model", type=click.Path(path_type=Path))
@click.option("--data", help="Held-out images: folder, .npy/.npz, or builtin:NAME. [default: test split / photos]")
@field_option(ValidateOptions, "label_map")  # declared once (calibration.labels); SensitivityOptions is not light
@click.option(
    "--limit",
    type=int,
    default=64,
    show_default=True,  # sensitivity.DEFAULT_IMAGES, not imported for --help
    help="Analyse at most this many images.",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for drawing --limit images.")
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(path_type=Path),
    help="Folder for INT8.analysis.png and .json. [default: the INT8 model's folder]",
)
@click.option(
    "--before",
    type=click.Path(path_type=Path),
    help="Another INT8 model of FP32_MODEL, without a recovery step (say, without --equalize or --adaround):"
    " show each block's error in both, on the same images.",
)
@providers_option
@click.option("--strict-ep", is_flag=True, help="Fail instead of falling back to cpu, or on partial placement.")
@json_option
def analyze(
    fp32_model, int8_model, data, label_map, limit, seed, output_dir, before, providers, strict_ep, as_json
) -> None:
    """Error INT8 shows by residual block (whole model and one block at a time), most sensitive first."""
    from resnet_edge.artifacts import output_folder
    from resnet_edge.errors import OptionError
    from resnet_edge.quantization.sensitivity import SensitivityOptions, analyze_sensitivity

    chosen = parse_provider_list(providers)
    if len(chosen) != 1:
        raise OptionError(f"analyze runs on one provider, got {len(chosen)}: {providers}")

    progress = None if as_json else (lambda event: click.echo(f"running {event.step}", err=True))
    # A folder it makes for -o goes again if the run fails; the INT8 model's own folder is never made.
    place = output_folder(output_dir) if output_dir else contextlib.nullcontext(int8_model.parent)
    with place as folder:
        result = analyze_sensitivity(
            (fp32_model, int8_model),
            folder,
            SensitivityOptions(
                data=data, label_map=label_map, limit=limit, seed=seed, provider=chosen[0], strict_ep=strict_ep
            ),
            before=before,
            on_progress=progress,
        )
    if as_json:
        return render.emit_json(result)
    _print_summary(result, fp32_model, int8_model)
    _print_blocks(result)
    _print_findings(result, int8_model)
    click.echo(
        f"wrote {result.chart} and {result.report.name} ({result.isolated_models} single-block models,"
        f" {result.seconds:.1f} s)"
    )


def _print_summary(result: SensitivityResult, fp32_model: Path, int8_model: Path) -> None:
    """The held-out images, the INT8 model's agreement with FP32, and where each model ran."""
    skipped = result.calibration_images_dropped
    click.echo(
        f"{result.images} held-out images from {result.data_source}"
        f"{f' ({skipped} calibration images skipped)' if skipped else ''};"
        f" {result.format} model, top-1 agreement with FP32 {render.percent(result.parity.top1_agreement)},"
        f" logit cosine {result.parity.cosine:.5f}"
        + (
            f"; top-1 accuracy FP32 -> INT8 {render.percent(result.fp32_accuracy.top1)} ->"
            f" {render.percent(result.int8_accuracy.top1)}"
            if result.fp32_accuracy and result.int8_accuracy
            else ""
        )
    )
    names = {"fp32": fp32_model.name, "int8": int8_model.name}
    # Every block output is a graph output here, so onnxruntime fuses less than in validate's session of the file.
    render.audit_lines(
        "placement (block outputs exposed, fewer fusions)",
        [(names[role], result.provider, p) for role, p in result.placement.items()],
    )


def _print_blocks(result: SensitivityResult) -> None:
    """One row per residual block, most sensitive first."""
    order = result.ranking + [b.block for b in result.blocks if b.block not in result.ranking]
    rows = []
    for name in order:
        b = result.block(name)
        rank = result.ranking.index(name) + 1 if name in result.ranking else None
        residual = b.residual
        rows.append(
            [
                rank,
                name,
                f"{b.quantized_compute_nodes}/{b.compute_nodes}",
                b.isolated_logits.sqnr_db if b.isolated_logits else None,
                render.percent(b.isolated_top1_agreement) if b.isolated_top1_agreement is not None else "-",
                b.isolated.sqnr_db if b.isolated else None,
                b.cumulative.sqnr_db,
                b.cumulative.relative_l2,
                b.cumulative.cosine,
                f"{residual.ratio:.2f}{' !' if residual.flagged else ''}" if residual else "-",
            ]
        )
    click.echo(
        render.table(
            [
                "rank",
                "block",
                "INT8 convs",
                "alone: logit dB",
                "alone: top-1",
                "alone: block dB",
                "all: block dB",
                "all: rel L2",
                "all: cosine",
                "add scale ratio",
            ],
            rows,
        )
    )
    click.echo(
        "alone = only this block INT8, FP32 elsewhere; all = the INT8 model as it is; dB = SQNR against"
        " FP32, lower is worse"
    )


def _print_findings(result: SensitivityResult, int8_model: Path) -> None:
    """What changed since --before, the flagged additions, the notes, and which block to keep in FP32."""
    if result.changes:
        click.echo(
            f"before ({result.before_model.name}) -> after ({int8_model.name}): top-1 agreement"
            f" {render.percent(result.before_parity.top1_agreement)} -> {render.percent(result.parity.top1_agreement)}"
        )
        click.echo(
            render.table(
                ["block", "all: block dB before", "after", "gain dB", "alone: logit dB before", "after"],
                [
                    [c.block, c.before_db, c.after_db, c.gain_db, c.before_alone_db, c.after_alone_db]
                    for c in result.changes
                ],
            )
        )
    for name in result.flagged_additions:
        r = result.block(name).residual
        click.echo(
            f"flagged: {name} adds a branch (scale {r.branch_scale:.3g}) and a shortcut (scale"
            f" {r.skip_scale:.3g}) that differ {r.ratio:.1f}x (>= {result.residual_scale_ratio:g}x): the finer"
            " input keeps few bits in the sum"
        )
    for note in result.notes:
        click.echo(f"note: {note}")
    if result.ranking:
        first = result.block(result.ranking[0])
        click.echo(
            f"most sensitive: {first.block}; keep it in FP32 with "
            + " ".join(f"--exclude {shlex.quote(item)}" for item in first.exclude)
        )
