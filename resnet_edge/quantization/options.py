"""The quantize stage's options, declared once: the library's dataclasses, which the CLI's flags are made from.

This module imports neither numpy, onnx nor onnxruntime (the execution provider's type is read only when an options
object is made), so that the CLI builds the quantize command's flags from these classes at start-up. Each field's
``metadata`` carries its flag's help text (``help``), and, where it differs from the field's name, the flag
(``flag``); ``cli: False`` marks a field with no flag. :class:`QuantizeOptions` checks its own values in
``__post_init__``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from resnet_edge.calibration.labels import LABEL_MAP
from resnet_edge.errors import OptionError
from resnet_edge.onnx.providers import Provider
from resnet_edge.quantization.configs import Format, Int8Recipe, Int8Target, Method, resolve_config

if TYPE_CHECKING:
    from resnet_edge.onnx.parity import Parity

__all__ = ["ADAROUND_ITERATIONS", "MIN_OPSET", "AccuracyGoal", "QuantizeOptions"]

# Below opset 13, onnxruntime's quantizer wrote models it could not load itself (measured with opsets 7 to 12:
# INVALID_GRAPH at a DequantizeLinear), after the whole calibration had run; refused up front instead.
MIN_OPSET = 13
# AdaRound's optimisation steps per layer. The paper and AIMET use 10,000 on a GPU. Measured on the Fashion-MNIST
# resnet20 with 4-bit weights (benchmarks/accuracy_recovery.py --sweep; FP32 88.64%, nearest rounding 86.18%):
# 250 steps 87.48%, 500 87.51%, 1,000 88.34% (98.22% agreement), 2,000 88.38% (97.33%), 4,000 88.42% (98.76%) at
# 4.3x the time of 1,000. 1,000 is the knee, and keeps AdaRound practical on 2 cores; see README.
ADAROUND_ITERATIONS = 1000
# Upper bounds, so that a typo (1e308, inf) cannot mean a run that never ends: a day of AdaRound, and 500x the
# default steps, are far beyond what a ResNet-152 needs on 2 cores.
MAX_ADAROUND_SECONDS = 24 * 3600.0
MAX_ADAROUND_ITERATIONS = 1_000_000


def _cpu() -> Provider:
    return Provider.CPU


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantize.

    Attributes:
        calib: calibration images (folder, .npy/.npz, builtin:NAME); default: the model's built-in calibration
            split, else the bundled photos.
        eval_data: held-out images to judge INT8 against FP32; default: the model's built-in test split, else the
            calibration source's held-out quarter. Images also used for calibration are always dropped (by hash).
        label_map: which model class each class of the held-out images is (``calibration.labels``); default: the
            model's labels.
        method: minmax, entropy or percentile calibration.
        per_channel, format: override the target's choice when set.
        target: auto (this machine), x86-vnni, x86-avx2, arm64 or gpu-tensorrt.
        exclude: node names or module paths (``layer1.0``, ``fc``) to keep in FP32.
        limit: calibrate on this many images, drawn with ``seed``.
        measure_speed: time FP32 against INT8 (batch 1, CPU) after quantizing.
        config: a fully explicit configuration, overriding target, per_channel and format (for benchmarks).
        provider: the execution provider the INT8 model is checked on against FP32 (FP32 runs on the CPU);
            ``strict_ep``: fail when it is missing or takes only part of the compute ops.
        require_int8: fail (rather than warn) when a Conv/Gemm that was not excluded runs as an FP32 kernel on that
            provider (integer coverage below 100%); ``strict_ep`` implies it.
        allow_accuracy_drop: write the INT8 model even when, on the held-out images, it misses validate's INT8
            bar (top-1 agreement, labelled top-1 drop); otherwise that fails, and nothing is written.
        weight_bits: 8, or 4 (int4 weights in QDQ at opset 21, activations stay 8-bit).
        weight_block: with 4-bit weights, one scale per block of this many input channels instead of per channel.
        power_of_two: every scale a power of two (fixed-point NPUs and DSPs).
        equalize, bias_correction: cross-layer equalization before calibrating and bias correction after
            quantizing; None: the target's default.
        adaround: learn each weight's rounding (AdaRound) instead of rounding to nearest.
        adaround_iterations: AdaRound's optimisation steps per layer (fewer when the time budget runs short).
        adaround_seconds: AdaRound's time budget for all layers together; None for no budget.
        judge_steps: judge the model after each accuracy-recovery step on the held-out images, for the record's
            before/after (with ``equalize`` that calibrates the model a second time, unequalized).

    Raises:
        OptionError: an unknown method, format, target or provider, a limit below 1, weight bits other than 4
            or 8, a weight block without 4-bit weights, a QDQ rewrite asked of a QOperator model, or
            ``require_int8`` with 4-bit weights.
    """

    calib: str | None = field(
        default=None, metadata={"help": "Calibration images: folder, .npy/.npz, or builtin:NAME. [default: built-in]"}
    )
    eval_data: str | None = field(
        default=None,
        metadata={"help": "Held-out images to judge INT8 on. [default: built-in test split / held-out quarter]"},
    )
    label_map: Path | None = field(default=None, metadata=LABEL_MAP)
    method: Method = Method.MINMAX
    per_channel: bool | None = field(
        default=None,
        metadata={"flag": "--per-channel/--per-tensor", "help": "Weight granularity. [default: the target's]"},
    )
    format: Format | None = field(default=None, metadata={"help": "[default: the target's]"})
    target: Int8Target = field(
        default=Int8Target.AUTO, metadata={"help": "Hardware to choose the configuration for; auto detects this CPU."}
    )
    exclude: tuple[str, ...] = field(
        default=(), metadata={"help": "Node name or module path (layer1.0, fc) to keep in FP32; repeatable."}
    )
    limit: int | None = field(default=None, metadata={"help": "Calibrate on this many images, drawn with --seed."})
    seed: int = 0
    measure_speed: bool = field(default=True, metadata={"flag": "--no-speed", "help": "Skip the FP32 vs INT8 timing."})
    config: Int8Recipe | None = field(default=None, metadata={"cli": False})
    weight_bits: int = field(
        default=8,
        metadata={
            "help": "Weight bits: 8, or 4 (int4 QDQ weights at opset 21, 8-bit activations; on the CPU EP the"
            " weights are dequantized and the convolutions run FP32: the gain is size and NPU support)."
        },
    )
    weight_block: int | None = field(
        default=None,
        metadata={
            "help": "With --weight-bits 4: one scale per block of this many input channels. [default: per channel]"
        },
    )
    power_of_two: bool = field(
        default=False,
        metadata={"flag": "--power-of-two-scales", "help": "Make every scale a power of two (fixed-point NPUs)."},
    )
    equalize: bool | None = field(
        default=None,
        metadata={
            "flag": "--equalize/--no-equalize",
            "help": "Cross-layer equalization inside residual branches before calibrating. [default: the target's]",
        },
    )
    bias_correction: bool | None = field(
        default=None,
        metadata={
            "flag": "--bias-correction/--no-bias-correction",
            "help": "Correct each layer's mean output shift from the calibration images. [default: the target's]",
        },
    )
    adaround: bool = field(
        default=False, metadata={"help": "Learn each weight's rounding up or down (AdaRound) from calibration data."}
    )
    adaround_iterations: int = field(
        default=ADAROUND_ITERATIONS, metadata={"help": "AdaRound's optimisation steps per layer."}
    )
    adaround_seconds: float | None = field(
        default=None,
        metadata={"metavar": "SECONDS", "help": "AdaRound's time budget for all layers. [default: none]"},
    )
    judge_steps: bool = field(
        default=True,
        metadata={
            "flag": "--no-judge-steps",
            "help": "Skip judging each recovery step on the held-out images (the record's before/after; with"
            " --equalize that is a second, unequalized calibration).",
        },
    )
    provider: Provider = field(default_factory=_cpu, metadata={"flag": "--providers"})  # one provider
    strict_ep: bool = field(
        default=False, metadata={"help": "Fail if that provider is missing or takes only part of the model."}
    )
    require_int8: bool = field(
        default=False,
        metadata={
            "help": "Fail if a Conv/Gemm (not excluded) runs as an FP32 kernel on that provider. [default: warn]"
        },
    )
    allow_accuracy_drop: bool = field(
        default=False,
        metadata={
            "help": "Write the INT8 model even if, on held-out images, it misses validate's INT8 bar (99% top-1"
            " agreement, 1 point of accuracy); otherwise that fails."
        },
    )

    def __post_init__(self) -> None:
        """Enum fields given as their values become the enums; bad values and combinations are refused.

        Raises:
            OptionError: see the class.
        """
        for name, kind in (("method", Method), ("format", Format), ("target", Int8Target), ("provider", Provider)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                try:
                    object.__setattr__(self, name, kind(value))
                except ValueError:
                    choices = ", ".join(member.value for member in kind)
                    raise OptionError(f"{name} must be one of {choices}, got {value!r}") from None
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.limit is not None and self.limit < 1:
            raise OptionError(f"limit must be at least 1, got {self.limit}")
        if self.weight_bits not in (4, 8):
            raise OptionError(f"weight bits must be 4 or 8, got {self.weight_bits}")
        if self.weight_block is not None and (self.weight_bits != 4 or self.weight_block < 2):
            raise OptionError(
                f"--weight-block takes a block of 2 or more input channels, with --weight-bits 4; got"
                f" {self.weight_block} with {self.weight_bits}-bit weights"
            )
        if not 1 <= self.adaround_iterations <= MAX_ADAROUND_ITERATIONS:
            raise OptionError(
                f"AdaRound iterations must be 1 to {MAX_ADAROUND_ITERATIONS:,}, got {self.adaround_iterations}"
            )
        if self.adaround_seconds is not None and not 0 < self.adaround_seconds <= MAX_ADAROUND_SECONDS:
            raise OptionError(
                f"AdaRound's time budget must be more than 0 and at most {MAX_ADAROUND_SECONDS:.0f} seconds, got"
                f" {self.adaround_seconds}"
            )
        rewrites = [
            flag
            for flag, asked in (
                ("--weight-bits 4", self.weight_bits == 4),
                ("--power-of-two-scales", self.power_of_two),
                ("--bias-correction", self.bias_correction),
                ("--adaround", self.adaround),
            )
            if asked
        ]
        if rewrites and self.format is Format.QOPERATOR:
            raise OptionError(f"{', '.join(rewrites)} rewrite the QDQ graph; use --format qdq")
        if self.target is Int8Target.NPU_INT8 and self.exclude:
            raise OptionError(
                "npu-int8 runs every Conv/Gemm/Add in integer; it cannot keep blocks in FP32 (--exclude, or the"
                " accuracy targets that keep blocks in FP32)"
            )
        if self.weight_bits == 4 and self.require_int8:
            raise OptionError(
                "--require-int8 cannot hold with 4-bit weights: the CPU EP dequantizes int4 weights and runs the"
                " convolutions in FP32"
            )

    def recipe(self) -> Int8Recipe:
        """The configuration these options resolve to: ``config`` when given, else the target's with every
        explicit choice applied."""
        if self.config is not None:
            return self.config
        return resolve_config(
            self.target,
            per_channel=self.per_channel,
            format=self.format,
            weight_bits=self.weight_bits if self.weight_bits != 8 else None,
            weight_block=self.weight_block,
            power_of_two=self.power_of_two or None,
            equalize=self.equalize,
            bias_correction=self.bias_correction,
            adaround=self.adaround or None,
        )


class Judged(Protocol):
    """What :meth:`AccuracyGoal.met_by` reads of a quantize result (the INT8 model against FP32, measured)."""

    @property
    def top1_drop_points(self) -> float | None: ...
    @property
    def evaluation_source(self) -> str: ...
    @property
    def parity(self) -> Parity: ...


@dataclass(frozen=True)
class AccuracyGoal:
    """What a quantized model must keep, judged on held-out images; every target given must hold.

    Attributes:
        max_top1_drop: labelled top-1 accuracy lost, FP32 minus INT8, in percentage points (needs labelled images).
        min_agreement: fraction of images on which INT8's top-1 class equals FP32's.
    """

    max_top1_drop: float | None = field(
        default=None,
        metadata={
            "metavar": "POINTS",
            "help": "Accuracy target (labelled data): keep the most sensitive blocks in FP32 until INT8 loses at"
            " most this many top-1 points.",
        },
    )
    min_agreement: float | None = field(
        default=None,
        metadata={
            "metavar": "FRACTION",
            "help": "Accuracy target: keep the most sensitive blocks in FP32 until INT8 agrees with FP32's top-1 on"
            " at least this fraction of held-out images (e.g. 0.99).",
        },
    )

    @property
    def given(self) -> bool:
        """Whether any target is set (the quantize command then searches for the blocks to keep in FP32)."""
        return self.max_top1_drop is not None or self.min_agreement is not None

    def check(self) -> None:
        """Raises OptionError for a target that is missing or out of range."""
        if not self.given:
            raise OptionError("give an accuracy target: --max-top1-drop POINTS or --min-agreement FRACTION")
        if self.max_top1_drop is not None and not 0 <= self.max_top1_drop <= 100:
            raise OptionError(f"--max-top1-drop is in percentage points, 0 to 100; got {self.max_top1_drop}")
        if self.min_agreement is not None and not 0 < self.min_agreement <= 1:
            raise OptionError(
                f"--min-agreement is a fraction above 0 and at most 1, such as 0.99; got {self.min_agreement}"
            )

    def met_by(self, result: Judged) -> bool:
        """Whether ``result`` meets every given target.

        Raises:
            OptionError: a top-1 drop target on images without labels.
        """
        met = True
        if self.max_top1_drop is not None:
            drop = result.top1_drop_points
            if drop is None:
                raise OptionError(
                    f"--max-top1-drop needs labelled held-out images and {result.evaluation_source} has"
                    " none; pass labelled --eval-data, or use --min-agreement"
                )
            met = drop <= self.max_top1_drop
        if self.min_agreement is not None:
            met = met and result.parity.top1_agreement >= self.min_agreement
        return met

    def describe(self) -> str:
        parts = []
        if self.max_top1_drop is not None:
            parts.append(f"top-1 drop <= {self.max_top1_drop:g} points")
        if self.min_agreement is not None:
            parts.append(f"top-1 agreement >= {100 * self.min_agreement:g}%")
        return " and ".join(parts)
