"""The training stage's options, declared once: the library's dataclass, which ``resnet-edge train``'s flags are made
from.

This module imports neither torch nor numpy, so that the CLI can build its flags from it at start-up (the conventions
are :mod:`resnet_edge.conversion.options`'s: ``help`` and ``flag`` in each field's metadata, values checked in
``__post_init__``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from resnet_edge.errors import OptionError
from resnet_edge.models.registry import Variant
from resnet_edge.quantization.configs import Int8Recipe, Int8Target, resolve_config

# Seeds reach numpy's default_rng and torch.manual_seed, which both take 0 to 2**32 - 1 here.
MAX_SEED = 2**32 - 1
DEFAULT_VAL_FRACTION = 0.1  # held out of --data when no --val is given
# Learning rates that work on the first try with SGD and BatchNorm: 0.1 from scratch (He et al. 2015, 4.2), ten
# times less when fine-tuning, so that the pretrained features are adjusted rather than overwritten.
SCRATCH_LR = 0.1
FINE_TUNE_LR = 0.01
# The one-cycle policy cycles momentum against the learning rate (Smith 2018), by this much either side of
# --momentum: 0.85 to 0.95 at the default 0.9, which are also torch's OneCycleLR defaults.
ONECYCLE_MOMENTUM_SWING = 0.05
DEFAULT_PAD = 4  # pixels of padding for the 32x32 family's random crop (He et al. 2015, 4.2: pad 4, crop 32)
# Quantization-aware training fine-tunes a network that already works: a learning rate ten times below fine-tuning's,
# as the QAT recipes of PyTorch's and AIMET's examples use (1e-3 to 1e-5), so the weights move by a few grid steps.
QAT_LR = 0.001
QAT_CALIBRATION_IMAGES = 1000  # images the exported model's activation ranges are calibrated on, by default
# Upper bounds that keep a typo (1e9 epochs, a batch of a billion) from running for ever or swapping the machine.
MAX_EPOCHS = 10_000
MAX_THREADS = 1024


class Schedule(enum.StrEnum):
    """How the learning rate moves over the run, stepped every batch."""

    ONECYCLE = "onecycle"  # warm up to --lr over the first 30%, anneal to --lr / 1e5 (Smith and Topin 2019)
    COSINE = "cosine"  # from --lr down to 0 along a half cosine (Loshchilov and Hutter 2017)


class Augment(enum.StrEnum):
    """Training augmentation, on batched tensors.

    The random crop takes the model's input from a slightly larger image: for the ImageNet stem, from the resized
    image before its centre crop (the margin between ``resize`` and ``crop``, 256 -> 224); for the 32x32 family,
    from the image padded by ``--pad`` pixels on each side. ``flip`` mirrors half the images left to right.
    """

    CROP_FLIP = "crop-flip"
    CROP = "crop"
    NONE = "none"


class Normalize(enum.StrEnum):
    """Where the preprocessing's mean and std come from."""

    MODEL = "model"  # the fine-tuned checkpoint's, else the architecture's defaults (ImageNet's, CIFAR-10's)
    DATA = "data"  # the training images' own per-channel mean and std


