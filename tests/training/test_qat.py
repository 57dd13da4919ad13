"""Quantization-aware training: the fake quantization matches the QDQ file quantize writes, and ``train --qat`` writes
a QDQ model that plain onnxruntime scores as the command says."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from resnet_edge.cli.main import main
from resnet_edge.models.checkpoints import build_model, resolve_weights
from resnet_edge.training.options import TrainOptions
from resnet_edge.training.qat import WeightFakeQuant, WeightRule, prepare_qat, weight_grid_mismatches

DIGITS = "builtin:digits-resnet20"
# resnet20: 21 BatchNorms after 21 convolutions, and 22 layers with weights (the classifier too).
RESNET20_CONVS, RESNET20_LAYERS = 21, 22
# The checkpoint's identity BatchNorms reproduce the folded network to float32 rounding, a few ulps of the logits.
FOLDED_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def digits_model() -> torch.nn.Module:
    return build_model("resnet20", weights=resolve_weights(DIGITS)).model.eval()


def _recipe(**changes):
    return TrainOptions(qat=True, weights=Path("x.safetensors"), **changes).qat_recipe()


@pytest.mark.parametrize(
    "changes",
    [{"target": "npu-int8"}, {"target": "x86-vnni", "weight_bits": 4}, {"target": "x86-avx2"}, {"weight_bits": 4}],
    ids=["npu-w8-per-tensor", "w4-per-channel", "avx2-reduce-range", "auto-w4"],
)
def test_trained_weights_are_a_fixed_point_of_the_recipe_grid(digits_model, changes) -> None:
    """Quantizing QAT's (already rounded) weights again on the recipe's grid moves none: quantize then writes exactly
    the integers QAT trained, whichever rule picks the scales (onnxruntime's max-abs or resnet-edge's search)."""
    recipe = _recipe(**changes)
    network = prepare_qat(digits_model, recipe)
    assert len(network.folded) == RESNET20_CONVS
    assert len(network.weights) == RESNET20_LAYERS
    assert weight_grid_mismatches(network, recipe) == 0
    rule = WeightRule.of(recipe)
    weight = dict(network.module.named_modules())["layer2.0.conv1"].weight
    integers = weight / rule.scale(weight)
    assert torch.allclose(integers, integers.round(), atol=1e-3)
    assert int(integers.abs().max().round()) == rule.qmax  # the largest weight sits at the grid's end
    distinct = len(torch.unique(integers.round()))
    assert distinct <= 2 * rule.qmax + 1


def test_the_checkpoint_holds_the_folded_rounded_network(digits_model) -> None:
    """The checkpoint QAT saves (identity BatchNorms that keep the folded biases, rounded weights) computes what the
    fake-quantized network computes with its activations unrounded: what quantize calibrates on after export."""
    network = prepare_qat(digits_model, _recipe(weight_bits=4))
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    network.observe(images)
    rebuilt = build_model("resnet20", weights=resolve_weights(DIGITS)).model.eval()
    rebuilt.load_state_dict(network.deployable_state(rebuilt))
    with network.observing(), torch.no_grad():
        expected = network.module(images)
    with torch.no_grad():
        got = rebuilt(images)
        original = digits_model(images)
    assert float((got - expected).abs().max()) < FOLDED_TOLERANCE
    assert float((original - got).abs().max()) > FOLDED_TOLERANCE  # 4-bit rounding did change the network
    with torch.no_grad():
        quantized = network.module(images)  # activations rounded too
    assert float((quantized - expected).abs().max()) > 0


def test_rounding_passes_the_gradient_except_where_clipped() -> None:
    """The straight-through estimator: d(round(w))/dw is 1 inside the grid; clipped weights get no gradient."""
    rule = WeightRule(per_channel=False, qmax=7, grid=None)
    weight = torch.tensor([[0.1, -0.33, 0.7]], requires_grad=True)
    WeightFakeQuant(rule)(weight).sum().backward()
    assert torch.equal(weight.grad, torch.ones_like(weight))
    activation = prepare_qat(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.ReLU()), _recipe()).activations
    activation[0].low.fill_(0.0)
    activation[0].high.fill_(1.0)
    x = torch.tensor([-0.5, 0.5, 2.0], requires_grad=True)
    activation[0](x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 0.0]


def test_qat_options_are_refused_without_qat_and_qat_without_weights() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--data", "builtin:digits-train", "--weight-bits", "4"])
    assert result.exit_code != 0
    assert "error: --weight-bits shape quantization-aware training; add --qat" in result.output
    result = runner.invoke(main, ["train", "--data", "builtin:digits-train", "--qat", "--arch", "resnet20"])
    assert result.exit_code != 0
    assert "error: --qat fine-tunes a trained FP32 checkpoint; pass it with --weights" in result.output
    result = runner.invoke(main, ["train", "--data", "builtin:digits-train", "--qat", "--weights", DIGITS])
    assert result.exit_code != 0
    assert "error: --qat writes a QDQ ONNX model: name it model.onnx" in result.output


@pytest.mark.slow
def test_train_qat_writes_a_qdq_model_that_onnxruntime_scores_as_reported(tmp_path: Path) -> None:
    """``train --qat`` on the digits model, W4A8 per channel, one short epoch: a QDQ file with int4 weights and its
    calibration record, whose accuracy plain onnxruntime confirms, and the fine-tuned checkpoint beside it."""
    import onnx
    import onnxruntime as ort

    from resnet_edge.calibration.sources import open_source
    from resnet_edge.onnx.metadata import model_classes, preprocessing_for

    output = tmp_path / "digits.qat.onnx"
    args = ["train", "--data", "builtin:digits-train", "--weights", DIGITS, "--qat", "--weight-bits", "4"]
    args += ["--epochs", "1", "--limit", "300", "--augment", "crop", "--threads", "1"]
    args += ["--calib", "builtin:digits-calib"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(main, [*args, "--json", "-o", str(output)])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output[result.output.index("{") :])
    assert found["qat"]["grid_mismatches"] == 0
    assert found["qat"]["recipe"]["weight_type"] == "int4"
    assert Path(found["checkpoint"]).name == "digits.qat.safetensors" and Path(found["checkpoint"]).is_file()
    record = json.loads(Path(f"{output}.json").read_text())
    assert record["weight_bits"] == 4 and record["accuracy_recovery"]["steps"] == []
    trained = record["quantization_aware_training"]  # the record says QAT ran, with the accuracy before and after
    assert trained["epochs"] == 1 and trained["weights_moved_by_export"] == 0
    assert trained["fp32_top1"] > 0.95 and trained["before_top1"] is not None
    assert len(trained["after_top1_per_epoch"]) == 1
    model = onnx.load(str(output))
    assert any(i.data_type == onnx.TensorProto.INT4 for i in model.graph.initializer)

    # Plain onnxruntime on the held-out split, preprocessed by the model's own spec: the figure quantize reported.
    test = open_source("builtin:digits-test", classes=model_classes(model))
    spec = preprocessing_for(model)
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    samples = [test.load(i, spec) for i in range(len(test))]
    images = np.stack([s.tensor for s in samples])
    predicted = session.run(None, {session.get_inputs()[0].name: images})[0].argmax(1)
    labels = np.array([s.label for s in samples])
    assert found["quantize"]["evaluation_source"] == "builtin:digits-test"  # the model's held-out split
    assert found["quantize"]["int8_accuracy"]["top1"] == pytest.approx(float((predicted == labels).mean()))
    assert found["quantize"]["int8_accuracy"]["top1"] > 0.9
