"""Accuracy recovery on hand-built graphs whose right answer is known: equalization keeps the function, bias
correction removes a planted shift, AdaRound never loses to nearest rounding; the weight grids, int4 and
power-of-two writing, the strict-integer check, and the options. Fast: no model is exported here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from resnet_edge.errors import OptionError
from resnet_edge.onnx.runtime import open_session
from resnet_edge.quantization.adaround import AdaRoundParameters, adaround_layer
from resnet_edge.quantization.bias_correction import MeanInputs, correct_biases
from resnet_edge.quantization.configs import Format, Int8Target, resolve_config
from resnet_edge.quantization.equalize import (
    absorb_biases,
    absorbable_pairs,
    equalization_pairs,
    equalize_model,
    pre_activation_ranges,
)
from resnet_edge.quantization.layer_data import mean_patch, output_positions, patches
from resnet_edge.quantization.npu import strict_integer_violations
from resnet_edge.quantization.options import QuantizeOptions
from resnet_edge.quantization.qdq import (
    INT4_OPSET,
    dequantized_weight,
    power_of_two_activations,
    quantized_layers,
    require_opset,
    write_bias,
    write_weights,
)
from resnet_edge.quantization.record import QuantizationRecord
from resnet_edge.quantization.weights import WeightGrid, expand_scale, grid_scales, round_to_nearest

# Equalization only reorders floating-point products: the outputs agree to float32 rounding, relative to their size.
FLOAT_RTOL = 1e-5
RNG_SEED = 0


def _conv(name: str, x: str, out: str, w: np.ndarray, b: np.ndarray | None, pads: int = 1, stride: int = 1):
    inits = [numpy_helper.from_array(w.astype(np.float32), f"{name}.w")]
    inputs = [x, f"{name}.w"]
    if b is not None:
        inits.append(numpy_helper.from_array(b.astype(np.float32), f"{name}.b"))
        inputs.append(f"{name}.b")
    k = w.shape[2]
    node = helper.make_node(
        "Conv", inputs, [out], name=name, kernel_shape=[k, k], pads=[pads] * 4, strides=[stride, stride]
    )
    return node, inits


def residual_block(rng: np.random.Generator, *, channels: int = 4, wide: int = 8, bottleneck: bool = False):
    """x -> conv1 -> relu -> conv2 [-> relu -> conv3] -> add(x) -> relu -> pool -> fc: a residual block whose first
    conv's output channels have ranges 1000x apart (what per-tensor weights handle worst)."""
    spread = np.logspace(-1.5, 1.5, wide)[:, None, None, None]
    w1 = rng.normal(size=(wide, channels, 3, 3)) * spread * 0.1
    nodes, inits = [], []
    n, i = _conv("/layer1/layer1.0/conv1/Conv", "x", "c1", w1, rng.normal(size=wide) * spread.ravel() * 0.1)
    nodes.append(n), inits.extend(i)
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"], name="/layer1/layer1.0/relu/Relu"))
    last = "r1"
    if bottleneck:
        w2 = rng.normal(size=(wide, wide, 3, 3)) * 0.1 / spread.reshape(1, -1, 1, 1)
        n, i = _conv("/layer1/layer1.0/conv2/Conv", "r1", "c2", w2, rng.normal(size=wide) * 0.1)
        nodes.append(n), inits.extend(i)
        nodes.append(helper.make_node("Relu", ["c2"], ["r2"], name="/layer1/layer1.0/relu_1/Relu"))
        w3 = rng.normal(size=(channels, wide, 1, 1)) * 0.2
        n, i = _conv("/layer1/layer1.0/conv3/Conv", "r2", "branch", w3, rng.normal(size=channels) * 0.1, pads=0)
    else:
        w2 = rng.normal(size=(channels, wide, 3, 3)) * 0.1
        n, i = _conv("/layer1/layer1.0/conv2/Conv", last, "branch", w2, rng.normal(size=channels) * 0.1)
    nodes.append(n), inits.extend(i)
    nodes += [
        helper.make_node("Add", ["branch", "x"], ["sum"], name="/layer1/layer1.0/Add"),
        helper.make_node("Relu", ["sum"], ["out"], name="/layer1/layer1.0/relu_2/Relu"),
        helper.make_node("GlobalAveragePool", ["out"], ["pooled"], name="/avgpool/GlobalAveragePool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="/Flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="/fc/Gemm", transB=1),
    ]
    inits += [
        numpy_helper.from_array(rng.normal(size=(3, channels)).astype(np.float32), "fc.w"),
        numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "fc.b"),
    ]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model: onnx.ModelProto, x: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
    """The model's logits, or the named tensors (made graph outputs of a copy)."""
    if outputs:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs)
    return open_session(model, classifier=False, audit=False).predict(x, outputs)


