"""Export: every registered arch, parity at two batch sizes, the metadata later stages read, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from resnet_edge.conversion.export import export_onnx
from resnet_edge.conversion.options import Exporter, ExportOptions
from resnet_edge.conversion.simplify import simplify_onnx
from resnet_edge.errors import CheckpointError, InputFileError, OptionError
from resnet_edge.models.registry import get_arch, list_models
from resnet_edge.onnx.metadata import read_metadata, static_input_shape
from resnet_edge.onnx.parity import FP32_MAX_ABS_ERROR
from resnet_edge.onnx.runtime import open_session


@pytest.mark.slow
@pytest.mark.parametrize("arch", list_models())
def test_every_arch_exports_and_simplifies(tmp_path: Path, arch: str) -> None:
    size = 64 if get_arch(arch).stem.value == "imagenet" else 32
    result = export_onnx(None, tmp_path / "m.onnx", ExportOptions(arch=arch, input_size=size))
    assert sorted(result.parity) == [1, 8]  # batch 1 and a second batch size, both compared with PyTorch
    assert all(p.top1_agreement == 1.0 for p in result.parity.values())
    assert result.batch_norm_nodes == 0 and "Identity" not in result.op_counts  # issue 22
    simplified = simplify_onnx(tmp_path / "m.onnx", tmp_path / "m.sim.onnx")
    assert simplified.batch_norm_remaining == []
    assert static_input_shape(onnx.load(str(tmp_path / "m.sim.onnx")))[0] is None  # still a dynamic batch


def test_digits_export_matches_pytorch_and_describes_itself(digits_onnx: Path) -> None:
    model = onnx.load(str(digits_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert not list(digits_onnx.parent.glob("*.data"))  # self-contained: no external-data sidecar
    meta = read_metadata(model)
    assert (meta.arch, meta.num_classes, meta.in_chans, meta.dataset) == ("resnet20", 10, 3, "sklearn-digits")
    assert meta.labels == [str(i) for i in range(10)]
    assert meta.preprocessing.crop == 32 and meta.preprocessing.layout == "NCHW"
    assert len(meta.checkpoint_sha256) == 64 and meta.batch == "dynamic"
    assert meta.provenance["exporter"] == "torchscript" and meta.provenance["opset"] == "17"
    assert not meta.random_weights  # a trained checkpoint
    assert model.opset_import[0].version == 17


def test_dynamic_batch_runs_at_any_size(tiny_onnx: Path) -> None:
    session = open_session(tiny_onnx)
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    together = session.run(x)
    one_by_one = np.concatenate([session.run(x[i : i + 1]) for i in range(5)])
    assert together.shape == (5, 10)
    np.testing.assert_allclose(together, one_by_one, atol=FP32_MAX_ABS_ERROR)


@pytest.mark.slow
def test_fixed_batch_and_opset(tmp_path: Path) -> None:
    result = export_onnx(None, tmp_path / "b4.onnx", ExportOptions(arch="resnet20", batch=4, opset=13))
    assert result.input_shape == (4, 3, 32, 32) and list(result.parity) == [4]
    model = onnx.load(str(tmp_path / "b4.onnx"))
    assert static_input_shape(model) == (4, 3, 32, 32) and result.opset == 13 == model.opset_import[0].version


@pytest.mark.slow
def test_imagenet_arch_end_to_end_at_224(tmp_path: Path) -> None:
    result = export_onnx(None, tmp_path / "r18.onnx", ExportOptions(arch="resnet18"))
    assert result.input_shape == ("batch", 3, 224, 224) and result.num_classes == 1000
    assert max(p.max_abs_error for p in result.parity.values()) < 1e-3
    meta = read_metadata(onnx.load(str(tmp_path / "r18.onnx")))
    assert (meta.preprocessing.resize, meta.preprocessing.crop) == (256, 224)
    simplify_onnx(tmp_path / "r18.onnx", tmp_path / "r18.sim.onnx")


@pytest.mark.slow
def test_dynamo_exporter_is_refused_below_its_opset_or_without_onnxscript(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="dynamo exporter writes opsets 18 to 23, not 17"):
        export_onnx(None, tmp_path / "d.onnx", ExportOptions(arch="resnet20", exporter=Exporter.DYNAMO, opset=17))
    pytest.importorskip("onnxscript")
    # No opset named: the exporter's own default, not the TorchScript exporter's 17.
    result = export_onnx(None, tmp_path / "d.onnx", ExportOptions(arch="resnet20", exporter=Exporter.DYNAMO))
    assert result.opset == 18 and result.exporter == "dynamo"
    # Nodes are renamed by module scope, as the TorchScript exporter names them, so blocks can be found.
    names = {n.name for n in onnx.load(str(tmp_path / "d.onnx")).graph.node}
    assert {"/layer1/layer1.0/Add", "/layer2/layer2.0/downsample/downsample.1/Conv", "/fc/Gemm"} <= names


@pytest.mark.parametrize(
    ("source", "options", "error", "match"),
    [
        (None, {"arch": "resnet20", "opset": 21}, OptionError, "writes opsets 11 to 20, not 21"),
        (None, {"arch": "resnet20", "input_size": 4}, OptionError, "at least 8 pixels"),
        (None, {"arch": "resnet20", "batch": 0}, OptionError, "batch"),
        (None, {}, OptionError, "no arch given"),
        ("builtin:digits-resnet20", {"arch": "resnet32"}, CheckpointError, "does not fit resnet32"),
        (None, {"arch": "resnet20", "labels": ("a", "b")}, OptionError, "2 labels given for 10 classes"),
    ],
)
def test_bad_options_leave_no_file(tmp_path: Path, source: str | None, options: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        export_onnx(source, tmp_path / "out.onnx", ExportOptions(**options))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="output folder does not exist"):
        export_onnx(None, tmp_path / "missing" / "m.onnx", ExportOptions(arch="resnet20"))


@pytest.mark.slow
def test_labels_and_checkpoint_metadata_travel(tmp_path: Path) -> None:
    labels = tuple(f"class {i}" for i in range(10))
    export_onnx(None, tmp_path / "l.onnx", ExportOptions(arch="resnet20", labels=labels))
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "l.onnx")).metadata_props}
    assert json.loads(props["labels"]) == list(labels)
    assert json.loads(props["provenance"])["checkpoint"] == "random init"
    assert read_metadata(onnx.load(str(tmp_path / "l.onnx"))).random_weights


@pytest.mark.slow
def test_a_checkpoint_that_says_its_weights_are_random_exports_as_random(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from resnet_edge.models.resnet import create_model
    from resnet_edge.onnx.metadata import RANDOM_INIT

    save_file(create_model("resnet20").state_dict(), tmp_path / "fresh.safetensors", metadata={"weights": RANDOM_INIT})
    export_onnx(tmp_path / "fresh.safetensors", tmp_path / "f.onnx", ExportOptions(arch="resnet20"))
    assert read_metadata(onnx.load(str(tmp_path / "f.onnx"))).random_weights


@pytest.mark.slow
def test_input_size_keeps_a_checkpoints_own_normalisation(tmp_path: Path) -> None:
    export_onnx("builtin:digits-resnet20", tmp_path / "d48.onnx", ExportOptions(input_size=48))
    spec = read_metadata(onnx.load(str(tmp_path / "d48.onnx"))).preprocessing
    assert (spec.resize, spec.crop) == (48, 48) and spec.mean == (0.3055,) * 3  # the digits' statistics, rescaled


@pytest.mark.slow
def test_keep_bn_keeps_every_batchnorm_and_still_matches_pytorch(tmp_path: Path) -> None:
    """--keep-bn writes the graph as PyTorch has it (BatchNormalization nodes, eval mode); the default folds them."""
    from resnet_edge.errors import ResnetEdgeWarning

    with pytest.warns(ResnetEdgeWarning, match="resnet20 has random weights .* measure noise"):
        kept = export_onnx(None, tmp_path / "kept.onnx", ExportOptions(arch="resnet20", fold_bn=False))
    assert kept.batch_norm_nodes == 21  # stem, 18 in the blocks, 2 in the downsampling shortcuts
    assert all(p.max_abs_error <= FP32_MAX_ABS_ERROR for p in kept.parity.values())
    folded = export_onnx("builtin:digits-resnet20", tmp_path / "folded.onnx")
    assert folded.batch_norm_nodes == 0


@pytest.mark.slow
def test_export_cli_keep_bn(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from resnet_edge.cli.main import main

    result = CliRunner().invoke(
        main, ["export", "--weights", "builtin:digits-resnet20", "--keep-bn", "-o", str(tmp_path / "k.onnx")]
    )
    assert result.exit_code == 0, result.output
    assert "BatchNormalization nodes 21 (kept)" in result.output
    help_text = " ".join(CliRunner().invoke(main, ["export", "--help"]).output.split())
    assert "--fold-bn / --keep-bn" in help_text and "[default: fold-" in help_text


def test_default_fold_bn_leaves_no_identity_nodes(tiny_onnx: Path) -> None:
    # The exporter's constant folding shares equal initializers through Identity nodes (18 in a resnet20, 47 in a
    # ResNet-50); a file "ready to deploy as it is" carries none (issue 22), and still matches PyTorch (export checks).
    ops = [node.op_type for node in onnx.load(str(tiny_onnx)).graph.node]
    assert "Identity" not in ops and ops.count("Conv") == 21 and "BatchNormalization" not in ops


def test_identity_removal_rewires_readers_and_keeps_a_graph_output() -> None:
    from onnx import TensorProto, helper

    from resnet_edge.conversion.export import remove_identity_nodes

    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["w"], ["w1"]),
            helper.make_node("Identity", ["w1"], ["w2"]),  # a chain: its reader reads the first input
            helper.make_node("Add", ["x", "w2"], ["y"]),
            helper.make_node("Identity", ["y"], ["out"]),  # writes the graph output: stays
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
        [helper.make_tensor("w", TensorProto.FLOAT, [1], [2.0])],
    )
    model = helper.make_model(graph)
    assert remove_identity_nodes(model) == 2
    assert [(n.op_type, list(n.input)) for n in model.graph.node] == [("Add", ["x", "w"]), ("Identity", ["y"])]
    onnx.checker.check_model(model)
