"""The gradient-flow stage's options, declared once: the library's dataclass, which the CLI's flags are made from.

This module imports no torch, so that the CLI can build its options from it at start-up (see
:mod:`resnet_edge.conversion.options` for the conventions: ``help`` and ``flag`` in each field's metadata, values
checked in ``__post_init__``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from resnet_edge.calibration.labels import LABEL_MAP
from resnet_edge.errors import OptionError
from resnet_edge.models.registry import Variant

DEFAULT_BATCH = 16
# Seeds reach numpy's default_rng, which takes 0 to 2**32 - 1 here (and fails with a traceback below 0).
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class GradFlowOptions:
    """Which network to measure, and on how many images.

    Attributes:
        arch: a registered architecture, with fresh weights.
        variant: ``residual``, ``plain`` or ``preact`` (a string is read as the enum's value).
        batch: images in the one batch; at least 2, as BatchNorm normalises with the batch's statistics.
        seed: seeds the weights and the choice of images.
        label_map: which class of the fresh model each class of the data is (``calibration.labels``).

    Raises:
        OptionError: an unknown variant, a batch below 2, or a seed outside 0 to 2**32 - 1.
    """

    arch: str = field(metadata={"help": "Architecture, fresh weights."})
    variant: Variant = field(default=Variant.RESIDUAL, metadata={"cli": False})
    batch: int = field(default=DEFAULT_BATCH, metadata={"help": "Images in the one backward pass."})
    seed: int = field(default=0, metadata={"help": "Seeds weights and image choice."})
    label_map: Path | None = field(default=None, metadata=LABEL_MAP)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "variant", Variant(self.variant))
        except ValueError:
            choices = ", ".join(v.value for v in Variant)
            raise OptionError(f"unknown variant {self.variant!r}; choose one of: {choices}") from None
        if self.batch < 2:
            raise OptionError(f"batch must be at least 2 (BatchNorm uses the batch's statistics), got {self.batch}")
        if not 0 <= self.seed <= MAX_SEED:
            raise OptionError(f"seed must be from 0 to {MAX_SEED}, got {self.seed}")