def qdq_of(model: onnx.ModelProto, data: np.ndarray, tmp_path, *, per_channel: bool = True) -> onnx.ModelProto:
    """onnxruntime's QDQ quantization of ``model`` (uint8 activations, int8 symmetric weights) on ``data``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": data[i : i + 8]} for i in range(0, len(data), 8)])

        def get_next(self):
            return next(self.batches, None)

    onnx.save(model, tmp_path / "float.onnx")
    quantize_static(
        str(tmp_path / "float.onnx"),
        str(tmp_path / "qdq.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"WeightSymmetric": True},
    )
    return onnx.load(str(tmp_path / "qdq.onnx"))


# --- cross-layer equalization ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bottleneck", [False, True])
def test_equalization_preserves_the_fp32_function_and_balances_ranges(bottleneck: bool) -> None:
    rng = np.random.default_rng(RNG_SEED)
    model = residual_block(rng, bottleneck=bottleneck)
    x = rng.normal(size=(5, 4, 6, 6)).astype(np.float32)
    found = equalize_model(model)
    # Pairs inside the branch only: conv1->conv2 (and conv2->conv3), never the conv before the skip's Add.
    expected = 2 if bottleneck else 1
    assert len(found.pairs) == expected
    assert all(not p.second.endswith(("Add", "Gemm")) for p in found.pairs)
    before, after = run(model, x)[0], run(found.model, x)[0]
    np.testing.assert_allclose(after, before, rtol=FLOAT_RTOL, atol=FLOAT_RTOL * np.abs(before).max())
    first = found.pairs[0]
    # Ranges 1000x apart are balanced against the second layer's: the spread shrinks to its square root.
    assert first.precision_after[0] > 1.5 * first.precision_before[0]
    inits = {i.name: numpy_helper.to_array(i) for i in found.model.graph.initializer}
    w1, w2 = inits[f"{first.first}.w"], inits[f"{first.second}.w"]
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
    r2 = np.abs(np.moveaxis(w2, 1, 0)).reshape(w2.shape[1], -1).max(axis=1)
    if not bottleneck:  # a single pair is balanced exactly; a chain settles to within the sweep tolerance
        np.testing.assert_allclose(r1, r2, rtol=1e-5)
    assert equalize_model(model).model.SerializeToString() == found.model.SerializeToString()  # deterministic


def test_equalization_unshares_parameters_it_rescales() -> None:
    rng = np.random.default_rng(RNG_SEED)
    model = residual_block(rng, bottleneck=True)
    # Exporters share identical tensors (the zero biases of a fresh model): conv2 reads conv1's bias here.
    conv2 = next(n for n in model.graph.node if n.name.endswith("conv2/Conv"))
    conv2.input[2] = "/layer1/layer1.0/conv1/Conv.b"
    x = rng.normal(size=(5, 4, 6, 6)).astype(np.float32)
    found = equalize_model(model)
    assert len(found.pairs) == 2
    before, after = run(model, x)[0], run(found.model, x)[0]
    np.testing.assert_allclose(after, before, rtol=FLOAT_RTOL, atol=FLOAT_RTOL * np.abs(before).max())


def test_equalization_never_pairs_across_a_shared_tensor() -> None:
    rng = np.random.default_rng(RNG_SEED)
    model = residual_block(rng)
    # Make conv1's ReLU output also a graph output: it has a second reader, so rescaling it would change that.
    model.graph.output.append(helper.make_tensor_value_info("r1", TensorProto.FLOAT, None))
    assert equalization_pairs(model) == []
    assert equalize_model(model).pairs == []


def test_bias_absorption_is_exact_where_applied() -> None:
    rng = np.random.default_rng(RNG_SEED)
    model = residual_block(rng, bottleneck=True)
    # Push conv2's pre-activations positive so that its channels have something to absorb.
    for init in model.graph.initializer:
        if init.name == "/layer1/layer1.0/conv2/Conv.b":
            init.CopyFrom(numpy_helper.from_array(np.full(8, 50.0, np.float32), init.name))
    x = rng.normal(size=(6, 4, 6, 6)).astype(np.float32)
    equalized = equalize_model(model)
    exact = absorbable_pairs(equalized)
    assert [p.first for p in exact] == ["/layer1/layer1.0/conv2/Conv"]  # conv3 is 1x1, conv2 is padded
    ranges = pre_activation_ranges(equalized.model, equalized.pairs, [x[:3], x[3:]])
    np.testing.assert_allclose(
        ranges["/layer1/layer1.0/conv2/Conv"][0], run(equalized.model, x, ["c2"])[0].min(axis=(0, 2, 3))
    )
    absorbed = absorb_biases(equalized, ranges)
    counts = {p.first: p.absorbed for p in absorbed.pairs}
    assert counts == {"/layer1/layer1.0/conv1/Conv": 0, "/layer1/layer1.0/conv2/Conv": 8}  # every channel above 0
    before, after = run(model, x)[0], run(absorbed.model, x)[0]
    np.testing.assert_allclose(after, before, rtol=FLOAT_RTOL, atol=FLOAT_RTOL * np.abs(before).max())
    # conv3's input (the ReLU's output) now starts at 0 in every channel: its per-tensor range shrank.
    assert run(absorbed.model, x, ["r2"])[0].max() < run(equalized.model, x, ["r2"])[0].max()


# --- layer inputs -------------------------------------------------------------------------------------------


def test_patches_reproduce_the_convolution_and_mean_patch_is_their_mean(tmp_path) -> None:
    rng = np.random.default_rng(RNG_SEED)
    w = rng.normal(size=(5, 3, 3, 3)).astype(np.float32)
    node, inits = _conv("conv", "x", "y", w, None, pads=1, stride=2)
    graph = helper.make_graph(
        [node],
        "c",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(size=(2, 3, 7, 7)).astype(np.float32)
    qdq = qdq_of(model, x, tmp_path)
    layer = quantized_layers(qdq, model)[0]
    height, width = output_positions(layer, 7, 7)
    y = run(model, x)[0]
    assert y.shape == (2, 5, height, width)
    n, r, c = np.meshgrid(np.arange(2), np.arange(height), np.arange(width), indexing="ij")
    rows = patches(layer, x, (n.ravel(), r.ravel(), c.ravel()))
    np.testing.assert_allclose(rows @ w.reshape(5, -1).T, np.moveaxis(y, 1, -1).reshape(-1, 5), rtol=1e-4, atol=1e-4)
    total, count = mean_patch(layer, x)
    np.testing.assert_allclose(total / count, rows.mean(axis=0), rtol=1e-5, atol=1e-6)


# --- bias correction -------------------------------------------------------------------------------------------


def test_bias_correction_removes_a_planted_mean_shift(tmp_path) -> None:
    rng = np.random.default_rng(RNG_SEED)
    model = residual_block(rng)
    x = (rng.random(size=(64, 4, 6, 6)) * 2).astype(np.float32)  # a positive mean: weight errors shift the output
    qdq = qdq_of(model, x, tmp_path)
    layers = quantized_layers(qdq, model)
    conv2 = next(layer for layer in layers if layer.name.endswith("conv2/Conv"))
    # Plant the shift: conv2's weights all rounded one step up, a systematic error a nearest rounding never makes.
    q_name = conv2.weight_dq.input[0]
    for init in qdq.graph.initializer:
        if init.name == q_name:
            raised = np.clip(numpy_helper.to_array(init).astype(np.int16) + 1, -128, 127).astype(np.int8)
            init.CopyFrom(numpy_helper.from_array(raised, q_name))

    def shift() -> np.ndarray:
        fp32, quantized = run(model, x, ["branch"])[0], run(qdq, x, ["branch"])[0]
        return (quantized - fp32).mean(axis=(0, 2, 3))

    planted = shift()
    means = MeanInputs()
    for layer in layers:
        means.add(layer, run(model, x, [layer.input_tensor])[0])
    found = correct_biases(qdq, layers, means)
    corrected = shift()
    assert all(layer.applied for layer in found.layers)
    assert np.abs(planted).min() > 0.02  # the planted shift is real, in every channel
    # Left: what int8 activations and the int32 bias grid cannot express, an order of magnitude below.
    assert np.abs(corrected).max() < np.abs(planted).max() / 10


# --- AdaRound ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits, steps", [(4, 300), (4, 3), (8, 100)])
def test_adaround_never_does_worse_than_nearest_rounding(bits: int, steps: int) -> None:
    rng = np.random.default_rng(RNG_SEED)
    weight = rng.normal(size=(8, 4, 3, 3)).astype(np.float32) * 0.3
    inputs = np.abs(rng.normal(size=(1024, 36))).astype(np.float32)
    targets = inputs @ weight.reshape(8, -1).T
    grid = WeightGrid(bits=bits, per_channel=True)
    scale = grid_scales(weight, grid)
    integers, found = adaround_layer(
        weight, scale, grid, inputs, targets, parameters=AdaRoundParameters(iterations=steps, seed=0)
    )
    assert found.adaround_loss <= found.nearest_loss if found.kept == "adaround" else True
    nearest = round_to_nearest(weight, scale, grid)
    full = expand_scale(scale, weight.shape, grid)

    def loss(q: np.ndarray) -> float:
        return float(np.square(inputs @ (q * full).reshape(8, -1).T - targets).sum(axis=1).mean())

    assert loss(integers) <= loss(nearest) * (1 + 1e-5)  # the kept rounding is never worse on the layer's loss
    assert integers.min() >= grid.qmin and integers.max() <= grid.qmax
    assert np.abs(integers.astype(int) - nearest).max() <= 1  # only up or down: never more than one step away
    if bits == 4 and steps >= 300:
        assert found.kept == "adaround" and loss(integers) < 0.8 * loss(nearest)  # and it learns something real


def test_adaround_keeps_to_its_time_budget() -> None:
    rng = np.random.default_rng(RNG_SEED)
    weight = rng.normal(size=(16, 64)).astype(np.float32)
    inputs = rng.normal(size=(512, 64)).astype(np.float32)
    grid = WeightGrid(bits=4, per_channel=True)
    _, found = adaround_layer(
        weight,
        grid_scales(weight, grid),
        grid,
        inputs,
        inputs @ weight.T,
        parameters=AdaRoundParameters(iterations=100_000),
        seconds=0.5,
    )
    assert found.steps < 100_000  # cut short by the budget, not by the step count


# --- weight grids, int4, power-of-two scales ----------------------------------------------------------------------


def test_grid_scales_shapes_and_powers_of_two() -> None:
    rng = np.random.default_rng(RNG_SEED)
    weight = rng.normal(size=(6, 40, 3, 3)).astype(np.float32)
    assert grid_scales(weight, WeightGrid(8, per_channel=False)).shape == ()
    assert grid_scales(weight, WeightGrid(4, per_channel=True)).shape == (6,)
    blocked = grid_scales(weight, WeightGrid(4, per_channel=True, block=16))
    assert blocked.shape == (6, 3, 3, 3)  # 40 input channels in blocks of 16: 3 blocks, the last one short
    power = grid_scales(weight, WeightGrid(8, per_channel=True, power_of_two=True))
    assert np.all(np.log2(power) == np.round(np.log2(power)))
    # The least-error scale never rounds worse than the plain max-abs one.
    grid = WeightGrid(4, per_channel=True)
    chosen = grid_scales(weight, grid)
    plain = np.abs(weight).reshape(6, -1).max(axis=1) / grid.qmax

    def error(scale: np.ndarray) -> float:
        full = expand_scale(scale, weight.shape, grid)
        return float(np.square(weight - round_to_nearest(weight, scale, grid) * full).sum())

    assert error(chosen) <= error(plain)


@pytest.mark.parametrize("block", [None, 2])
def test_int4_weights_are_written_as_opset_21_qdq_that_runs(tmp_path, block: int | None) -> None:
    rng = np.random.default_rng(RNG_SEED)
    model = residual_block(rng)
    x = rng.normal(size=(16, 4, 6, 6)).astype(np.float32)
    qdq = qdq_of(model, x, tmp_path)
    require_opset(qdq, INT4_OPSET)
    grid = WeightGrid(4, per_channel=True, block=block)
    for layer in quantized_layers(qdq, model):
        scale = grid_scales(layer.weight, grid)
        integers = round_to_nearest(layer.weight, scale, grid)
        write_weights(qdq, layer, integers, scale, bits=4, block=block)
        write_bias(qdq, layer, layer.bias)
        np.testing.assert_allclose(
            dequantized_weight(qdq, layer), integers * expand_scale(scale, layer.weight.shape, grid), rtol=1e-6
        )
    onnx.checker.check_model(qdq, full_check=True)
    stored = [i for i in qdq.graph.initializer if i.data_type == TensorProto.INT4]
    assert len(stored) == 2 * 3  # weights and zero points of the two convs and the fc
    out = run(qdq, x)[0]
    reference = run(model, x)[0]
    assert np.corrcoef(out.ravel(), reference.ravel())[0, 1] > 0.9  # coarse, but the same function


def test_power_of_two_activation_scales_keep_each_range(tmp_path) -> None:
    rng = np.random.default_rng(RNG_SEED)
    model = residual_block(rng)
    x = rng.normal(size=(16, 4, 6, 6)).astype(np.float32)
    qdq = qdq_of(model, x, tmp_path)

    def ranges(m: onnx.ModelProto) -> dict[str, tuple[float, float]]:
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        found = {}
        for node in m.graph.node:
            if node.op_type == "QuantizeLinear":
                s, z = float(inits[node.input[1]]), int(inits[node.input[2]])
                info = np.iinfo(inits[node.input[2]].dtype)
                found[node.input[1]] = ((info.min - z) * s, (info.max - z) * s, s)
        return found

    before = ranges(qdq)
    assert power_of_two_activations(qdq) > 0
    after = ranges(qdq)
    for name, (low, high, scale) in after.items():
        assert np.log2(scale) == round(np.log2(scale))
        old_low, old_high, old_scale = before[name]
        assert scale >= old_scale  # never finer: nothing the calibration saw saturates
        # The range still holds the old one, within half a new step at the ends (the zero point is an integer).
        assert low <= old_low + scale / 2 and high >= old_high - scale / 2
    assert run(qdq, x)[0].shape == (16, 3)


def test_strict_integer_check_finds_a_float_add(tmp_path) -> None:
    rng = np.random.default_rng(RNG_SEED)
    model = residual_block(rng)
    x = rng.normal(size=(16, 4, 6, 6)).astype(np.float32)
    qdq = qdq_of(model, x, tmp_path, per_channel=False)
    assert strict_integer_violations(qdq) == []
    add = next(n for n in qdq.graph.node if n.op_type == "Add")
    add.input[1] = "x"  # the skip read straight from the FP32 input
    assert strict_integer_violations(qdq) == ["/layer1/layer1.0/Add: input 1 is FP32"]


# --- options and recipes ------------------------------------------------------------------------------------------


def test_npu_target_recipe_and_overrides() -> None:
    npu = resolve_config(Int8Target.NPU_INT8)
    assert not npu.per_channel and npu.strict_integer and npu.equalize and npu.bias_correction
    assert npu.activation_type == "uint8" and npu.weight_type == "int8" and npu.format is Format.QDQ
    plain = QuantizeOptions(target="npu-int8", equalize=False, bias_correction=False).recipe()
    assert not plain.equalize and not plain.bias_correction and "overridden" in plain.reason
    int4 = QuantizeOptions(weight_bits=4, weight_block=32, adaround=True).recipe()
    assert int4.weight_type == "int4" and int4.weight_bits == 4 and int4.weight_block == 32 and int4.adaround
    assert not resolve_config(Int8Target.NPU_INT8, format=Format.QOPERATOR).bias_correction  # a default, dropped
    # Bias correction with 4-bit weights: on by default after rounding to nearest, only when asked after AdaRound.
    assert QuantizeOptions(weight_bits=4).recipe().bias_correction and not int4.bias_correction
    assert not QuantizeOptions(weight_bits=4, bias_correction=False).recipe().bias_correction


@pytest.mark.parametrize(
    "options, message",
    [
        ({"weight_bits": 3}, "weight bits must be 4 or 8"),
        ({"weight_block": 32}, "--weight-block takes a block of 2 or more input channels, with --weight-bits 4"),
        ({"format": "qoperator", "adaround": True}, "--adaround rewrite the QDQ graph; use --format qdq"),
        ({"weight_bits": 4, "require_int8": True}, "--require-int8 cannot hold with 4-bit weights"),
        ({"adaround_iterations": 0}, "AdaRound iterations must be 1 to 1,000,000, got 0"),
        ({"adaround_seconds": 0}, "AdaRound's time budget must be more than 0 and at most 86400 seconds"),
        ({"adaround_seconds": float("inf")}, "AdaRound's time budget must be more than 0 and at most 86400 seconds"),
        ({"target": "npu-int8", "exclude": ("fc",)}, "npu-int8 runs every Conv/Gemm/Add in integer"),
    ],
)
def test_bad_recovery_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(OptionError, match=message.replace("(", r"\(")):
        QuantizeOptions(**options)


def test_cli_refuses_bad_recovery_options_in_one_line(tmp_path) -> None:
    from click.testing import CliRunner

    from resnet_edge.cli.main import main

    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read: the options are checked first")
    result = CliRunner().invoke(main, ["quantize", str(model), "--weight-bits", "3"])
    assert result.exit_code != 0 and result.output.strip() == "error: weight bits must be 4 or 8, got 3"
    result = CliRunner().invoke(main, ["quantize", str(model), "--format", "qoperator", "--bias-correction"])
    assert result.output.strip() == "error: --bias-correction rewrite the QDQ graph; use --format qdq"
    assert not list(tmp_path.glob("*.int8.onnx*"))


# --- end to end on the trained digits model (slow) -----------------------------------------------------------------


def _scales_are_powers_of_two(model: onnx.ModelProto) -> bool:
    index = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    scales = [index[n.input[1]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    floats = [s for s in scales if s.dtype == np.float32]
    # Bias scales are products of two powers of two, hence powers of two too.
    return bool(floats) and all(np.all(np.log2(s) == np.round(np.log2(s))) for s in floats)


def test_npu_target_on_digits_is_strict_integer_with_each_step_judged(digits_sim, tmp_path) -> None:
    from click.testing import CliRunner

    from resnet_edge.cli.main import main
    from resnet_edge.quantization.quantize import quantize_onnx

    plain = quantize_onnx(
        digits_sim,
        tmp_path / "plain.onnx",
        QuantizeOptions(target="npu-int8", equalize=False, bias_correction=False, measure_speed=False),
    )
    assert plain.recovery == [] and plain.record().to_json()["accuracy_recovery"]["steps"] == []
    npu = tmp_path / "npu.onnx"
    shown = CliRunner().invoke(
        main,
        ["quantize", str(digits_sim), "-o", str(npu), "--target", "npu-int8", "--power-of-two-scales", "--no-speed"],
    )
    assert shown.exit_code == 0, shown.output
    assert "accuracy recovery (judged on the held-out images):" in shown.output
    assert "equalize" in shown.output and "bias_correction" in shown.output
    record = json.loads(Path(f"{npu}.json").read_text())
    steps = record["accuracy_recovery"]["steps"]
    assert [s["step"] for s in steps] == ["equalize", "bias_correction"]
    assert all(s["before"] and s["after"] and s["before"]["images"] == 397 for s in steps)
    assert steps[0]["details"]["pairs"] == 9  # one conv1 -> conv2 pair in each of the nine basic blocks
    assert steps[1]["before"] == steps[0]["after"]  # the steps chain
    # What was quantized is the equalized model: its logits differ from the unequalized one's (a merge once
    # calibrated the user's file instead, and the step's before and after were the same model).
    assert steps[0]["before"]["kl"] != steps[0]["after"]["kl"]
    assert steps[-1]["after"]["top1_agreement"] >= 0.99
    assert record["integer_coverage"]["fraction"] == 1.0 and record["strict_integer"] and record["power_of_two"]
    assert QuantizationRecord.from_json(record).to_json() == record  # the steps' records read back to the same JSON
    model = onnx.load(str(npu))
    assert strict_integer_violations(model) == [] and _scales_are_powers_of_two(model)
    producers = {n.output[0]: n for n in model.graph.node}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weight_scales = [inits[producers[n.input[1]].input[1]] for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(weight_scales) == 22 and all(s.size == 1 for s in weight_scales)  # per-tensor weights

    # analyze shows each block before and after the steps, on the same images.
    args = ["analyze", str(digits_sim), str(npu), "--before", str(plain.output), "--limit", "8"]
    shown = CliRunner().invoke(main, [*args, "-o", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert "gain dB" in shown.output and "before (plain.onnx) -> after (npu.onnx)" in shown.output
    as_json = CliRunner().invoke(main, [*args, "-o", str(tmp_path), "--json"])
    found = json.loads(as_json.output)
    assert [c["block"] for c in found["changes"]][:2] == ["stem", "layer1.0"] and len(found["changes"]) == 11
    assert any(abs(c["gain_db"]) > 0.01 for c in found["changes"] if c["block"].startswith("layer"))


def test_int4_adaround_on_digits_writes_small_opset_21_qdq(digits_sim, tmp_path) -> None:
    from resnet_edge.progress import Progress
    from resnet_edge.quantization.quantize import quantize_onnx

    events: list[Progress] = []
    options = QuantizeOptions(
        weight_bits=4, adaround=True, adaround_iterations=30, measure_speed=False, allow_accuracy_drop=True
    )
    result = quantize_onnx(digits_sim, tmp_path / "w4.onnx", options, on_progress=events.append)
    model = onnx.load(str(result.output))
    assert next(o.version for o in model.opset_import if o.domain == "") == INT4_OPSET
    int4 = [i for i in model.graph.initializer if i.data_type == TensorProto.INT4]
    assert len(int4) == 2 * 22  # the weights and zero points of the 21 convolutions and the fc
    assert result.bytes_after < 0.25 * result.bytes_before  # FP32 weights are 8x the int4 ones, plus scales
    layer_events = [e for e in events if e.step == "AdaRound"]
    assert [e.done for e in layer_events] == list(range(1, 23)) and layer_events[-1].unit == "layer"
    adaround = result.record().to_json()["accuracy_recovery"]["steps"][0]
    assert adaround["step"] == "adaround" and len(adaround["details"]["layers"]) == 22
    for layer in adaround["details"]["layers"]:  # the kept rounding is never worse than nearest on its loss
        kept = layer["adaround_loss"] if layer["kept"] == "adaround" else layer["nearest_loss"]
        assert kept <= layer["nearest_loss"]
    assert result.coverage.integer_macs == 0  # said plainly: the CPU EP runs int4 convolutions in FP32


@pytest.mark.slow
def test_accuracy_recovery_benchmark_short_mode(tmp_path) -> None:
    import runpy

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy_recovery.py"
    benchmark = runpy.run_path(str(path), run_name="accuracy_recovery")  # a name other than __main__: no run
    found = benchmark["main"](["--short", "--json", str(tmp_path / "rows.json")])
    npu, w4 = found["accuracy"]
    assert npu["drop_points"] <= 0.3 and [s["step"] for s in npu["steps"]] == ["equalize", "bias_correction"]
    assert w4["steps"][0]["step"] == "adaround" and w4["bytes"] < 0.25 * w4["fp32_bytes"]
    assert json.loads((tmp_path / "rows.json").read_text())["accuracy"][0]["config"] == npu["config"]
    (qat,) = found["qat"]  # train --qat, W4A8, one epoch: the exported file holds the integers QAT trained
    assert qat["grid_mismatches"] == 0 and qat["bytes"] < 0.25 * w4["fp32_bytes"] and qat["top1"] > 0.9
