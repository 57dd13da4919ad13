"""What the host and the device runner say to each other: the job, and the keys of the answer, declared once.

The host (:mod:`resnet_edge.device.fleet`, :mod:`resnet_edge.device.targets`) builds a :class:`Job` and writes it as
``job.json``; the runner (:mod:`resnet_edge.device.runner`) reads it back with :meth:`Job.from_json`. Both sides
name a validate session and its outputs with :func:`session_key` and :func:`output_key`, so the two cannot drift.
The runner ships this module in its bundle: standard library only, Python 3.8 (no ``X | Y`` at run time).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

JOB_FORMAT = 1  # the runner refuses a job of another format, with a message naming both


@dataclass
class JobModel:
    """One model of a job: its label (the host's path), its SHA-256, the input pool it is fed, and where it was
    uploaded in the job's folder (None: the device's cache has it)."""

    label: str
    sha256: str
    input: str = ""
    upload: str | None = None


@dataclass
class Job:
    """One runner job. ``action`` is ``benchmark``, ``validate`` or ``facts``; the rest are its options."""

    action: str
    models: list[JobModel] = field(default_factory=list)
    inputs: str = "inputs.npz"
    providers: list[str] = field(default_factory=list)
    strict_ep: bool = False
    threads: int | None = None
    batch_sizes: list[int] = field(default_factory=list)
    warmup: int = 0
    iterations: int | None = None
    duration_s: float | None = None
    spinning: bool = False  # benchmark: idle threads spin, each session timed in a phase of its own (as deployed)
    validate_batch: int = 8
    cache_dir: str | None = None  # the device's model cache (the runner's default when None)
    cleanup: bool = False  # the runner removes the job's folder when done
    watch_stdin: bool = False  # the runner exits when the host's connection closes
    format: int = JOB_FORMAT

    def to_json(self) -> dict:
        """The job as JSON-ready data (``job.json``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Job:
        """A job from ``job.json``'s data; unknown keys are refused, so a host and a runner that differ say so.

        Raises:
            ValueError: not a job of this format, or keys this runner does not know.
        """
        if not isinstance(data, dict) or data.get("format") != JOB_FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise ValueError(f"job format {found!r}; this runner reads format {JOB_FORMAT}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"the job has keys this runner does not know: {', '.join(unknown)}")
        models = [JobModel(**model) for model in data.get("models", [])]
        return cls(**{**data, "models": models})


def session_key(index: int, provider: str) -> str:
    """The key of model ``index``'s session on ``provider`` in a validate answer's ``sessions``."""
    return f"{index}:{provider}"


def output_key(index: int, provider: str) -> str:
    """The array name of model ``index``'s logits on ``provider`` in a validate answer's outputs."""
    return f"out_{index}_{provider}"
