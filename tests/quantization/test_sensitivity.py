"""Error attribution by residual block: nodes to blocks, the single-block models, residual scales, ``analyze``."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from resnet_edge.cli.analyze import analyze
from resnet_edge.conversion.export import resolve_export, run_exporter
from resnet_edge.conversion.options import ExportOptions
from resnet_edge.errors import InputFileError
from resnet_edge.models.registry import Stem, get_arch, list_models
from resnet_edge.models.resnet import create_model
from resnet_edge.onnx.graph import module_path
from resnet_edge.progress import Progress
from resnet_edge.quantization.calibrate import resolve_exclusions
from resnet_edge.quantization.configs import Format
from resnet_edge.quantization.options import QuantizeOptions
from resnet_edge.quantization.quantize import quantize_onnx
from resnet_edge.quantization.sensitivity import (
    HEAD,
    RESIDUAL_SCALE_RATIO,
    STEM,
    SensitivityOptions,
    analyze_quantization,
    exclusion_items,
    isolate_block,
    map_blocks,
    residual_scales,
)

FAST = SensitivityOptions(limit=16)


def quantize_quietly(model: Path, output: Path, options: QuantizeOptions) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small-calibration-set warning
        # These tests need a damaged INT8 model to analyse, not one that passes quantize's own bar.
        quantize_onnx(model, output, replace(options, allow_accuracy_drop=True))
    return output


def expected_blocks(arch: str, variant: str = "residual") -> list[str]:
    return [STEM, *(name for name, _ in create_model(arch, variant=variant).blocks()), HEAD]


@pytest.fixture(scope="module")
def exported() -> dict[tuple[str, str], onnx.ModelProto]:
    """Every registered arch (and two variants of resnet20), traced in memory once.

    The graph comes from the exporter export_onnx runs; its PyTorch parity check and file writing are skipped to keep
    this at ~25 s for all ten archs instead of ~70 s (they are tested in test_export.py).
    """
    models = {}
    wanted = [(arch, "residual") for arch in list_models()] + [("resnet20", "preact"), ("resnet20", "plain")]
    for arch, variant in wanted:
        size = 64 if get_arch(arch).stem is Stem.IMAGENET else 32
        options = ExportOptions(arch=arch, variant=variant, input_size=size, num_classes=10)
        loaded, metadata = resolve_export(None, options)
        models[(arch, variant)] = run_exporter(loaded.model, metadata.preprocessing, options)
    return models


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("/layer1/layer1.0/conv1/Conv", "layer1.0.conv1"),
        ("/layer2/layer2.0/downsample/downsample.0/Conv", "layer2.0.downsample.0"),
        ("/layer3/layer3.35/conv3/Conv_quant", "layer3.35.conv3"),  # QOperator
        ("/layer1/layer1.0/relu_1/Relu_output_0_QuantizeLinear", "layer1.0.relu_1"),  # QDQ, named after its tensor
        ("/fc/Gemm", "fc"),
        ("/Flatten", ""),
        ("onnx::Conv_203_DequantizeLinear", None),
    ],
)
def test_module_path_is_the_full_dotted_path(name: str, path: str | None) -> None:
    assert module_path(name) == path


@pytest.mark.parametrize(
    ("arch", "variant"),
    [(arch, "residual") for arch in list_models()] + [("resnet20", "preact"), ("resnet20", "plain")],
)
@pytest.mark.slow
def test_every_node_maps_to_its_block(exported: dict, arch: str, variant: str) -> None:
    model = exported[(arch, variant)]
    block_map = map_blocks(model)
    assert block_map.blocks == expected_blocks(arch, variant)
    nodes = model.graph.node
    consumers = {name: b for n, b in zip(nodes, block_map.node_blocks, strict=True) for name in n.input}
    for node, block in zip(nodes, block_map.node_blocks, strict=True):
        path = module_path(node.name)
        if path is None:  # the exporter's unscoped Identity nodes on shared weights go where they are read
            assert node.op_type == "Identity" and block == consumers[node.output[0]], node.name
        elif block in (STEM, HEAD):
            assert not path.startswith("layer"), node.name
        else:
            assert path == block or path.startswith(block + "."), node.name
    stem = {module_path(nodes[i].name) for i in block_map.node_indices(STEM)}
    head = {module_path(nodes[i].name) for i in block_map.node_indices(HEAD)}
    assert "conv1" in stem and "fc" in head and "avgpool" in head
    if variant == "preact":
        assert "relu" in head and "relu" not in stem  # the top-level ReLU runs after the last block
    elif get_arch(arch).stem is Stem.IMAGENET:
        assert stem == {"conv1", "relu", "maxpool"}
    # --exclude with a block's items keeps exactly that block's nodes, no more (quantize resolves them)
    for block in block_map.blocks:
        chosen = set(resolve_exclusions(model, exclusion_items(model, block_map, block)))
        scoped = {nodes[i].name for i in block_map.node_indices(block) if module_path(nodes[i].name) is not None}
        assert chosen == scoped, block


@pytest.fixture(scope="module")
def digits_qoperator(session_dir: Path, digits_sim: Path) -> Path:
    return quantize_quietly(
        digits_sim, session_dir / "digits.qop.onnx", QuantizeOptions(format=Format.QOPERATOR, measure_speed=False)
    )


@pytest.fixture(scope="module")
def resnet18_models(session_dir: Path) -> tuple[Path, Path]:
    """A random resnet18 at 64x64 and its QOperator INT8 (MaxPool on uint8 in the stem), calibrated on 8 photos."""
    from resnet_edge.conversion.export import export_onnx

    fp32 = session_dir / "r18.onnx"
    export_onnx(None, fp32, ExportOptions(arch="resnet18", input_size=64, num_classes=10))
    int8 = quantize_quietly(
        fp32, session_dir / "r18.qop.onnx", QuantizeOptions(format=Format.QOPERATOR, limit=8, measure_speed=False)
    )
    return fp32, int8


def test_mapping_survives_simplify_preprocessing_and_quantization(
    digits_onnx: Path, digits_sim: Path, digits_int8: Path, digits_qoperator: Path, tmp_path: Path
) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(onnx.load(str(digits_sim)), str(tmp_path / "prepped.onnx"))
    reference = map_blocks(onnx.load(str(digits_onnx)))
    assert reference.blocks == expected_blocks("resnet20")
    for path in (digits_sim, tmp_path / "prepped.onnx", digits_int8, digits_qoperator):
        model = onnx.load(str(path))
        block_map = map_blocks(model)
        assert block_map.blocks == reference.blocks, path.name
        # Each convolution sits in the same block before and after (QOperator adds "_quant" to its name).
        convs = {
            n.name.removesuffix("_quant"): b
            for n, b in zip(model.graph.node, block_map.node_blocks, strict=True)
            if n.op_type in ("Conv", "QLinearConv", "Gemm", "QGemm")
        }
        assert convs == {
            n.name: b
            for n, b in zip(onnx.load(str(digits_onnx)).graph.node, reference.node_blocks, strict=True)
            if n.op_type in ("Conv", "Gemm")
        }
    int8 = onnx.load(str(digits_int8))
    names = {n.name: b for n, b in zip(int8.graph.node, map_blocks(int8).node_blocks, strict=True)}
    # The quantizer's own nodes: weights go where they are used, the logits' Q/DQ follows fc, the input's the stem.
    assert names["input_QuantizeLinear"] == STEM
    assert names["logits_DequantizeLinear"] == HEAD
    assert names["/layer2/layer2.0/relu_1/Relu_output_0_DequantizeLinear"] == "layer2.0"
    weight = next(n for n in int8.graph.node if n.name == "/layer3/layer3.2/conv2/Conv").input[1]
    assert names[next(n.name for n in int8.graph.node if weight in n.output)] == "layer3.2"


def test_analysis_of_the_digits_model(digits_sim: Path, digits_int8: Path, digits_qoperator: Path) -> None:
    fp32 = onnx.load(str(digits_sim))
    events: list[Progress] = []
    qdq = analyze_quantization(fp32, onnx.load(str(digits_int8)), FAST, on_progress=events.append)
    # One event before each model run: both whole models, then one spliced model per quantized block.
    assert [(e.done, e.total) for e in events] == [(k, 12) for k in range(12)]
    assert events[0].step == "FP32 and INT8 models, every block output" and events[1].step == "only stem quantized"
    assert qdq.images == 16 and qdq.data_source == "builtin:digits-test" and qdq.format == "qdq"
    assert [b.block for b in qdq.blocks] == expected_blocks("resnet20")
    assert sorted(qdq.ranking) == sorted(expected_blocks("resnet20")) and qdq.isolated_models == 11
    stem, head = qdq.block(STEM), qdq.block(HEAD)
    # Nothing runs before the stem, so quantizing only it is the INT8 model up to there, exactly.
    assert stem.isolated == stem.cumulative
    # The head's output is the logits.
    assert head.isolated == head.isolated_logits
    for block in qdq.blocks:
        assert 20 < block.cumulative.sqnr_db < 60 and 20 < block.isolated.sqnr_db < 70
        assert block.cumulative.cosine > 0.999 and block.isolated_top1_agreement == 1.0
        assert block.quantized_compute_nodes == block.compute_nodes > 0
    # Errors accumulate: the last block of the INT8 model is worse than the stem, and worse than its own isolated error.
    assert qdq.block("layer3.2").cumulative.sqnr_db < stem.cumulative.sqnr_db - 5
    assert qdq.block("layer3.2").cumulative.sqnr_db < qdq.block("layer3.2").isolated.sqnr_db
    sensitivities = [qdq.block(b).sensitivity_db for b in qdq.ranking]
    assert sensitivities == sorted(sensitivities)
    # QOperator executes the same arithmetic as onnxruntime's QDQ fusion: the same numbers, from other node names.
    qop = analyze_quantization(fp32, onnx.load(str(digits_qoperator)), FAST)
    assert qop.format == "qoperator" and qop.ranking == qdq.ranking
    for a, b in zip(qdq.blocks, qop.blocks, strict=True):
        assert a.cumulative.sqnr_db == pytest.approx(b.cumulative.sqnr_db, abs=0.5)
        assert a.isolated_logits.sqnr_db == pytest.approx(b.isolated_logits.sqnr_db, abs=0.5)
        assert a.residual == b.residual or a.residual.ratio == pytest.approx(b.residual.ratio)


@pytest.mark.slow
def test_isolated_model_is_fp32_outside_the_block(resnet18_models: tuple[Path, Path]) -> None:
    fp32, int8 = (onnx.load(str(p)) for p in resnet18_models)
    from resnet_edge.onnx.runtime import open_session

    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    reference = open_session(fp32).run(x)
    model, (ref_name, cand_name, logits_name) = isolate_block(fp32, int8, "layer3.1")
    session = open_session(model, classifier=False)
    ref, cand, logits = session.session.run([ref_name, cand_name, logits_name], {session.input_name: x})
    relative_l2 = np.linalg.norm(ref - cand) / np.linalg.norm(ref)
    assert 0 < relative_l2 < 0.2  # quantized, and close (random inputs: judge the whole tensor, not its worst value)
    assert not np.allclose(logits, reference)
    # The spliced model's FP32 path is untouched: its reference block output is FP32's.
    fp32_map = map_blocks(fp32)
    model_ref, (stem_ref, _, _) = isolate_block(fp32, int8, STEM, fp32_map=fp32_map)
    assert stem_ref in {o.name for o in model_ref.graph.output}


@pytest.mark.slow
def test_imagenet_stem_qoperator_and_excluded_block(resnet18_models: tuple[Path, Path], tmp_path: Path) -> None:
    fp32_path, int8_path = resnet18_models
    fp32 = onnx.load(str(fp32_path))
    result = analyze_quantization(fp32, onnx.load(str(int8_path)), SensitivityOptions(limit=8))
    assert [b.block for b in result.blocks] == expected_blocks("resnet18")
    assert result.block(STEM).isolated == result.block(STEM).cumulative
    assert result.images == 8 and result.calibration_images_dropped > 0  # calibration photos are never analysed
    # A block kept in FP32 has nothing to isolate and is not ranked.
    partial = quantize_quietly(
        fp32_path, tmp_path / "partial.onnx", QuantizeOptions(exclude=("layer2.1",), limit=8, measure_speed=False)
    )
    mixed = analyze_quantization(fp32, onnx.load(str(partial)), SensitivityOptions(limit=4))
    kept = mixed.block("layer2.1")
    assert kept.quantized_compute_nodes == 0 and kept.compute_nodes == 2 and kept.isolated is None
    assert "layer2.1" not in mixed.ranking and len(mixed.ranking) == len(expected_blocks("resnet18")) - 1


def test_residual_scale_mismatch_is_flagged(digits_sim: Path, tmp_path: Path) -> None:
    """Shrink layer1.0's branch 200x: its addition then sums a tiny branch and a full-size shortcut."""
    model = onnx.load(str(digits_sim))
    conv = next(n for n in model.graph.node if n.name == "/layer1/layer1.0/conv2/Conv")
    for init in model.graph.initializer:
        if init.name in conv.input[1:]:
            init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) / 200, init.name))
    shrunk = tmp_path / "shrunk.onnx"
    onnx.save(model, str(shrunk))
    int8 = onnx.load(
        str(quantize_quietly(shrunk, tmp_path / "shrunk.int8.onnx", QuantizeOptions(limit=16, measure_speed=False)))
    )
    block_map = map_blocks(int8)
    scales = residual_scales(int8, block_map, "layer1.0")
    assert scales.node == "/layer1/layer1.0/Add" and scales.flagged
    assert scales.branch_scale * RESIDUAL_SCALE_RATIO <= scales.skip_scale  # the branch is the tiny one
    assert not residual_scales(int8, block_map, "layer1.1").flagged
    assert residual_scales(int8, block_map, STEM) is None  # no addition
    result = analyze_quantization(onnx.load(str(shrunk)), int8, SensitivityOptions(limit=8))
    assert result.flagged_additions == ["layer1.0"]
    # the downsample path counts as the shortcut
    downsample = residual_scales(int8, block_map, "layer2.0")
    assert downsample is not None and not downsample.flagged


