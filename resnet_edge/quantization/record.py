"""The calibration record: what a quantized model says about how it was made, typed.

:func:`~resnet_edge.quantization.quantize.quantize_onnx` (and the mixed-precision search) write it into the model's
metadata (key ``quantization``) and beside it (``<model>.json``) with :func:`write_quantized`; validate and
sensitivity read it back with :func:`read_quantization_record`. Both go through :mod:`resnet_edge.schema`, so each key
is declared once, as a field here, and a reader reads attributes, not string keys. A field added after the first
records were written has a default, so an older record still reads.

Each accuracy-recovery step keeps what it did (``details``) in its own module's record
(:class:`~.equalize.EqualizationRecord`, :class:`~.adaround.AdaRoundRecord`,
:class:`~.bias_correction.BiasCorrectionRecord`); read back, ``details`` is that record's JSON, as written.

Training imports these types (QAT makes a :class:`QatRecord`) and imports no onnx, so the functions that reach a
model's metadata import :mod:`resnet_edge.onnx.metadata` when called.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from resnet_edge.quantization.options import AccuracyGoal
from resnet_edge.schema import absent_when_none, at, read_as, write_document

if TYPE_CHECKING:
    import onnx

    from resnet_edge.quantization.coverage import IntegerCoverage

__all__ = [
    "CalibrationFile",
    "CalibrationRecord",
    "CoverageRecord",
    "EvaluationRecord",
    "Judgement",
    "MixedPrecisionRecord",
    "QatRecord",
    "QuantizationRecord",
    "RankedBlock",
    "RecoveryRecord",
    "RecoveryStep",
    "SearchStepRecord",
    "WeightGridRecord",
    "calibrated_hashes",
    "read_quantization_record",
    "write_quantized",
]


@dataclass(frozen=True)
class CalibrationFile:
    id: str  # the image's id in its source
    sha256: str


@dataclass(frozen=True)
class CalibrationRecord:
    """The images the activation ranges were read from, each by its hash (validate leaves them out)."""

    source: str
    images: int
    limit: int | None
    seed: int
    batch: int
    files: tuple[CalibrationFile, ...]


@dataclass(frozen=True)
class EvaluationRecord:
    """The held-out images INT8 was judged on against FP32."""

    source: str
    images: int
    overlap_excluded: int  # images of the source left out because calibration used them


@dataclass(frozen=True)
class CoverageRecord:
    """Which Conv/Gemm MACs ran as integer kernels on ``provider`` (:class:`~.coverage.IntegerCoverage`)."""

    provider: str
    integer_macs: int
    float_macs: int
    fraction: float | None
    quantize_nodes: int
    dequantize_nodes: int
    float_compute: tuple[str, ...]

    @classmethod
    def of(cls, coverage: IntegerCoverage, provider: str) -> CoverageRecord:
        return cls(
            provider=provider,
            integer_macs=coverage.integer_macs,
            float_macs=coverage.float_macs,
            fraction=coverage.fraction,
            quantize_nodes=coverage.quantize_nodes,
            dequantize_nodes=coverage.dequantize_nodes,
            float_compute=tuple(coverage.float_compute),
        )


@dataclass(frozen=True)
class Judgement:
    """A quantized model against FP32 on the held-out images.

    Attributes:
        top1_agreement: fraction of images whose top-1 class is FP32's.
        top1: labelled top-1 accuracy; None without labels.
        images: images judged.
        kl_divergence: mean KL(FP32 || quantized) of the softmax outputs, nats: it still moves where top-1 does
            not (an easy model whose every answer survives). Recorded as ``kl``; absent from older records.
    """

    top1_agreement: float
    top1: float | None
    images: int
    kl_divergence: float | None = field(default=None, metadata=at("kl"))


@dataclass(frozen=True)
class RecoveryStep:
    """One accuracy-recovery step, as it ran and as the record keeps it.

    Attributes:
        name: equalize, adaround or bias_correction (recorded as ``step``).
        reference: the paper (or tool) it follows.
        seconds: its own time, to the millisecond (reading the layer inputs is counted apart, in the record).
        before, after: the model judged before and after the step; None when not judged.
        details: what it did (per layer for AdaRound and bias correction): the step's own record, its JSON once
            read back.
    """

    name: str = field(metadata=at("step"))
    reference: str
    seconds: float
    before: Judgement | None
    after: Judgement | None
    details: object = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "seconds", round(self.seconds, 3))  # to the millisecond, whoever makes the step


@dataclass(frozen=True)
class WeightGridRecord:
    """The weight grid resnet-edge wrote over onnxruntime's weights (4-bit, power-of-two scales, AdaRound)."""

    grid: str  # in words: ``int4, blocks of 32 input channels``
    bits: int
    block: int | None
    power_of_two: bool
    activation_scales_power_of_two: int  # activation scales rounded up to a power of two
    layers: int
    weight_sqnr_db: float | None  # None: the grid holds the weights exactly
    opset: int | None  # the opset 4-bit weights need; None for 8-bit


@dataclass(frozen=True)
class RecoveryRecord:
    """The accuracy recovery (``accuracy_recovery``): each step, judged before and after, the weight grid written, the
    time spent reading layer inputs, and how the steps were judged."""

    steps: tuple[RecoveryStep, ...] = ()
    weights: WeightGridRecord | None = None
    reading_layer_inputs_s: float | None = None
    judged: str = ""


