"""One look for every number, on the terminal and in the report."""

from __future__ import annotations

import pytest

from resnet_edge import formatting as fmt


@pytest.mark.parametrize(
    ("function", "value", "text"),
    [
        (fmt.ms, 0.9313, "0.93"),
        (fmt.ms, 1074.0, "1,074.00"),
        (fmt.ratio, 0.0544, "0.05×"),
        (fmt.ratio, 1.3333, "1.33×"),
        (fmt.percent, 0.99244, "99.24%"),
        (fmt.cv, 0.3995, "40.0%"),
        (fmt.size, 355_942, "347.6 KiB"),
        (fmt.size, 1_101_004, "1.05 MiB"),
        (fmt.throughput, 1589.7, "1,590"),
        (fmt.axis_ms, 2.0, "2 ms"),
        (fmt.axis_ms, 0.5, "0.5 ms"),
        (fmt.ms, None, fmt.MISSING),
        (fmt.ratio, float("nan"), fmt.MISSING),
    ],
)
def test_numbers(function, value, text: str) -> None:
    assert function(value) == text


def test_counts_agree_with_their_number() -> None:
    assert fmt.count(1, "thread") == "1 thread" and fmt.count(2, "thread") == "2 threads"


def test_report_and_terminal_share_the_formats() -> None:
    """The report's cells come from the same functions as the terminal's (a speed-up is 1.33× on both)."""
    from resnet_edge.pipeline.report import format_cell

    assert format_cell(1.3333, "x") == fmt.ratio(1.3333) == "1.33×"
    assert format_cell(0.3995, "cv") == "40.0%" and format_cell(0.61, "ms") == "0.61"
