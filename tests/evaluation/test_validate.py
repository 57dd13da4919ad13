"""Accuracy parity on the trained model, providers audited, thresholds as an exit code, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from resnet_edge.errors import CheckpointError, InputFileError, OptionError, ProviderError, ResnetEdgeWarning
from resnet_edge.evaluation.options import ValidateOptions
from resnet_edge.evaluation.validate import Reference, validate_models
from resnet_edge.models.resnet import create_model
from resnet_edge.onnx.metadata import write_props
from resnet_edge.onnx.plugins import available_providers
from resnet_edge.onnx.providers import Provider, parse_providers
from resnet_edge.onnx.runtime import open_session

CUDA_MISSING = "CUDAExecutionProvider" not in available_providers()


@pytest.fixture(scope="module")
def digits_validation(digits_onnx: Path, digits_sim: Path, digits_int8: Path):
    return validate_models([digits_onnx, digits_sim, digits_int8])


def test_fp32_onnx_matches_pytorch_on_every_held_out_image(digits_validation) -> None:
    result = digits_validation
    assert result.passed and result.labelled and result.images == 397 and result.data == "builtin:digits-test"
    assert "builtin:digits-resnet20" in result.reference
    for row in result.rows[:2]:  # model.onnx and model.sim.onnx
        assert not row.quantized and row.ran_on == "cpu"
        assert row.parity.top1_agreement == 1.0 and row.parity.max_abs_error < 1e-4
        assert row.parity.top5_overlap == 1.0 and row.parity.kl_divergence < 1e-9
        assert row.accuracy == row.reference_accuracy and row.accuracy.top1 > 0.98


def test_int8_keeps_agreement_and_accuracy(digits_validation) -> None:
    row = digits_validation.rows[2]
    assert row.quantized and row.passed
    assert row.parity.top1_agreement >= 0.99 and row.top1_drop_points <= 1.0


def test_thresholds_fail_the_result(digits_onnx: Path, tiny_onnx: Path) -> None:
    # Judged against an untrained network, the trained model disagrees: the result fails with the reasons.
    result = validate_models([digits_onnx], Reference(onnx=tiny_onnx))
    failures = " | ".join(result.rows[0].failures)
    assert not result.passed and "top-1 agreement" in failures and "max abs logit error" in failures
    with pytest.raises(OptionError, match="fraction from 0 to 1"):
        validate_models([digits_onnx], options=ValidateOptions(min_agreement=99))


def test_onnx_reference_and_unlabelled_folder(digits_onnx: Path, digits_sim: Path, tmp_path: Path) -> None:
    from PIL import Image

    for i in range(3):
        Image.new("L", (8, 8), 40 * i).save(tmp_path / f"{i}.png")
    result = validate_models([digits_sim], Reference(onnx=digits_onnx), ValidateOptions(data=str(tmp_path)))
    assert result.passed and not result.labelled and result.images == 3
    assert result.rows[0].accuracy is None and result.rows[0].parity.top1_agreement == 1.0


@pytest.mark.skipif(not CUDA_MISSING, reason="this machine has the CUDA provider")
def test_cuda_fallback_is_visible_and_strict_is_an_error(digits_onnx: Path) -> None:
    with pytest.warns(ResnetEdgeWarning, match="requested cuda but CUDAExecutionProvider is not available"):
        result = validate_models([digits_onnx], options=ValidateOptions(providers=(Provider.CUDA,)))
    assert result.rows[0].provider == "cuda" and result.rows[0].ran_on == "cpu" and result.rows[0].fell_back
    with pytest.raises(ProviderError, match="requested cuda: CUDAExecutionProvider is not available"):
        validate_models([digits_onnx], options=ValidateOptions(providers=(Provider.CUDA,), strict_ep=True))


@pytest.mark.skipif(not CUDA_MISSING, reason="this machine has the CUDA provider")
def test_cpu_and_cuda_without_a_gpu_run_once_and_nothing_reads_as_a_cuda_result(
    digits_sim: Path, digits_int8: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from resnet_edge.cli.main import main
    from resnet_edge.onnx.runtime import Session

    ran: list[int] = []  # the sessions that ran images: the cuda fallback must not be a second cpu run (issue 22)
    logits = Session.logits
    monkeypatch.setattr(Session, "logits", lambda self, images: ran.append(id(self)) or logits(self, images))
    args = ["validate", str(digits_sim), str(digits_int8), "--providers", "cpu,cuda"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output  # no --strict-ep: a fallback is a warning
    assert len(set(ran)) == 2  # one session per model, not two
    lines = result.output.splitlines()
    cuda_rows = [line for line in lines if " cuda " in line and line.startswith(("digits.sim", "digits.int8"))]
    assert len(cuda_rows) == 2 and all(line.endswith("fell back to cpu") for line in cuda_rows)
    assert not any(line.endswith("pass") for line in cuda_rows)
    assert "requested cuda: not available here; its rows ran on cpu and are not cuda results" in result.output
    assert [line for line in lines if line.startswith("int8 coverage")] == [
        next(line for line in lines if line.startswith("int8 coverage digits.int8.onnx on cpu:"))
    ]  # one line, naming the provider that ran
    assert not any(" on cuda:" in line for line in lines)


@pytest.mark.cuda
@pytest.mark.skipif(CUDA_MISSING, reason="needs onnxruntime-gpu and an NVIDIA GPU")
def test_cuda_provider_really_runs(digits_onnx: Path, digits_int8: Path) -> None:
    result = validate_models(
        [digits_onnx, digits_int8], options=ValidateOptions(providers=(Provider.CPU, Provider.CUDA), strict_ep=True)
    )
    cuda_rows = [r for r in result.rows if r.provider == "cuda"]
    assert all(r.ran_on == "cuda" and r.providers_used[0] == "CUDAExecutionProvider" for r in cuda_rows)
    assert result.passed


def test_unknown_provider() -> None:
    with pytest.raises(OptionError, match="unknown execution provider 'tpu'"):
        parse_providers("cpu,tpu")


def test_reference_for_another_arch(digits_onnx: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "r32.pt"
    torch.save(create_model("resnet32").state_dict(), ckpt)
    with pytest.raises(CheckpointError, match="does not fit resnet20"):
        validate_models([digits_onnx], Reference(checkpoint=str(ckpt), arch="resnet20"))


def test_data_that_does_not_fit(digits_onnx: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "gray.npy", np.zeros((4, 1, 32, 32), np.float32))
    with pytest.raises(InputFileError, match=r"\(N, 3, 32, 32\)"):
        validate_models([digits_onnx], options=ValidateOptions(data=str(tmp_path / "gray.npy")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputFileError, match="no images"):
        validate_models([digits_onnx], options=ValidateOptions(data=str(empty)))


def test_no_reference_to_be_found(tiny_onnx: Path) -> None:
    with pytest.raises(OptionError, match="no --reference given"):
        validate_models([tiny_onnx])


def test_nan_outputs_are_reported_never_agreement(digits_onnx: Path, tmp_path: Path) -> None:
    """A model whose logits are NaN: every row counts as disagreeing and the result fails."""
    model = onnx.load(str(digits_onnx))
    logits = model.graph.output[0].name
    model.graph.node[-1].output[0] = "raw_logits"
    nan = helper.make_tensor("nan", TensorProto.FLOAT, [1], [float("nan")])
    model.graph.initializer.append(nan)
    model.graph.node.append(helper.make_node("Mul", ["raw_logits", "nan"], [logits], name="poison"))
    onnx.save(model, str(tmp_path / "nan.onnx"))
    assert np.isnan(open_session(tmp_path / "nan.onnx").run(np.zeros((1, 3, 32, 32), np.float32))).all()
    result = validate_models([tmp_path / "nan.onnx"], Reference(checkpoint="builtin:digits-resnet20"))
    row = result.rows[0]
    assert not result.passed and row.parity.non_finite == 397 and row.parity.top1_agreement == 0.0
    assert "397 outputs contain NaN or Inf" in row.failures[0]


@pytest.mark.slow
def test_foreign_model_without_metadata_gets_imagenet_preprocessing_with_a_warning(tmp_path: Path) -> None:
    model = create_model("resnet20").eval()
    path = tmp_path / "foreign.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, input_names=["x"])
    proto = onnx.load(str(path))
    write_props(proto, {})
    with pytest.warns(ResnetEdgeWarning, match="assuming ImageNet normalisation at 32x32"):
        result = validate_models([path], Reference(onnx=path))
    assert result.passed


def test_reference_with_another_class_count(digits_onnx: Path, tmp_path: Path) -> None:
    from resnet_edge.conversion.export import export_onnx
    from resnet_edge.conversion.options import ExportOptions

    export_onnx(None, tmp_path / "seven.onnx", ExportOptions(arch="resnet20", num_classes=7))
    with pytest.raises(InputFileError, match="digits.onnx has 10 classes but the reference .* has 7"):
        validate_models([digits_onnx], Reference.parse(str(tmp_path / "seven.onnx")))


def test_labels_outside_the_model_classes(digits_onnx: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 8, 8), np.uint8), labels=np.array([1, 2, 99]))
    with pytest.raises(InputFileError, match=r"class 99 is beyond the model.s 10 classes \(0 to 9\)"):
        validate_models([digits_onnx], options=ValidateOptions(data=str(tmp_path / "d.npz")))


def test_reference_parse_and_threshold_ranges(digits_onnx: Path) -> None:
    assert Reference.parse("FP32.ONNX").onnx == Path("FP32.ONNX")
    assert Reference.parse("w.pth", arch="resnet20") == Reference(checkpoint="w.pth", arch="resnet20")
    with pytest.raises(OptionError, match="percentage points, 0 to 100"):
        validate_models([digits_onnx], options=ValidateOptions(max_top1_drop=-5))


def test_not_an_image_classifier(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "u8.onnx"))
    with pytest.raises(InputFileError, match="an image classifier takes one float NCHW tensor"):
        open_session(tmp_path / "u8.onnx")


def test_malformed_metadata_is_a_one_line_error(digits_onnx: Path, tmp_path: Path) -> None:
    model = onnx.load(str(digits_onnx))
    write_props(model, {"num_classes": "ten"})
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(InputFileError, match="metadata_props are malformed"):
        validate_models([tmp_path / "bad.onnx"])


def test_images_the_int8_model_was_calibrated_on_are_left_out(digits_int8: Path, tmp_path: Path) -> None:
    """Judging INT8 on its own calibration images flatters it: those are dropped by hash, and counted."""
    from resnet_edge.calibration.sources import DIGITS_FILE

    with np.load(DIGITS_FILE) as archive:
        rows = np.concatenate([archive["calib_rows"][:10], archive["test_rows"][:30]])
        mixed = tmp_path / "mixed.npz"
        np.savez(mixed, images=archive["images"][rows], labels=archive["labels"][rows])
    with pytest.warns(ResnetEdgeWarning, match="validating on only 30 images .* after leaving out 10 calibration"):
        result = validate_models([digits_int8], options=ValidateOptions(data=str(mixed)))
    assert result.images == 30 and result.calibration_excluded == 10
    with pytest.raises(InputFileError, match="all 200 images were used to calibrate"):
        validate_models([digits_int8], options=ValidateOptions(data="builtin:digits-calib"))
