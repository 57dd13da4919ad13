"""The ResNet family: blocks, the network, and the architecture registry.

Reads top to bottom like torchvision's ``models/resnet.py``: conv helpers, blocks, :class:`ResNet`, the registry and
the one public builder, :func:`create_model`. The attribute names (``conv1``, ``bn1``, ``layerN.i.convK``,
``layerN.i.bnK``, ``layerN.i.downsample.0/1``, ``fc``) are a public contract: checkpoints published for torchvision's
and timm's ResNets load into the ImageNet-stem models with ``strict=True``.

Three variants share the code (He et al., "Deep Residual Learning", 2015; "Identity Mappings in Deep Residual
Networks", 2016):

- ``residual``: ``y = ReLU(F(x) + shortcut(x))``, the original design.
- ``plain``: the same layers with the skip connections switched off, ``y = ReLU(F(x))``; used to show why the skip
  matters (``resnet-edge gradflow``).
- ``preact``: pre-activation blocks, ``y = x + F(x)`` with ``F = conv(ReLU(BN(conv(ReLU(BN(x))))))`` and no ReLU after
  the addition, so a stage of identity blocks unrolls exactly to ``x_L = x_0 + sum_l F(x_l)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from resnet_edge.errors import OptionError
from resnet_edge.models.registry import Stem, Variant, get_arch

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ResNet",
    "create_model",
]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class ResidualBlock(nn.Module):
    """What every block shares: ``forward(x) = finish(branch(x) + shortcut(x))``, the skip switchable.

    ``branch`` is the residual function F and ``shortcut`` the identity or the projection; keeping them as methods
    lets the gradient-flow analysis take each term apart with autograd.
    """

    expansion = 1
    downsample: nn.Module | None

    def __init__(self, *, skip: bool) -> None:
        super().__init__()
        self.skip = skip

    def branch(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def shortcut(self, x: Tensor) -> Tensor:
        return x if self.downsample is None else self.downsample(x)

    def finish(self, out: Tensor) -> Tensor:
        return self.relu(out)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch(x)
        if self.skip:
            out = out + self.shortcut(x)
        return self.finish(out)


class BasicBlock(ResidualBlock):
    """Two 3x3 convs: ``ReLU(bn2(conv2(ReLU(bn1(conv1(x))))) + shortcut(x))``."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, *, skip: bool = True
    ) -> None:
        super().__init__(skip=skip)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def branch(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision's "ResNet v1.5"), 1x1 expand by 4."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, *, skip: bool = True
    ) -> None:
        super().__init__(skip=skip)
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def branch(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3


class PreActBlock(ResidualBlock):
    """What the pre-activation blocks share: ``bn1`` and ReLU first, feeding the branch and the projection.

    There is no ReLU after the sum (He et al. 2016, fig. 4e), so ``y = F(x) + shortcut(x)`` exactly.
    """

    bn1: nn.BatchNorm2d
    relu: nn.ReLU

    def preactivate(self, x: Tensor) -> Tensor:
        return self.relu(self.bn1(x))

    def branch_after(self, pre: Tensor) -> Tensor:
        """The branch after the pre-activation: ``branch(x) == branch_after(preactivate(x))``."""
        raise NotImplementedError

    def branch(self, x: Tensor) -> Tensor:
        return self.branch_after(self.preactivate(x))

    def shortcut(self, x: Tensor) -> Tensor:
        return x if self.downsample is None else self.downsample(self.preactivate(x))

    def finish(self, out: Tensor) -> Tensor:
        return out

    def forward(self, x: Tensor) -> Tensor:
        # The value of finish(branch(x) + shortcut(x)), with bn1 run once: run twice (for the branch and the
        # projection), a training step would update its running statistics twice (momentum 0.19, not 0.1).
        pre = self.preactivate(x)
        out = self.branch_after(pre)
        if self.skip:
            out = out + (x if self.downsample is None else self.downsample(pre))
        return out


class PreActBasicBlock(PreActBlock):
    """Pre-activation basic block: ``x + conv2(ReLU(bn2(conv1(ReLU(bn1(x))))))``.

    The projection shortcut, where there is one, takes the pre-activated input ``ReLU(bn1(x))``.
    """

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, *, skip: bool = True
    ) -> None:
        super().__init__(skip=skip)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=False)  # the pre-activated input is shared by branch and projection
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = downsample
        self.stride = stride

    def branch_after(self, pre: Tensor) -> Tensor:
        return self.conv2(self.relu(self.bn2(self.conv1(pre))))

    def last_conv(self) -> nn.Conv2d:
        return self.conv2


