"""How every number looks, wherever a person reads it: the terminal, the report (Markdown, HTML, plots), messages.

One function per kind of quantity, so that a speed-up reads ``1.33×`` on the terminal and in the report alike, a
latency always has two decimals, and a percentage always two. Missing values are ``–``. Pure Python, no imports
beyond the standard library: the CLI's start-up imports it.
"""

from __future__ import annotations

import math

MISSING = "–"
SPEEDUP_COLUMN = "Speed-up"
CHOSEN_MARK = "◀"  # the chosen row of a table of candidates (tune's, the report's Deployment table)
SPEEDUP_MEANING = "ONNX FP32's median latency divided by the row's (higher is faster), timed side by side in one run"


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def ms(value: float | None, *, unit: bool = False) -> str:
    """A latency in milliseconds, two decimals: ``0.61``, ``20.21``, ``1,074.00``; ``unit`` adds `` ms``."""
    if _missing(value):
        return MISSING
    return f"{value:,.2f}" + (" ms" if unit else "")


def ms_interval(value: float | None, interval: tuple[float, float] | None) -> str:
    """A median with its 95% interval, so that a gap can be read against the noise: ``0.61 (95% 0.59-0.64)``."""
    return ms(value) + (f" (95% {ms(interval[0])}-{ms(interval[1])})" if interval and not _missing(value) else "")


def axis_ms(value: float) -> str:
    """A tick label on a latency axis: as few digits as the value needs, with the unit (``2 ms``, ``0.5 ms``)."""
    return f"{value:g} ms" if value >= 0.01 else f"{value:.1e} ms"


def ratio(value: float | None) -> str:
    """A speed-up or any other ratio: ``1.33×``."""
    return MISSING if _missing(value) else f"{value:.2f}×"


def percent(fraction: float | None, *, digits: int = 2) -> str:
    """A fraction as a percentage: ``0.9924`` -> ``99.24%``."""
    return MISSING if _missing(fraction) else f"{100 * fraction:.{digits}f}%"


def cv(value: float | None) -> str:
    """A coefficient of variation (std / mean), as a percentage with one decimal: ``39.9%``."""
    return percent(value, digits=1)


def points(value: float | None) -> str:
    """Percentage points (an accuracy drop): ``0.25``."""
    return MISSING if _missing(value) else f"{value:.2f}"


def error(value: float | None) -> str:
    """An absolute logit error or a divergence: three significant digits, ``8.6e-06``."""
    return MISSING if _missing(value) else f"{value:.2e}"


def cosine(value: float | None) -> str:
    """A cosine similarity: five decimals, because what matters is how close to 1 it is."""
    return MISSING if _missing(value) else f"{value:.5f}"


def throughput(value: float | None) -> str:
    """Images per second, whole: ``1,590``."""
    return MISSING if _missing(value) else f"{value:,.0f}"


def size(num_bytes: float | None) -> str:
    """A file size: ``512 B``, ``347.6 KiB``, ``1.05 MiB``, ``1.20 GiB``."""
    if _missing(num_bytes):
        return MISSING
    if num_bytes < 1024:
        return f"{num_bytes:.0f} B"
    if num_bytes < 1024**2:
        return f"{num_bytes / 1024:.1f} KiB"
    if num_bytes < 1024**3:
        return f"{num_bytes / 1024**2:.2f} MiB"
    return f"{num_bytes / 1024**3:.2f} GiB"


def seconds(value: float) -> str:
    """A duration: ``0.4 s``, ``28.3 s``."""
    return f"{value:.1f} s"


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 thread``, ``2 threads``, ``1,200 images``."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"
