"""What a running stage reports as it goes: one type for every stage's ``on_progress`` callback.

A run of several stages (the pipeline) tells the same callback, around each stage's own steps, that the stage
:data:`STARTED`, then that it is :data:`DONE` (``detail``: its summary line) or :data:`FAILED` (``detail``: the
error), with the seconds it took.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

STARTED, DONE, FAILED = "started", "done", "failed"


@dataclass(frozen=True)
class Progress:
    """One step of a stage: ``done`` of ``total`` where countable (images, candidates), else just the step's name."""

    stage: str
    step: str
    done: int | None = None
    total: int | None = None
    unit: str = "it"  # what is counted: "img", "round"
    detail: str | None = None  # a running figure to show beside the count ("loss 0.41, accuracy 87.5%")
    target: str | None = None  # the --target device the step happened on (None: here)
    seconds: float | None = None  # on DONE and FAILED: how long the stage ran


ProgressCallback = Callable[[Progress], None]
