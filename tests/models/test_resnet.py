"""The residual design, the registry, and compatibility with torchvision's parameter names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from resnet_edge.errors import OptionError
from resnet_edge.models.checkpoints import load_weights
from resnet_edge.models.registry import Stem, get_arch, list_models
from resnet_edge.models.resnet import BasicBlock, Bottleneck, ResNet, create_model
from tests.conftest import randomize_batchnorm

GOLDEN = Path(__file__).parents[1] / "golden" / "torchvision_resnet_keys.json"


def test_registry_lists_the_ten_architectures() -> None:
    assert list_models() == [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
    ]
    with pytest.raises(OptionError, match="unknown arch 'resnet19'.*resnet18"):
        get_arch("resnet19")


@pytest.mark.parametrize(
    ("arch", "params"),
    [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("resnet101", 44_549_160),
        ("resnet152", 60_192_808),  # torchvision's published counts
        ("resnet20", 272_474),
        ("resnet56", 855_770),
        ("resnet110", 1_730_714),  # He et al. 2015: 0.27M, 0.85M, 1.7M
    ],
)
def test_parameter_counts(arch: str, params: int) -> None:
    assert sum(p.numel() for p in create_model(arch).parameters()) == params


@pytest.mark.parametrize("arch", ["resnet20", "resnet56"])
def test_small_family_has_three_stages_of_16_32_64(arch: str) -> None:
    model = create_model(arch)
    depth = int(arch.removeprefix("resnet"))
    assert [stage[0].conv1.out_channels for stage in model.stages()] == [16, 32, 64]
    assert [len(stage) for stage in model.stages()] == [(depth - 2) // 6] * 3
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_basic_block_computes_relu_of_branch_plus_shortcut() -> None:
    torch.manual_seed(0)
    for block in (
        BasicBlock(16, 16),
        BasicBlock(
            16, 32, stride=2, downsample=nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        ),
    ):
        randomize_batchnorm(block).eval()
        x = torch.randn(2, 16, 8, 8)
        branch = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        shortcut = x if block.downsample is None else block.downsample(x)
        torch.testing.assert_close(block(x), torch.relu(branch + shortcut))


def test_bottleneck_is_1x1_3x3_1x1_with_stride_on_the_3x3_and_expansion_4() -> None:
    model = create_model("resnet50")
    block = model.layer2[0]
    assert isinstance(block, Bottleneck) and Bottleneck.expansion == 4
    assert [c.kernel_size for c in (block.conv1, block.conv2, block.conv3)] == [(1, 1), (3, 3), (1, 1)]
    assert [c.stride for c in (block.conv1, block.conv2, block.conv3)] == [(1, 1), (2, 2), (1, 1)]
    assert block.conv3.out_channels == 4 * block.conv1.out_channels == 512
    randomize_batchnorm(block).eval()
    x = torch.randn(1, 256, 8, 8)
    branch = block.bn3(block.conv3(torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))))))
    torch.testing.assert_close(block(x), torch.relu(branch + block.downsample(x)))


@pytest.mark.parametrize("arch", list_models())
def test_projection_shortcut_exactly_where_stride_or_width_changes(arch: str) -> None:
    model = create_model(arch)
    for _, block in model.blocks():
        in_ch = block.conv1.in_channels
        out_ch = (block.conv3 if isinstance(block, Bottleneck) else block.conv2).out_channels
        changes = block.stride != 1 or in_ch != out_ch
        assert (block.downsample is not None) == changes
        if changes:
            conv, bn = block.downsample
            assert conv.kernel_size == (1, 1) and conv.stride == (block.stride, block.stride)
            assert isinstance(bn, nn.BatchNorm2d)


def test_options_num_classes_in_chans_zero_init() -> None:
    model = create_model("resnet18", num_classes=7, in_chans=1, zero_init_residual=True)
    assert model.fc.out_features == 7 and model.conv1.in_channels == 1
    assert all(torch.count_nonzero(block.bn2.weight) == 0 for _, block in model.blocks())
    randomize_batchnorm(model)  # fresh statistics, then zero the last BN scales again: every block is the identity
    for _, block in model.blocks():
        nn.init.zeros_(block.bn2.weight)
        nn.init.zeros_(block.bn2.bias)
    model.eval()
    x = torch.rand(1, 64, 8, 8)
    torch.testing.assert_close(model.layer1(x), x)  # identity shortcut, ReLU of non-negative input
    with pytest.raises(OptionError, match="num_classes"):
        create_model("resnet18", num_classes=0)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_state_dict_keys_and_shapes_match_torchvision(arch: str) -> None:
    golden = json.loads(GOLDEN.read_text())["models"][arch]["state_dict"]
    ours = [[k, list(v.shape)] for k, v in create_model(arch).state_dict().items()]
    assert ours == golden
    # A checkpoint with torchvision's keys and shapes loads strictly.
    state = {k: torch.zeros(shape) if shape else torch.tensor(0) for k, shape in golden}
    load_weights(create_model(arch), state, arch=arch, source=Path("torchvision.pth"))


def test_stems() -> None:
    assert get_arch("resnet50").stem is Stem.IMAGENET and get_arch("resnet50").default_input_size == 224
    assert get_arch("resnet110").stem is Stem.SMALL and get_arch("resnet110").default_input_size == 32


@pytest.mark.parametrize("arch", ["resnet20", "resnet50"])
def test_preact_block_is_branch_plus_shortcut_and_updates_bn1_once(arch: str) -> None:
    model = randomize_batchnorm(create_model(arch, variant="preact"))
    path, block = next((p, b) for p, b in model.blocks() if b.downsample is not None)  # a projection block
    x = torch.randn(2, block.bn1.num_features, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block.eval()(x), block.branch(x) + block.shortcut(x))
        block.train()(x)
    # bn1 feeds both the branch and the projection; one forward pass is one update of its running statistics.
    assert int(block.bn1.num_batches_tracked) == 1, path


def test_plain_variant_has_no_shortcuts_and_refuses_zero_init() -> None:
    model = create_model("resnet56", variant="plain")
    assert all(not b.skip and b.downsample is None for _, b in model.blocks())
    with pytest.raises(OptionError, match="zero_init_residual needs skip connections"):
        create_model("resnet20", variant="plain", zero_init_residual=True)
    # The variant given as a string, straight to ResNet, means the same as the Enum.
    assert not ResNet("basic", (1, 1, 1), stem=Stem.SMALL, num_classes=10, variant="plain").skip
