"""Printing results: aligned tables for people, JSON for machines, one line for errors and warnings."""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Iterable, Sequence

import click

from resnet_edge.errors import ResnetEdgeWarning
from resnet_edge.jsonable import to_jsonable


def emit_json(result: object) -> None:
    click.echo(json.dumps(to_jsonable(result), indent=2))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table; numbers right-aligned, text left-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) and bool(rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        padded = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _is_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or value is None


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def size(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if num_bytes < 1024:
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.2f} GiB"


def percent(fraction: float | None) -> str:
    return "-" if fraction is None or math.isnan(fraction) else f"{100 * fraction:.2f}%"


def ops_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{op} {n}" for op, n in counts.items())


def placements(rows: Iterable[tuple[str, str, object]]) -> None:
    """One ``placement:`` line per (model, provider) that was audited: where its nodes ran."""
    seen = set()
    for model, provider, placement in rows:
        if placement is None or (model, provider) in seen:
            continue
        seen.add((model, provider))
        click.echo(f"placement {model} on {provider}: {placement.describe()}")


def install_warning_printer() -> None:
    """Show resnet-edge's warnings as ``warning: ...`` lines on stderr; silence other libraries' chatter."""
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", category=ResnetEdgeWarning)

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show