@dataclass(frozen=True)
class TrainOptions:
    """How to train. The images are the stage's source and the checkpoint its output:
    ``train_model(source, output, options)``.

    Attributes:
        arch: a registered architecture; may be omitted when ``weights`` records it.
        variant: residual, plain or preact; the checkpoint's, else residual.
        weights: fine-tune from this checkpoint (torchvision, timm or resnet-edge's own); None trains from scratch.
        new_head: a new classifier even when the checkpoint's has as many classes as the data.
        freeze: how many parts of the network, from the input, keep their weights: 1 the stem, 2 the stem and
            ``layer1``, and so on; BatchNorm there keeps its running statistics too.
        input_size: side of the input; the checkpoint's, else the architecture's (224 or 32).
        normalize: the preprocessing's mean and std from the model (``model``) or the training images (``data``).
        val: held-out images (folder, .npy/.npz, builtin:NAME) with the training data's classes.
        val_fraction: the share of each class held out of the training data instead; None: 0.1 when ``val`` is
            not given. 0 trains on everything and reports no validation accuracy.
        limit: train on this many images of the source, drawn with ``seed`` (before the held-out split).
        val_limit: judge on this many of the ``val`` images, drawn with ``seed``.
        epochs, batch: passes over the training images, and images per step.
        lr: the peak learning rate; None: 0.1 from scratch, 0.01 when fine-tuning.
        momentum, weight_decay: SGD's (Nesterov momentum; the one-cycle schedule cycles momentum around it).
        schedule: ``onecycle`` or ``cosine``.
        label_smoothing: cross-entropy's label smoothing (Szegedy et al. 2016), 0 to below 1.
        augment: ``crop-flip``, ``crop`` or ``none`` (see :class:`Augment`).
        pad: pixels of padding for the 32x32 family's random crop.
        seed: seeds the weights, the held-out split, the order of the images and the augmentation; the same seed,
            data and thread count give the same weights.
        threads: PyTorch's intra-op threads; None leaves PyTorch's default (one per core).
        resume: continue an interrupted run from its last complete epoch (the ``.resume.pt`` file beside the
            output), with the same options.
        qat: quantization-aware training (:mod:`resnet_edge.training.qat`): fine-tune ``weights`` with fake
            quantization on ``target``'s INT8 recipe, and write a QDQ ONNX model (``resnet_edge.conversion.qat``).
        target, weight_bits, per_channel: the recipe QAT trains for and exports with, as ``quantize`` takes them
            (``per_channel`` None: the target's).
        calib, calib_limit: QAT's export: the images its activation ranges are calibrated on (default: the
            training data), and how many (drawn with ``seed``).
        command: the command line that started the run, recorded in the checkpoint (the CLI passes its own).

    Raises:
        OptionError: a value out of range (the message names it and the range).
    """

    arch: str | None = field(default=None, metadata={"help": "Architecture; optional when --weights records it."})
    variant: Variant | None = field(default=None, metadata={"help": "[default: the checkpoint's, else residual]"})
    weights: Path | None = field(
        default=None,
        metadata={
            "help": "Fine-tune this checkpoint (.pt, .pth, .safetensors, builtin:NAME; torchvision, timm or"
            " resnet-edge's own); its classifier is replaced when the data has another number of classes."
            " [default: train from scratch]"
        },
    )
    new_head: bool = field(
        default=False,
        metadata={"help": "A new classifier even when the checkpoint's has as many classes as the data."},
    )
    freeze: int = field(
        default=0,
        metadata={"help": "Keep the first N parts fixed: 1 the stem, 2 also layer1, ... (BatchNorm statistics too)."},
    )
    input_size: int | None = field(
        default=None, metadata={"help": "Input side in pixels; default: the checkpoint's, else 224 / 32."}
    )
    normalize: Normalize = field(
        default=Normalize.MODEL,
        metadata={"help": "Mean and std: the checkpoint's or the arch's (model), or the training images' own (data)."},
    )
    val: str | None = field(
        default=None, metadata={"help": "Held-out images with the same classes (folder, .npy/.npz, builtin:NAME)."}
    )
    val_fraction: float | None = field(
        default=None,
        metadata={
            "help": f"Hold out this share of each class instead of --val; 0: none. [default: {DEFAULT_VAL_FRACTION}]"
        },
    )
    limit: int | None = field(default=None, metadata={"help": "Train on this many images, drawn with --seed."})
    val_limit: int | None = field(
        default=None, metadata={"help": "Judge on this many of the --val images, drawn with --seed."}
    )
    epochs: int = field(default=20, metadata={"help": "Passes over the training images."})
    batch: int = field(default=128, metadata={"help": "Images per step."})
    lr: float | None = field(
        default=None,
        metadata={
            "help": f"Peak learning rate. [default: {SCRATCH_LR}, {FINE_TUNE_LR} fine-tuning, {QAT_LR} with --qat]"
        },
    )
    momentum: float = field(default=0.9, metadata={"help": "SGD (Nesterov) momentum; onecycle cycles it ±0.05."})
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay."})
    schedule: Schedule = field(default=Schedule.ONECYCLE, metadata={"help": "Learning-rate schedule, per step."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Cross-entropy label smoothing, 0 to below 1."})
    augment: Augment = field(default=Augment.CROP_FLIP, metadata={"help": "Random crop and left-right flip."})
    pad: int = field(default=DEFAULT_PAD, metadata={"help": "Padding of the 32x32 family's random crop, pixels."})
    seed: int = field(default=0, metadata={"help": "Seeds weights, split, order and augmentation."})
    threads: int | None = field(default=None, metadata={"help": "PyTorch threads. [default: one per core]"})
    resume: bool = field(default=False, metadata={"help": "Continue an interrupted run from its last complete epoch."})
    qat: bool = field(
        default=False,
        metadata={
            "help": "Quantization-aware fine-tuning of --weights on --target's INT8 recipe; -o is then the QDQ"
            " .onnx model (the fine-tuned checkpoint goes beside it)."
        },
    )
    target: Int8Target = field(
        default=Int8Target.AUTO, metadata={"help": "With --qat: the INT8 recipe to train for, as quantize's."}
    )
    weight_bits: int = field(default=8, metadata={"help": "With --qat: weight bits, 8 or 4 (W4A8)."})
    per_channel: bool | None = field(
        default=None,
        metadata={"flag": "--per-channel/--per-tensor", "help": "With --qat: weight granularity. [default: target's]"},
    )
    calib: str | None = field(
        default=None, metadata={"help": "With --qat: images for the exported ranges. [default: the training data]"}
    )
    calib_limit: int = field(
        default=QAT_CALIBRATION_IMAGES, metadata={"help": "With --qat: calibrate on this many images."}
    )
    command: str | None = field(default=None, metadata={"cli": False})

    def __post_init__(self) -> None:
        for name, enum_type in (
            ("schedule", Schedule),
            ("augment", Augment),
            ("normalize", Normalize),
            ("target", Int8Target),
        ):
            _set_enum(self, name, enum_type)
        if self.variant is not None:
            _set_enum(self, "variant", Variant)
        if self.weights is not None:
            object.__setattr__(self, "weights", Path(self.weights))
        _check_int("epochs", self.epochs, 1, MAX_EPOCHS)
        _check_int("batch", self.batch, 1, None)
        _check_int("freeze", self.freeze, 0, None)
        _check_int("pad", self.pad, 0, None)
        _check_int("seed", self.seed, 0, MAX_SEED)
        if self.input_size is not None:
            _check_int("input size", self.input_size, 1, None)
        if self.limit is not None:
            _check_int("limit", self.limit, 1, None)
        if self.val_limit is not None:
            _check_int("val limit", self.val_limit, 1, None)
            if self.val is None:
                raise OptionError("--val-limit draws from the --val images, and no --val was given")
        if self.threads is not None:
            _check_int("threads", self.threads, 1, MAX_THREADS)
        if self.lr is not None:
            _check_float("lr", self.lr, low=0.0, low_open=True)
        _check_float("momentum", self.momentum, low=ONECYCLE_MOMENTUM_SWING, high=1.0 - ONECYCLE_MOMENTUM_SWING)
        _check_float("weight decay", self.weight_decay, low=0.0)
        _check_float("label smoothing", self.label_smoothing, low=0.0, high=1.0, high_open=True)
        if self.val_fraction is not None:
            _check_float("val fraction", self.val_fraction, low=0.0, high=1.0, high_open=True)
            if self.val is not None:
                raise OptionError("--val and --val-fraction exclude each other: give held-out images or a share")
        if self.new_head and self.weights is None:
            raise OptionError("--new-head replaces a fine-tuned checkpoint's classifier, and no --weights was given")
        if self.freeze and self.weights is None:
            raise OptionError("--freeze keeps pretrained weights fixed, and no --weights was given")
        self._check_qat()

    def _check_qat(self) -> None:
        _check_int("calib limit", self.calib_limit, 1, None)
        if self.weight_bits not in (4, 8):
            raise OptionError(f"weight bits must be 4 or 8, got {self.weight_bits}")
        asked = [
            flag
            for flag, given in (
                ("--target", self.target is not Int8Target.AUTO),
                ("--weight-bits", self.weight_bits != 8),
                ("--per-channel/--per-tensor", self.per_channel is not None),
                ("--calib", self.calib is not None),
            )
            if given
        ]
        if not self.qat:
            if asked:
                raise OptionError(f"{', '.join(asked)} shape quantization-aware training; add --qat")
            return
        if self.weights is None:
            raise OptionError("--qat fine-tunes a trained FP32 checkpoint; pass it with --weights")
        if self.resume:
            raise OptionError("--qat runs are short and are not resumed; run the same command again")
        if self.variant is Variant.PREACT:
            raise OptionError(
                "--qat folds each BatchNorm into the convolution before it, and the preact variant's BatchNorms come"
                " before theirs"
            )

    @property
    def resolved_val_fraction(self) -> float:
        """The share of the data held out: the one given, else 0 with ``val``, else the default."""
        if self.val_fraction is not None:
            return self.val_fraction
        return 0.0 if self.val is not None else DEFAULT_VAL_FRACTION

    def resolved_lr(self) -> float:
        """The peak learning rate: the one given, else the from-scratch, fine-tuning or QAT default."""
        if self.lr is not None:
            return self.lr
        if self.qat:
            return QAT_LR
        return SCRATCH_LR if self.weights is None else FINE_TUNE_LR

    def qat_recipe(self) -> Int8Recipe:
        """The INT8 recipe QAT trains for and exports with: the target's, with these weight bits and granularity, and
        none of the post-training recovery steps (QAT learns what equalization, bias correction and AdaRound
        repair; and they would move the weights off the grid it trained on)."""
        return resolve_config(
            self.target,
            per_channel=self.per_channel,
            weight_bits=self.weight_bits if self.weight_bits != 8 else None,
            equalize=False,
            bias_correction=False,
            adaround=False,
        )

    def recipe(self) -> dict[str, object]:
        """The options that decide the weights, as JSON-ready values: a resumed run must match them."""
        data = asdict(self)
        for name in ("resume", "command", "threads"):
            data.pop(name)
        return {k: _plain(v) for k, v in data.items()}


def _plain(value: object) -> object:
    """An option's value as JSON keeps it: an enum as its text, a path as a string."""
    if isinstance(value, enum.Enum):
        return value.value
    return str(value) if isinstance(value, Path) else value


def _set_enum(options: TrainOptions, name: str, enum_type: type[enum.Enum]) -> None:
    value = getattr(options, name)
    try:
        object.__setattr__(options, name, enum_type(value))
    except ValueError:
        choices = ", ".join(str(e.value) for e in enum_type)
        raise OptionError(f"unknown {name.replace('_', ' ')} {value!r}; choose one of: {choices}") from None


def _check_int(name: str, value: int, low: int, high: int | None) -> None:
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high:,}" if high is not None else f"at least {low}"
        raise OptionError(f"{name} must be {bound}, got {value}")


def _check_float(
    name: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if not math.isfinite(value):
        raise OptionError(f"{name} must be a finite number, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lower = "" if low is None else f"{'above' if low_open else 'at least'} {low:g}"
        upper = "" if high is None else f"{'below' if high_open else 'at most'} {high:g}"
        raise OptionError(f"{name} must be {' and '.join(p for p in (lower, upper) if p)}, got {value:g}")
