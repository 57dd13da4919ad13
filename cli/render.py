"""Printing results: aligned tables for people, JSON for machines, one line for errors and warnings."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import warnings
from collections.abc import Iterable, Sequence

import click

from resnet_edge import formatting
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


# A number already formatted by resnet_edge.formatting (``1.33×``, ``99.24%``, ``347.6 KiB``) or a missing one.
_FORMATTED_NUMBER = re.compile(r"[-–]|[-+]?[\d,]*\.?\d+(e[-+]?\d+)?( ?(%|×|ms|s|B|KiB|MiB|GiB))?")


def _is_number(value: object) -> bool:
    if isinstance(value, str):
        return _FORMATTED_NUMBER.fullmatch(value) is not None
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or value is None


def _cell(value: object) -> str:
    # Callers format their numbers with resnet_edge.formatting (the same as the report); this is the fallback.
    if value is None:
        return formatting.MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


size = formatting.size
percent = formatting.percent


def ops_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{op} {n}" for op, n in counts.items())


def audit_lines(label: str, rows: Iterable[tuple[str, str, object]]) -> None:
    """One ``LABEL MODEL on PROVIDER: ...`` line per (model, provider) that has an audit result (a placement, an
    integer coverage: anything with ``describe()``); None is passed over."""
    seen = set()
    for model, provider, audit in rows:
        if audit is None or (model, provider) in seen:
            continue
        seen.add((model, provider))
        click.echo(f"{label} {model} on {provider}: {audit.describe()}")


# The package's one logger; the CLI gives it the only handler it configures (libraries' own loggers are left alone).
LOGGER = "resnet_edge"
# Libraries whose own chatter (their loggers, their Python warnings) the CLI silences: it reports what matters itself.
QUIET_LIBRARIES = ("onnxruntime", "onnxsim")


class _TqdmHandler(logging.Handler):
    """``level: message`` lines on stderr, through tqdm, so a line under a progress bar gets its own line."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging's contract: a handler never raises
            self.handleError(record)


class _LevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


_handler = _TqdmHandler()
_handler.setFormatter(_LevelFormatter())


def configure_logging(level: int = logging.WARNING) -> None:
    """Send the ``resnet_edge`` logger's records at ``level`` and above to stderr (one handler, this logger only).

    Args:
        level: ``logging.DEBUG`` for ``-v``, ``logging.ERROR`` for ``-q``; warnings (:class:`ResnetEdgeWarning`
            included) print at ``logging.WARNING``, the default.
    """
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level)
    if _handler not in logger.handlers:
        logger.addHandler(_handler)
    logger.propagate = False  # the CLI's lines only: no second copy through a handler someone gave the root logger
    for library in QUIET_LIBRARIES:
        logging.getLogger(library).setLevel(logging.ERROR)


def install_warning_printer() -> None:
    """Show resnet-edge's warnings as ``warning: ...`` lines on stderr; silence onnxruntime's and onnxsim's own.

    Other libraries' warnings keep Python's filters. The lines follow the ``resnet_edge`` logger's level
    (:func:`configure_logging`, here at its default): ``-q`` hides them.
    """
    configure_logging()
    for library in QUIET_LIBRARIES:
        warnings.filterwarnings("ignore", module=rf"{library}(\.|$)")
    warnings.filterwarnings("default", category=ResnetEdgeWarning)

    def show(message, category, filename, lineno, file=None, line=None):
        if not logging.getLogger(LOGGER).isEnabledFor(logging.WARNING):
            return
        # Through tqdm, so a warning raised under a progress bar gets its own line and the bar is redrawn below.
        from tqdm import tqdm

        tqdm.write(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show