class PreActBottleneck(PreActBlock):
    """Pre-activation bottleneck: BN-ReLU-1x1, BN-ReLU-3x3 (stride), BN-ReLU-1x1 expand by 4."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, *, skip: bool = True
    ) -> None:
        super().__init__(skip=skip)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = conv1x1(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.downsample = downsample
        self.stride = stride

    def branch_after(self, pre: Tensor) -> Tensor:
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return self.conv3(self.relu(self.bn3(out)))

    def last_conv(self) -> nn.Conv2d:
        return self.conv3


_BLOCKS: dict[tuple[str, bool], type[ResidualBlock]] = {
    ("basic", False): BasicBlock,
    ("bottleneck", False): Bottleneck,
    ("basic", True): PreActBasicBlock,
    ("bottleneck", True): PreActBottleneck,
}


class ResNet(nn.Module):
    """A ResNet: stem, stages of blocks, global average pooling, a linear classifier ``fc``."""

    def __init__(
        self,
        block: str,
        layers: tuple[int, ...],
        *,
        stem: Stem,
        num_classes: int,
        in_chans: int = 3,
        variant: Variant = Variant.RESIDUAL,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        # A str-valued Enum: "plain" == Variant.PLAIN, but the checks below use `is`, which a str would fail.
        variant = Variant(variant)
        if zero_init_residual and variant is Variant.PLAIN:
            # Without the skip, a zeroed last BN zeroes every block output: a dead network, not an identity.
            raise OptionError("zero_init_residual needs skip connections; the plain variant has none")
        preact = variant is Variant.PREACT
        self.block_type = _BLOCKS[(block, preact)]
        self.variant = variant
        self.skip = variant is not Variant.PLAIN
        self.stem = stem
        widths = (64, 128, 256, 512) if stem is Stem.IMAGENET else (16, 32, 64)
        if len(layers) != len(widths):
            raise OptionError(f"a {stem.value}-stem ResNet has {len(widths)} stages, got layers={layers}")

        self.inplanes = widths[0]
        if stem is Stem.IMAGENET:
            self.conv1 = nn.Conv2d(in_chans, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = conv3x3(in_chans, self.inplanes)
        # A pre-activation network normalises at the start of each block instead, and once more before the head.
        self.bn1 = None if preact else nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem is Stem.IMAGENET else None
        for index, (width, depth) in enumerate(zip(widths, layers, strict=True)):
            stride = 1 if index == 0 else 2
            setattr(self, f"layer{index + 1}", self._make_layer(width, depth, stride))
        self.num_stages = len(widths)
        self.bn_final = nn.BatchNorm2d(self.inplanes) if preact else None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each residual branch starts as zero, so each block starts as the identity (Goyal et al., 2017).
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_norm().weight)
                elif isinstance(m, PreActBlock):
                    nn.init.zeros_(m.last_conv().weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_planes = planes * self.block_type.expansion
        downsample: nn.Module | None = None
        if self.skip and (stride != 1 or self.inplanes != out_planes):
            if self.variant is Variant.PREACT:
                downsample = nn.Sequential(conv1x1(self.inplanes, out_planes, stride))
            else:
                downsample = nn.Sequential(conv1x1(self.inplanes, out_planes, stride), nn.BatchNorm2d(out_planes))
        layers = [self.block_type(self.inplanes, planes, stride, downsample, skip=self.skip)]
        self.inplanes = out_planes
        layers += [self.block_type(self.inplanes, planes, skip=self.skip) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def blocks(self) -> list[tuple[str, ResidualBlock]]:
        """Every block with its module path (``layer1.0``, ...), in execution order."""
        return [(f"layer{s + 1}.{i}", block) for s, stage in enumerate(self.stages()) for i, block in enumerate(stage)]

    def forward_stem(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        if self.bn1 is not None:
            x = self.relu(self.bn1(x))
        if self.maxpool is not None:
            x = self.maxpool(x)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        if self.bn_final is not None:
            x = self.relu(self.bn_final(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_stem(x)
        for stage in self.stages():
            x = stage(x)
        return self.forward_head(x)


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_chans: int = 3,
    variant: Variant | str = Variant.RESIDUAL,
    zero_init_residual: bool = False,
) -> ResNet:
    """Build a registered architecture with fresh weights.

    Args:
        name: a name from :func:`list_models`.
        num_classes: outputs of ``fc``; the architecture's default (1000 or 10) when None.
        in_chans: input channels (3 for RGB, 1 for grayscale).
        variant: ``residual``, ``plain`` (skips off) or ``preact`` (pre-activation blocks).
        zero_init_residual: start every residual branch at zero, so every block starts as the identity.

    Raises:
        OptionError: unknown name or variant, or a class/channel count below 1.
    """
    spec = get_arch(name)
    try:
        variant = Variant(variant)
    except ValueError:
        raise OptionError(
            f"unknown variant {variant!r}; choose one of: {', '.join(v.value for v in Variant)}"
        ) from None
    num_classes = spec.default_num_classes if num_classes is None else num_classes
    if num_classes < 1:
        raise OptionError(f"num_classes must be at least 1, got {num_classes}")
    if in_chans < 1:
        raise OptionError(f"in_chans must be at least 1, got {in_chans}")
    return ResNet(
        spec.block,
        spec.layers,
        stem=spec.stem,
        num_classes=num_classes,
        in_chans=in_chans,
        variant=variant,
        zero_init_residual=zero_init_residual,
    )
