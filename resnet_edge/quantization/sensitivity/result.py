"""What the sensitivity analysis finds, apart from how it runs: the run builds it, the chart and the CLI read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from resnet_edge.onnx.parity import Accuracy, Parity
from resnet_edge.onnx.placement import Placement
from resnet_edge.quantization.sensitivity.metrics import BlockError


@dataclass(frozen=True)
class BlockChange:
    """One block's error in two INT8 models of one FP32 model: before and after an accuracy-recovery step
    (equalization, AdaRound, bias correction), on the same images.

    Attributes:
        block: the block.
        before_db, after_db: SQNR of the block's output in the whole INT8 model (``all: block dB``).
        before_alone_db, after_alone_db: SQNR of the logits with only this block INT8 (``alone: logit dB``); None
            where the block is not quantized.
    """

    block: str
    before_db: float
    after_db: float
    before_alone_db: float | None
    after_alone_db: float | None

    @property
    def gain_db(self) -> float:
        """After minus before, whole model: positive when the step reduced this block's error."""
        return self.after_db - self.before_db


def block_changes(before: SensitivityResult, after: SensitivityResult) -> list[BlockChange]:
    """Per block, in execution order, the error of ``before`` and of ``after`` (two analyses on the same images)."""
    changes = []
    for block in after.blocks:
        old = before.block(block.block)
        changes.append(
            BlockChange(
                block=block.block,
                before_db=old.cumulative.sqnr_db,
                after_db=block.cumulative.sqnr_db,
                before_alone_db=old.isolated_logits.sqnr_db if old.isolated_logits else None,
                after_alone_db=block.isolated_logits.sqnr_db if block.isolated_logits else None,
            )
        )
    return changes


@dataclass(frozen=True)
class SensitivityResult:
    """INT8 error by block, with the blocks ranked most sensitive first.

    Attributes:
        blocks: per block, in execution order.
        ranking: quantized blocks, most sensitive first (lowest ``sensitivity_db``; ties in execution order).
        parity: the INT8 model's logits against FP32's on the analysed images.
        fp32_accuracy, int8_accuracy: labelled top-1 accuracy of each on those images (None when unlabelled).
        flagged_additions: blocks whose residual addition's input scales differ by RESIDUAL_SCALE_RATIO or more.
        chart, report: the PNG and JSON written, if any.
        provider, ran_on: the provider asked for and the one the sessions ran on.
        placement: where each node of the two analysed graphs ran (``fp32``, ``int8``; every block output exposed,
            so an EP may fuse less than in the deployed model).
        before_model, before_parity, changes: with ``analyze --before``, the other INT8 model (the same recipe
            without a recovery step), its logits against FP32, and each block's error in both.
    """

    fp32_model: Path | None
    int8_model: Path | None
    format: str  # "qdq" or "qoperator"
    data_source: str
    images: int
    calibration_images_dropped: int
    parity: Parity
    blocks: list[BlockError]
    ranking: list[str]
    flagged_additions: list[str]
    residual_scale_ratio: float
    isolated_models: int
    seconds: float
    chart: Path | None = None
    report: Path | None = None
    notes: list[str] = field(default_factory=list)
    provider: str = "cpu"
    ran_on: str = "cpu"
    placement: dict[str, Placement | None] = field(default_factory=dict)
    fp32_accuracy: Accuracy | None = None
    int8_accuracy: Accuracy | None = None
    before_model: Path | None = None
    before_parity: Parity | None = None
    changes: list[BlockChange] = field(default_factory=list)

    def block(self, name: str) -> BlockError:
        return next(b for b in self.blocks if b.block == name)
