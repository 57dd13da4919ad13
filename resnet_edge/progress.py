"""What a running stage reports as it goes: one type for every stage's ``on_progress`` callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """One step of a stage: ``done`` of ``total`` where countable (images, candidates), else just the step's name."""

    stage: str
    step: str
    done: int | None = None
    total: int | None = None
    unit: str = "it"  # what is counted: "img", "round"
    detail: str | None = None  # a running figure to show beside the count ("loss 0.41, accuracy 87.5%")


ProgressCallback = Callable[[Progress], None]