@dataclass(frozen=True)
class RankedBlock:
    """A residual block the mixed-precision search ranked, and the ``--exclude`` items that keep it in FP32."""

    block: str
    sensitivity_db: float | None  # logit SQNR with only this block INT8; None where infinite
    exclude: tuple[str, ...]


@dataclass(frozen=True)
class SearchStepRecord:
    """One model the mixed-precision search tried."""

    step: int
    fp32_blocks: tuple[str, ...]
    top1_agreement: float
    top1_drop_points: float | None
    p50_ms: float | None
    met: bool


@dataclass(frozen=True)
class QatRecord:
    """What quantization-aware training did before the model was quantized (``quantization_aware_training``): its
    recipe and schedule, and the held-out top-1 of the FP32 checkpoint, of the fake-quantized network before training
    and after each epoch (``training.qat.QatResult.record`` makes it)."""

    reference: str  # the papers it follows
    fine_tuned_from: str | None
    weight_type: str
    per_channel: bool
    activation_type: str
    epochs: int
    train_images: int
    seconds: float
    folded_batchnorms: int
    quantized_layers: int
    quantized_activations: int
    range_images: int  # images the activation ranges were observed on
    weights_moved_by_export: int  # trained weights a second rounding would move
    val_data: str
    val_images: int
    fp32_top1: float | None
    before_top1: float | None
    after_top1_per_epoch: tuple[float | None, ...]


MIXED_PRECISION_RULE = "keep the most sensitive blocks in FP32, fewest first, until the target holds"


@dataclass(frozen=True, kw_only=True)
class MixedPrecisionRecord:
    """The mixed-precision search that chose the model (``mixed_precision``)."""

    target: AccuracyGoal
    rule: str = MIXED_PRECISION_RULE
    ranking: tuple[RankedBlock, ...]
    steps: tuple[SearchStepRecord, ...]
    exclude: tuple[str, ...]  # the ``--exclude`` items that reproduce the model with ``resnet-edge quantize``


@dataclass(frozen=True, kw_only=True)
class QuantizationRecord:
    """The calibration record of a quantized model (metadata key ``quantization`` and ``<model>.json``).

    The recipe's fields (``target`` to ``reason``) are :class:`~.configs.Int8Recipe`'s, as text; ``cpu`` is the
    machine's model and its INT8 feature flags side by side; ``quantization_aware_training`` what QAT did before,
    null without it.
    """

    target: str
    target_requested: str
    format: str
    activation_type: str
    weight_type: str
    per_channel: bool
    reduce_range: bool
    symmetric_activations: bool
    weight_bits: int = 8
    weight_block: int | None = None
    power_of_two: bool = False
    strict_integer: bool = False
    reason: str
    method: str
    calibration: CalibrationRecord
    evaluation: EvaluationRecord
    judged_by: str = "top-1 agreement"
    accuracy_recovery: RecoveryRecord = field(default_factory=RecoveryRecord)
    quantization_aware_training: QatRecord | None = None
    excluded_nodes: tuple[str, ...]
    fp32_nodes: tuple[str, ...]
    integer_coverage: CoverageRecord | None
    source_model_sha256: str
    cpu: dict[str, object]  # {"model": ..., "avx2": true, ...}
    versions: dict[str, str]
    mixed_precision: MixedPrecisionRecord | None = absent_when_none()  # noqa: RUF009 (a field(), not a value)

    def to_json(self) -> dict:
        """The record as the sidecar and the metadata hold it: what :meth:`from_json` reads back to an equal one."""
        return write_document(self)

    @classmethod
    def from_json(cls, data: object) -> QuantizationRecord:
        """Read a record (a sidecar's content, as ``json.load`` gives it).

        Raises:
            DocumentFormatError: a key is missing or holds the wrong type; the message names it.
        """
        return read_as(cls, data, "calibration record")


def write_quantized(model: onnx.ModelProto, output: Path, sidecar: Path, record: QuantizationRecord) -> int:
    """Write ``model`` to ``output`` with ``record`` embedded, and ``record`` to its ``sidecar``, both atomically.

    Returns:
        The model file's size in bytes.

    Raises:
        OutputWriteError: a file could not be written, naming it.
    """
    from resnet_edge.onnx.metadata import (  # here, not above: see the module docstring
        QUANTIZATION_KEY,
        write_with_record,
    )

    data = record.to_json()
    return write_with_record(model, output, sidecar, key=QUANTIZATION_KEY, embedded=data, record=data)


def read_quantization_record(model: onnx.ModelProto) -> QuantizationRecord | None:
    """The calibration record ``model`` carries; None for a model resnet-edge did not quantize.

    Raises:
        DocumentFormatError: the record lacks a key or holds it with the wrong type; names the key.
    """
    from resnet_edge.onnx.metadata import QUANTIZATION_KEY, read_record  # here, not above: see the module docstring

    data = read_record(model, QUANTIZATION_KEY)
    return None if data is None else QuantizationRecord.from_json(data)


def calibrated_hashes(models: Iterable[onnx.ModelProto]) -> set[str]:
    """SHA-256 of every image the quantized ``models`` record they were calibrated on (none for other models).

    Raises:
        DocumentFormatError: a malformed calibration record.
    """
    hashes: set[str] = set()
    for model in models:
        record = read_quantization_record(model)
        if record is not None:
            hashes.update(f.sha256 for f in record.calibration.files)
    return hashes
