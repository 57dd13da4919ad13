"""Options and parsers shared by several commands."""

from __future__ import annotations

from pathlib import Path

import click

# Seeds reach numpy's default_rng, which takes 0 to 2**32 - 1 here (and fails with a traceback below 0).
SEED = click.IntRange(0, 2**32 - 1)

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def providers_option(function):
    return click.option("--providers", default="cpu", show_default=True, help="Comma-separated: cpu,cuda.")(function)


def parse_provider_list(value: str) -> tuple:
    from resnet_edge.runtime import parse_providers  # imports onnxruntime: only when a command runs

    return tuple(parse_providers(value))


def parse_batch(value: str) -> int | None:
    """``dynamic`` -> None, else a positive integer."""
    if value == "dynamic":
        return None
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter(f"expected 'dynamic' or a positive integer, got {value!r}")
    return int(value)


def parse_batches(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated batch sizes such as 1,8,32, got {value!r}") from None


def derived_path(model: Path, tag: str) -> Path:
    """``model.onnx`` -> ``model<tag>.onnx`` beside it."""
    return model.with_name(f"{model.name.removesuffix('.onnx')}{tag}.onnx")