@pytest.mark.parametrize("exclude", [(), ("layer1.0",)])
def test_constants_shared_by_two_blocks(digits_sim: Path, tmp_path: Path, exclude: tuple[str, ...]) -> None:
    """onnxsim merges identical initializers (the all-zero biases of a fresh network's folded BatchNorms), so one bias
    and its DequantizeLinear can serve blocks that are quantized differently."""
    model = onnx.load(str(digits_sim))
    convs = {n.name: n for n in model.graph.node}
    shared = convs["/layer1/layer1.0/conv2/Conv"].input[2]
    convs["/layer1/layer1.1/conv1/Conv"].input[2] = shared
    path = tmp_path / "shared.onnx"
    onnx.save(model, str(path))
    int8 = onnx.load(
        str(
            quantize_quietly(
                path, tmp_path / "shared.int8.onnx", QuantizeOptions(exclude=exclude, limit=16, measure_speed=False)
            )
        )
    )
    result = analyze_quantization(model, int8, SensitivityOptions(limit=4))
    assert ("layer1.0" in result.ranking) == (not exclude) and "layer1.1" in result.ranking
    assert result.block("layer1.1").isolated.sqnr_db > 20


def test_models_in_the_wrong_order_or_without_scopes(digits_sim: Path, digits_int8: Path, tmp_path: Path) -> None:
    fp32, int8 = onnx.load(str(digits_sim)), onnx.load(str(digits_int8))
    with pytest.raises(InputFileError, match="first model is quantized"):
        analyze_quantization(int8, fp32)
    with pytest.raises(InputFileError, match="second model is not quantized"):
        analyze_quantization(fp32, fp32)
    anonymous = onnx.ModelProto()
    anonymous.CopyFrom(fp32)
    for i, node in enumerate(anonymous.graph.node):
        node.name = f"node_{i}"
    with pytest.raises(InputFileError, match="no node is named after a residual block"):
        map_blocks(anonymous)


