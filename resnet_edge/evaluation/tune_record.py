"""The tune record: what ``resnet-edge tune`` chose and why, typed.

:func:`~resnet_edge.evaluation.tune.tune_model` writes a :class:`TuneRecord` beside the chosen model
(``<model>.json``: every candidate, the bar, the knobs tried) and a :class:`DeploymentRecord` into its metadata (key
``deployment``: the chosen candidate, where it was measured, its p50) with :func:`write_tuned`; readers read them back
with :func:`read_tune_record` and :func:`read_deployment`. Both go through :mod:`resnet_edge.schema`, so each key is
declared once, as a field here. A field added after the first records were written has a default, so an older record
still reads.

A :class:`Candidate` is what tune measured of one (model variant, provider) pair and, its file named as the record
names it, the record's entry for it: one type for both, so the record has no dict twin of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from resnet_edge.errors import InputFileError
from resnet_edge.schema import absent_when_none, at, read_as, write_document

if TYPE_CHECKING:
    import onnx

__all__ = [
    "TUNE_KEY",
    "Candidate",
    "ChosenRecord",
    "DeploymentRecord",
    "KnobSettings",
    "KnobTrial",
    "RandomWeightsBar",
    "ThresholdsRecord",
    "TuneRecord",
    "read_deployment",
    "read_tune_record",
    "write_tuned",
]

TUNE_KEY = "deployment"  # metadata key of the chosen model: provider, precision and the numbers behind the choice


@dataclass(frozen=True)
class Candidate:
    """One (model variant, provider) pair and what was measured of it."""

    name: str  # e.g. "int8 x86-vnni qdq"
    provider: str  # the provider text, as --providers takes it
    precision: str  # fp32, int8, fp16 or file
    path: str
    ran_on: str | None = None
    placement: str | None = None
    integer_fraction: float | None = None  # INT8: share of Conv/Gemm MACs that ran as integer kernels
    int8_coverage: str | None = None
    passed: bool = False
    failures: tuple[str, ...] = ()
    top1_agreement: float | None = None
    accuracy: float | None = None  # labelled top-1 accuracy on the held-out images (None when unlabelled)
    max_abs_error: float | None = None
    p50_ms: dict[int, float] = field(default_factory=dict)  # batch -> median latency
    p50_interval_ms: dict[int, tuple[float, float]] = field(default_factory=dict)  # batch -> its 95% interval
    cv: dict[int, float] = field(default_factory=dict)  # batch -> coefficient of variation of the timed calls
    validated: bool = False  # an INT8 file the caller built and validated already (the pipeline's model.int8.onnx)
    speedup_vs_cpu_fp32: dict[int, float] = field(default_factory=dict)  # batch -> FP32-on-CPU p50 / this p50
    error: str | None = None  # why it could not be built or run
    # How it was judged: validate's bar ("top-1 agreement"), or "logit error" for an INT8/FP16 candidate of a model
    # whose weights are known to be random (issue 24: its agreement measures noise; onnx.parity.logit_error_shortfalls).
    judged_by: str = "top-1 agreement"
    max_error_steps: float | None = None  # max abs logit error in the candidate's output quantization steps
    # The threading it was timed with, which is the one it is deployed with (issue 24: time what is deployed):
    # intra/inter-op threads, spinning, and how it was timed (benchmark.threading_record).
    threading: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ChosenRecord:
    """The candidate tune chose, as it is deployed: what to install (``runtime``) and how to open it."""

    name: str
    provider: str
    precision: str
    runtime: str  # the runtime and its version: ``onnxruntime 1.x``, ``openvino 2025.x``
    threading: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class DeploymentRecord:
    """What the chosen model carries in its metadata (``deployment``): the choice, the device it was measured on
    (absent: here) and its median latency per batch."""

    chosen: ChosenRecord = field(metadata=at(""))
    target: str | None = absent_when_none()
    p50_ms: dict[int, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.chosen.name

    @property
    def provider(self) -> str:
        return self.chosen.provider


@dataclass(frozen=True)
class RandomWeightsBar:
    """How INT8 and FP16 candidates of a model with random weights were judged instead (issue 24)."""

    judged_by: str
    min_cosine: float
    max_error_steps: float


@dataclass(frozen=True)
class ThresholdsRecord:
    """The bar the candidates were held to; None: validate's default."""

    min_agreement: float | None
    max_top1_drop: float | None
    random_weights: RandomWeightsBar | None = absent_when_none()  # noqa: RUF009 (a field(), not a value)


@dataclass(frozen=True)
class KnobSettings:
    """A knob variant's own settings: onnxruntime's (spinning, optimisation level, session config) or the OpenVINO
    runtime's provider options; the other kind's keys are absent."""

    spinning: bool | None = absent_when_none()
    optimization: str | None = absent_when_none()
    session_config: dict[str, str] | None = absent_when_none()  # noqa: RUF009 (a field(), not a value)
    options: dict[str, str] | None = absent_when_none()  # noqa: RUF009 (a field(), not a value)


@dataclass(frozen=True)
class KnobTrial:
    """One runtime-knob variant tried on the chosen candidate (:func:`~.tune.search_knobs`), and whether it was kept
    (``chosen``: absent where the search stopped before choosing)."""

    settings: str
    knob: KnobSettings = field(metadata=at(""))
    threads: int
    p50_ms: float | None
    p50_interval_ms: tuple[float, ...] | None
    min_cosine_vs_default: float | None
    passed: bool
    chosen: bool | None = absent_when_none()


@dataclass(frozen=True)
class TuneRecord:
    """The record beside the chosen model: the model, the chosen candidate and why, the bar, the site, every
    candidate (its file by name, or where it is for one the caller gave) and the runtime knobs tried."""

    model: str
    model_sha256: str
    chosen: ChosenRecord
    reason: str
    batch_sizes: tuple[int, ...]
    threads: int | None
    iterations: int
    thresholds: ThresholdsRecord
    target: str | None = None
    device: dict[str, object] | None = None
    timing_used: bool = True
    candidates: tuple[Candidate, ...] = ()
    knobs: tuple[KnobTrial, ...] = ()


def write_tuned(
    model: onnx.ModelProto, output: Path, sidecar: Path, record: TuneRecord, deployment: DeploymentRecord
) -> int:
    """Write ``model`` to ``output`` with ``deployment`` embedded, and ``record`` to its ``sidecar``, both atomically.

    Returns:
        The model file's size in bytes.

    Raises:
        OutputWriteError: a file could not be written, naming it.
    """
    from resnet_edge.onnx.metadata import write_with_record

    return write_with_record(
        model, output, sidecar, key=TUNE_KEY, embedded=write_document(deployment), record=write_document(record)
    )


def read_tune_record(sidecar: Path | str) -> TuneRecord:
    """The tune record in ``sidecar`` (``<tuned model>.json``).

    Raises:
        InputFileError: the file cannot be read or is not JSON.
        DocumentFormatError: the record lacks a key or holds it with the wrong type; names the key.
    """
    try:
        data = json.loads(Path(sidecar).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputFileError(f"cannot read the tune record {sidecar}: {exc}") from None
    return read_as(TuneRecord, data, "tune record")


def read_deployment(model: onnx.ModelProto) -> DeploymentRecord | None:
    """The deployment ``model`` carries (tune's choice); None for a model tune did not write.

    Raises:
        DocumentFormatError: the record lacks a key or holds it with the wrong type; names the key.
    """
    from resnet_edge.onnx.metadata import read_record

    data = read_record(model, TUNE_KEY)
    return None if data is None else read_as(DeploymentRecord, data, "deployment record")
