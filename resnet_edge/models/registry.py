"""The architecture registry: names, block layouts and stems, without torch.

Kept apart from :mod:`resnet_edge.models.resnet` so that what only needs the names (the CLI's ``--arch`` choices,
``--help``) does not pay for importing torch. :mod:`resnet_edge.models.resnet` builds the models. Each
architecture's data defaults (its preprocessing) sit here, beside it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from resnet_edge.errors import OptionError

if TYPE_CHECKING:
    from resnet_edge.calibration.preprocess import PreprocessSpec


class Variant(enum.StrEnum):
    RESIDUAL = "residual"
    PLAIN = "plain"
    PREACT = "preact"


class Stem(enum.StrEnum):
    IMAGENET = "imagenet"  # 7x7/2 conv, BN, ReLU, 3x3/2 max pool; four stages of 64..512 channels (x expansion)
    SMALL = "small"  # 3x3 conv to 16 channels; three stages of 16/32/64 channels, for 32x32 inputs (CIFAR-style)


@dataclass(frozen=True)
class ArchSpec:
    """One registered architecture."""

    name: str
    block: str  # "basic" or "bottleneck"
    layers: tuple[int, ...]
    stem: Stem

    @property
    def default_input_size(self) -> int:
        return 224 if self.stem is Stem.IMAGENET else 32

    @property
    def default_num_classes(self) -> int:
        return 1000 if self.stem is Stem.IMAGENET else 10

    @property
    def min_input_size(self) -> int:
        """The smallest input for which every stage still has at least one pixel."""
        return 32 if self.stem is Stem.IMAGENET else 8


def _small(depth: int) -> ArchSpec:
    # depth = 6n + 2: three stages of n basic blocks, two convs each, plus the stem conv and fc (He et al. 2015, 4.2).
    n = (depth - 2) // 6
    return ArchSpec(f"resnet{depth}", "basic", (n, n, n), Stem.SMALL)


_REGISTRY: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec("resnet18", "basic", (2, 2, 2, 2), Stem.IMAGENET),
        ArchSpec("resnet34", "basic", (3, 4, 6, 3), Stem.IMAGENET),
        ArchSpec("resnet50", "bottleneck", (3, 4, 6, 3), Stem.IMAGENET),
        ArchSpec("resnet101", "bottleneck", (3, 4, 23, 3), Stem.IMAGENET),
        ArchSpec("resnet152", "bottleneck", (3, 8, 36, 3), Stem.IMAGENET),
        *(_small(depth) for depth in (20, 32, 44, 56, 110)),
    )
}


def list_models() -> list[str]:
    """Names of every registered architecture, ImageNet-stem first, then by depth."""
    return list(_REGISTRY)


def get_arch(name: str) -> ArchSpec:
    """The registered architecture called ``name``.

    Raises:
        OptionError: ``name`` is not registered; the message lists the names that are.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise OptionError(f"unknown arch {name!r}; choose one of: {', '.join(_REGISTRY)}") from None


def default_preprocessing(arch: str, *, size: int | None = None, channels: int = 3) -> PreprocessSpec:
    """ImageNet's evaluation transform for the ImageNet-stem archs, CIFAR-10's statistics for the small ones."""
    from resnet_edge.calibration.preprocess import PreprocessSpec  # numpy: not for the CLI's --arch choices

    spec = get_arch(arch)
    maker = PreprocessSpec.imagenet if spec.stem is Stem.IMAGENET else PreprocessSpec.small
    return maker(size or spec.default_input_size, channels=channels)
