"""The conversion stages' options, declared once: the library's dataclasses, which the CLI's flags are made from.

This module imports neither torch nor onnx, so that the CLI can build its options from these classes at start-up.
Each field's ``metadata`` carries its flag's help text (``help``), and where the flag's name is not the field's,
the flag (``flag``); each class checks its own values in ``__post_init__``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from resnet_edge.errors import OptionError
from resnet_edge.models.registry import Variant

if TYPE_CHECKING:
    from resnet_edge.calibration.preprocess import PreprocessSpec

DEFAULT_OPSET = 17  # supported by every runtime our users deploy to (onnxruntime, TensorRT 8.6+, OpenVINO)
# The opset each exporter writes when the user names none: the dynamo exporter cannot write DEFAULT_OPSET.
DEFAULT_OPSETS = {"torchscript": DEFAULT_OPSET, "dynamo": 18}
# What each exporter can write; outside these ranges we refuse rather than let the exporter change the opset.
OPSET_RANGE = {"torchscript": (11, 20), "dynamo": (18, 23)}

DEFAULT_TIMEOUT_S = 300.0  # resnet152 simplifies in under a minute on 2 cores; five times that means a hang
# An upper bound, so that a typo (1e308, inf) cannot leave a hung onnxsim running for ever; 12x the default.
MAX_TIMEOUT_S = 3600.0


class Exporter(enum.StrEnum):
    TORCHSCRIPT = "torchscript"
    DYNAMO = "dynamo"


@dataclass(frozen=True)
class ExportOptions:
    """How to export. Unset fields come from the checkpoint's own metadata, else the arch's defaults.

    The checkpoint itself is the stage's source: ``export_onnx(source, output, options)``.

    Attributes:
        arch: a registered architecture; may be omitted when the checkpoint records it.
        num_classes, in_chans: default to the checkpoint's, else the arch's.
        variant: residual, plain or preact; the checkpoint's, else residual.
        input_size: side of the square input; the checkpoint's, else 224 (ImageNet stem) or 32 (small stem).
        opset: ONNX opset; refused if the exporter cannot write exactly this one. None: the exporter's default
            (17 for TorchScript, 18 for dynamo, see ``DEFAULT_OPSETS``).
        batch: a fixed batch size, or None for a dynamic batch dimension.
        exporter: torchscript or dynamo.
        preprocessing: overrides the preprocessing recorded in the file.
        labels: class names, one per class.
        fold_bn: fold BatchNormalization into the preceding Conv at export (True), or keep every BN node (False).

    Raises:
        OptionError: a batch below 1, or an opset the exporter cannot write.
    """

    arch: str | None = field(default=None, metadata={"help": "Architecture; optional when --weights records it."})
    num_classes: int | None = field(
        default=None, metadata={"help": "Classes; default: the checkpoint's, else 1000 / 10."}
    )
    in_chans: int | None = field(default=None, metadata={"help": "Input channels; default: the checkpoint's, else 3."})
    variant: Variant | None = field(default=None, metadata={"help": "[default: the checkpoint's, else residual]"})
    input_size: int | None = field(
        default=None, metadata={"help": "Input side in pixels; default: the checkpoint's, else 224 / 32."}
    )
    opset: int | None = field(
        default=None,
        metadata={
            "help": "ONNX opset (refused if the exporter cannot write it)."
            " [default: the exporter's: 17 torchscript, 18 dynamo]"
        },
    )
    batch: int | None = field(default=None, metadata={"help": "'dynamic' or a fixed batch size."})
    exporter: Exporter = Exporter.TORCHSCRIPT
    preprocessing: PreprocessSpec | None = field(default=None, metadata={"cli": False})
    labels: tuple[str, ...] | None = field(default=None, metadata={"cli": False})
    fold_bn: bool = field(
        default=True,
        metadata={
            "flag": "--fold-bn/--keep-bn",
            "help": "Fold each BatchNorm into its Conv at export (a file ready to deploy as it is), or keep every"
            " BatchNormalization node (the graph as PyTorch has it, for 'simplify' to fold and prove; the pipeline"
            " exports this way). Both are checked against PyTorch in eval mode.",
        },
    )

    def __post_init__(self) -> None:
        if self.batch is not None and self.batch < 1:
            raise OptionError(f"batch must be 'dynamic' or at least 1, got {self.batch}")
        exporter = Exporter(self.exporter)
        low, high = OPSET_RANGE[exporter.value]
        if not low <= self.resolved_opset <= high:
            raise OptionError(f"the {exporter.value} exporter writes opsets {low} to {high}, not {self.resolved_opset}")

    @property
    def resolved_opset(self) -> int:
        """The opset to write: the one asked for, else the exporter's default."""
        return self.opset if self.opset is not None else DEFAULT_OPSETS[Exporter(self.exporter).value]


@dataclass(frozen=True)
class SimplifyOptions:
    """How to simplify.

    Attributes:
        allow_unfolded_bn: keep a BatchNormalization that has no convolution to fold into (a pre-activation
            network's, which follows an addition) instead of failing; it is reported either way.
        timeout_s: how long onnxsim may run, more than 0 and at most ``MAX_TIMEOUT_S``.

    Raises:
        OptionError: a timeout out of range (NaN and inf included).
    """

    allow_unfolded_bn: bool = field(
        default=False, metadata={"help": "Keep BatchNorms with no conv to fold into (pre-activation nets)."}
    )
    timeout_s: float = field(
        default=DEFAULT_TIMEOUT_S, metadata={"flag": "--timeout", "help": "Seconds onnxsim may run."}
    )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.timeout_s) and 0 < self.timeout_s <= MAX_TIMEOUT_S):
            raise OptionError(
                f"the onnxsim timeout must be more than 0 and at most {MAX_TIMEOUT_S:g} s, got {self.timeout_s}"
            )
