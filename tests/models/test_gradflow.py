"""Gradient flow through skip connections: the algebra, the measurement, the command; and pre-activation
models through export, simplify and quantize."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from resnet_edge.cli.gradflow import gradflow
from resnet_edge.conversion.simplify import SimplifyResult
from resnet_edge.errors import CheckFailedError, OptionError
from resnet_edge.models.gradflow import DECOMPOSITION_RTOL, compare_gradient_flow, gradient_flow
from resnet_edge.models.options import GradFlowOptions
from resnet_edge.models.resnet import BasicBlock, PreActBasicBlock, create_model
from tests.conftest import randomize_batchnorm

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _vjp(output: torch.Tensor, x: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(output, x, upstream, retain_graph=True)[0]


def test_preact_identity_block_gradient_is_branch_vjp_plus_upstream() -> None:
    # y = F(x) + x with nothing after the sum: dL/dx = (dF/dx)^T g + g, exactly.
    torch.manual_seed(0)
    block = randomize_batchnorm(PreActBasicBlock(16, 16)).eval()
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    upstream = torch.randn(2, 16, 8, 8)
    total = _vjp(block(x), x, upstream)
    torch.testing.assert_close(total, _vjp(block.branch(x), x, upstream) + upstream)
    assert not torch.allclose(total, upstream)  # the branch term is not negligible: the check means something


def test_preact_projection_block_gradient_is_branch_plus_shortcut_vjp() -> None:
    torch.manual_seed(0)
    projection = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False))
    block = PreActBasicBlock(16, 32, stride=2, downsample=projection)
    randomize_batchnorm(block).eval()
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    upstream = torch.randn(2, 32, 4, 4)
    torch.testing.assert_close(
        _vjp(block(x), x, upstream), _vjp(block.branch(x), x, upstream) + _vjp(block.shortcut(x), x, upstream)
    )


def test_post_activation_block_gradient_goes_through_the_relu_after_the_sum() -> None:
    # y = ReLU(F(x) + x): dL/dx = (dF/dx)^T (ReLU' * g) + ReLU' * g.
    torch.manual_seed(0)
    block = randomize_batchnorm(BasicBlock(16, 16)).eval()
    for module in block.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False  # the sum is needed again below
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    upstream = torch.randn(2, 16, 8, 8)
    masked = upstream * (block.branch(x) + x > 0)
    assert 0 < float((masked == 0).float().mean()) < 1  # some units cut off by the ReLU, some not
    torch.testing.assert_close(_vjp(block(x), x, upstream), _vjp(block.branch(x), x, masked) + masked)


def test_preact_stage_of_identity_blocks_unrolls_to_x0_plus_sum_of_branches() -> None:
    # x_L = x_0 + sum_l F_l(x_l) (He et al. 2016, eq. 4): layer1 of a preact net has only identity shortcuts.
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("resnet20", variant="preact")).eval()
    stage = model.layer1
    assert all(block.downsample is None for block in stage)
    x0 = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        x, branches = x0, []
        for block in stage:
            branches.append(block.branch(x))
            x = block(x)
        torch.testing.assert_close(stage(x0), x0 + sum(branches))
        assert float(sum(branches).abs().max()) > 1  # far from the identity: the sum is doing the work


@pytest.mark.slow
def test_measured_terms_add_up_and_the_identity_term_is_the_upstream_gradient() -> None:
    result = gradient_flow(None, None, GradFlowOptions("resnet20", variant="preact", batch=4))
    assert result.decomposition_error <= DECOMPOSITION_RTOL
    assert [b.shortcut for b in result.blocks] == ["identity"] * 3 + (["projection"] + ["identity"] * 2) * 2
    # In a preact block y_l = x_{l+1} and nothing follows the sum, so the identity term is dL/dx_{l+1} itself.
    for block, following in zip(result.blocks, result.blocks[1:], strict=False):
        if block.shortcut == "identity":
            assert block.shortcut_term_norm == pytest.approx(following.grad_norm, rel=1e-5)
        assert block.grad_norm <= block.branch_term_norm + block.shortcut_term_norm * (1 + 1e-5)


@pytest.mark.slow
def test_deep_plain_network_gradient_scale_is_exponential_in_depth() -> None:
    # Measured (resnet56, BatchNorm in training mode, batch 4, seed 0): residual first/last block 157, plain
    # 1.7e4, ratio 106; at the first block the plain gradient is 101x the residual one (seeds 1, 2: 62-116,
    # 66-135; batch 8: 43-122). Under training-mode BatchNorm the plain stack's gradient explodes toward the
    # input rather than vanishing: x1.45 per block, against x1.21 with the skips.
    result = compare_gradient_flow(None, None, GradFlowOptions("resnet56", batch=4, seed=0))
    res, plain = result.residual, result.plain
    assert plain.first_to_last > 10 * res.first_to_last
    assert result.first_block_ratio > 10
    assert plain.per_block_growth > res.per_block_growth + 0.1
    assert [b.shortcut for b in plain.blocks] == ["none"] * 27
    assert {b.shortcut_term_norm for b in plain.blocks} == {None}
    assert max(res.decomposition_error, plain.decomposition_error) <= DECOMPOSITION_RTOL


def test_plain_network_has_the_residual_weights() -> None:
    from resnet_edge.models.gradflow import fresh_model
    from resnet_edge.models.registry import Variant

    residual = fresh_model("resnet20", Variant.RESIDUAL, seed=3).state_dict()
    plain = fresh_model("resnet20", Variant.PLAIN, seed=3).state_dict()
    assert set(residual) - set(plain) == {k for k in residual if ".downsample." in k}
    assert all(torch.equal(plain[k], residual[k]) for k in plain)


def test_a_given_model_is_measured_as_it_is_and_left_alone() -> None:
    from resnet_edge.models.gradflow import fresh_model
    from resnet_edge.models.registry import Variant

    options = GradFlowOptions("resnet20", batch=4, seed=5)
    fresh = gradient_flow(None, None, options)
    model = fresh_model("resnet20", Variant.RESIDUAL, seed=5).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    given = gradient_flow(None, None, options, model=model)
    assert [b.grad_norm for b in given.blocks] == pytest.approx([b.grad_norm for b in fresh.blocks], rel=1e-6)
    assert not model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        model.layer3[2].conv2.weight.mul_(3)  # another network: another gradient
    assert gradient_flow(None, None, options, model=model).blocks[0].grad_norm != given.blocks[0].grad_norm
    with pytest.raises(OptionError, match=r"the model given is not resnet32 \(residual\): 9 blocks"):
        gradient_flow(None, None, GradFlowOptions("resnet32", batch=4), model=model)


def test_options_are_checked() -> None:
    with pytest.raises(OptionError, match=r"batch must be at least 2 \(.*\), got 1"):
        GradFlowOptions("resnet20", batch=1)
    with pytest.raises(OptionError, match="batch 56 is more than the 55 images in builtin:photos"):
        gradient_flow(None, None, GradFlowOptions("resnet18", batch=56))
    with pytest.raises(OptionError, match="unknown variant 'skipless'"):
        GradFlowOptions("resnet20", variant="skipless")


@pytest.mark.slow
def test_cli_compare_writes_the_plot_and_prints_the_table(tmp_path: Path) -> None:
    args = ["--arch", "resnet20", "--compare", "--batch", "4", "-o", str(tmp_path)]
    result = CliRunner().invoke(gradflow, args)
    assert result.exit_code == 0, result.output
    plot = tmp_path / "gradflow_resnet20.png"
    assert plot.read_bytes().startswith(PNG_MAGIC) and plot.stat().st_size > 20_000
    assert [p.name for p in tmp_path.iterdir()] == [plot.name]  # nothing half-written beside it
    lines = result.output.splitlines()
    assert lines[1].split() == [
        "depth",
        "block",
        "shortcut",
        "residual",
        "|dL/dx|",
        "branch",
        "term",
        "shortcut",
        "term",
        "plain",
        "|dL/dx|",
        "plain/residual",
    ]
    assert lines[3].split()[:3] == ["1", "layer1.0", "identity"]
    assert lines[6].split()[:3] == ["4", "layer2.0", "projection"]
    assert f"wrote {plot}" in result.output


@pytest.mark.slow
def test_cli_json_parses(tmp_path: Path) -> None:
    args = ["--arch", "resnet20", "--plain", "--batch", "4", "-o", str(tmp_path), "--json"]
    result = CliRunner().invoke(gradflow, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["variant"] == "plain" and data["batch"] == 4 and len(data["blocks"]) == 9
    assert data["plot"] == str(tmp_path / "gradflow_resnet20_plain.png")
    first, last = data["blocks"][0], data["blocks"][-1]
    assert data["first_to_last"] == pytest.approx(first["grad_norm"] / last["grad_norm"])
    assert (tmp_path / "gradflow_resnet20_plain.png").is_file()


def test_cli_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    both = runner.invoke(gradflow, ["--arch", "resnet20", "--plain", "--compare", "-o", str(tmp_path)])
    assert isinstance(both.exception, OptionError) and "exclude each other" in str(both.exception)
    a_file = tmp_path / "plot.png"
    a_file.write_text("not a folder")
    from resnet_edge.cli.main import main

    clash = runner.invoke(main, ["gradflow", "--arch", "resnet20", "-o", str(a_file)])
    assert clash.exit_code == 1 and clash.output.strip() == f"error: output folder is a file: {a_file}"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


# Pre-activation networks through export, simplify and quantize. Folding a BatchNorm rewrites the Conv that
# feeds it; in a preact block bn1 is fed by the addition (or, in layer1.0, by the stem conv, whose output also
# runs along the identity shortcut), so there is no Conv it can be folded into, and the ReLU after it keeps it
# out of the following conv too. bn2 follows conv1 and folds at export. What remains: one BatchNormalization
# per block plus bn_final, kept by `simplify --allow-unfolded-bn` and left in FP32 by the quantizer.

PREACT_KEPT = [f"/layer{s}/layer{s}.{i}/bn1/BatchNormalization" for s in (1, 2, 3) for i in range(3)]
PREACT_KEPT.append("/bn_final/BatchNormalization")


@pytest.fixture(scope="module")
def preact_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from resnet_edge.conversion.export import export_onnx
    from resnet_edge.conversion.options import ExportOptions

    path = tmp_path_factory.mktemp("preact") / "preact.onnx"
    result = export_onnx(None, path, ExportOptions(arch="resnet20", variant="preact"))
    assert result.variant == "preact"
    return path


@pytest.mark.slow
def test_preact_export_folds_bn2_and_keeps_bn1(preact_onnx: Path) -> None:
    nodes = onnx.load(str(preact_onnx)).graph.node
    assert [n.name for n in nodes if n.op_type == "BatchNormalization"] == PREACT_KEPT
    assert sum(n.op_type == "Conv" for n in nodes) == 21  # stem, 2 per block, 2 projections: no BN-only convs


@pytest.fixture(scope="module")
def preact_sim(preact_onnx: Path) -> SimplifyResult:
    from resnet_edge.conversion.options import SimplifyOptions
    from resnet_edge.conversion.simplify import simplify_onnx

    return simplify_onnx(preact_onnx, preact_onnx.with_name("preact.sim.onnx"), SimplifyOptions(allow_unfolded_bn=True))


@pytest.mark.slow
def test_preact_simplify_refuses_unfolded_bn_unless_allowed(
    preact_onnx: Path, preact_sim: SimplifyResult, tmp_path: Path
) -> None:
    from resnet_edge.conversion.simplify import simplify_onnx

    refused = r"10 BatchNormalization .*/layer1/layer1\.0/bn1/BatchNormalization .*allow-unfolded-bn"
    with pytest.raises(CheckFailedError, match=refused):
        simplify_onnx(preact_onnx, tmp_path / "refused.onnx")
    assert not (tmp_path / "refused.onnx").exists()

    assert [name for name, _ in preact_sim.batch_norm_remaining] == PREACT_KEPT
    producers = [producer.split()[0] for _, producer in preact_sim.batch_norm_remaining]
    assert producers == ["Conv"] + ["Add"] * 9
    assert preact_sim.batch_norm_folded == 0  # export already folded every BN that can be
    assert max(p.max_abs_error for p in preact_sim.parity.values()) < 1e-3


@pytest.mark.slow
def test_preact_quantizes_with_bn_in_fp32(preact_sim: SimplifyResult, tmp_path: Path) -> None:
    from resnet_edge.quantization.options import QuantizeOptions
    from resnet_edge.quantization.quantize import quantize_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        options = QuantizeOptions(measure_speed=False, limit=32, allow_accuracy_drop=True)  # random weights
        result = quantize_onnx(preact_sim.output, tmp_path / "preact.int8.onnx", options)
    assert result.quantized_nodes == 22  # 21 Conv + the Gemm
    assert result.parity.cosine > 0.99
    nodes = onnx.load(str(result.output)).graph.node
    producers = {o: n for n in nodes for o in n.output}
    batch_norms = [n for n in nodes if n.op_type == "BatchNormalization"]
    assert len(batch_norms) == 10
    assert all(producers[n.input[0]].op_type == "DequantizeLinear" for n in batch_norms)  # FP32, between Q/DQ