def test_analyze_command(digits_sim: Path, digits_int8: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(analyze, [str(digits_sim), str(digits_int8), "--limit", "8", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("rank  block"))
    assert "alone: logit dB" in lines[header] and "add scale ratio" in lines[header]
    rows = [line.split() for line in lines[header + 2 : header + 2 + 11]]
    assert [int(r[0]) for r in rows] == list(range(1, 12))  # ranked, most sensitive first
    assert sorted(r[1] for r in rows) == sorted(expected_blocks("resnet20"))
    assert "most sensitive:" in result.output and "--exclude" in result.output
    chart = tmp_path / "digits.int8.analysis.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.int8.analysis.json", "digits.int8.analysis.png"]
    as_json = runner.invoke(analyze, [str(digits_sim), str(digits_int8), "--limit", "8", "-o", str(tmp_path), "--json"])
    assert as_json.exit_code == 0
    data = json.loads(as_json.output)
    assert data["images"] == 8 and len(data["blocks"]) == 11 and data["ranking"][0] == rows[0][1]
    assert data["blocks"][0]["block"] == "stem" and "sensitivity_db" in data["blocks"][0]
    assert data["chart"] == str(chart)
    from resnet_edge.cli.main import main

    a_file = tmp_path / "digits.int8.analysis.json"
    clash = runner.invoke(main, ["analyze", str(digits_sim), str(digits_int8), "-o", str(a_file)])
    assert clash.exit_code == 1 and clash.output.strip() == f"error: output folder is a file: {a_file}"


def test_analyze_runs_on_the_named_provider_and_says_where(digits_sim: Path, digits_int8: Path, tmp_path: Path) -> None:
    from resnet_edge.cli.main import main

    runner = CliRunner()
    args = ["analyze", str(digits_sim), str(digits_int8), "--limit", "8", "-o", str(tmp_path)]
    result = runner.invoke(main, [*args, "--providers", "cpu"])
    assert result.exit_code == 0, result.output
    placement = [line for line in result.output.splitlines() if line.startswith("placement ")]
    # Labelled: every block output is exposed, so onnxruntime fuses less than in validate's session (issue 22).
    assert [line.split(":")[0] for line in placement] == [
        f"placement (block outputs exposed, fewer fusions) {digits_sim.name} on cpu",
        f"placement (block outputs exposed, fewer fusions) {digits_int8.name} on cpu",
    ]
    assert all(" of " in line and "nodes" in line for line in placement)
    assert "nodes as onnxruntime ran them (" in placement[1] and " in the file)" in placement[1]
    data = json.loads(runner.invoke(main, [*args, "--providers", "cpu", "--json"]).output)
    assert data["provider"] == "cpu" and data["ran_on"] == "cpu"
    int8 = data["placement"]["int8"]
    assert int8["requested"] == "cpu" and int8["compute_elsewhere"] == {}
    assert [s["provider"] for s in int8["shares"]] == ["cpu"] and int8["shares"][0]["nodes"] == int8["total"] > 0
    # A provider this machine lacks: one error line with --strict-ep, nothing written.
    missing = runner.invoke(main, [*args, "--providers", "tensorrt", "--strict-ep", "--json"])
    assert missing.exit_code != 0
    assert missing.output.count("\n") == 1 and missing.output.startswith("error: ")
    assert "TensorrtExecutionProvider" in missing.output
    two = runner.invoke(main, [*args, "--providers", "cpu,tensorrt"])
    assert two.exit_code != 0 and two.output.strip() == "error: analyze runs on one provider, got 2: cpu,tensorrt"
