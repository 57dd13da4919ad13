"""INT8 static quantization: accuracy on the trained model, the record, streaming calibration, bad input."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest

from resnet_edge.errors import CheckFailedError, InputFileError, OptionError
from resnet_edge.onnx.graph import is_quantized
from resnet_edge.onnx.metadata import read_record, write_props
from resnet_edge.onnx.op_types import COMPUTE_OPS
from resnet_edge.onnx.runtime import open_session
from resnet_edge.progress import Progress
from resnet_edge.quantization.configs import Format, Int8Target, Method, detect_target, resolve_config
from resnet_edge.quantization.options import QuantizeOptions
from resnet_edge.quantization.quantize import quantize_onnx
from resnet_edge.quantization.record import QuantizationRecord, calibrated_hashes, read_quantization_record
from resnet_edge.schema import DocumentFormatError

FAST = QuantizeOptions(measure_speed=False)


@pytest.fixture(scope="module")
def digits_result(digits_sim: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("q") / "digits.int8.onnx"
    return quantize_onnx(digits_sim, out, QuantizeOptions())


def test_trained_model_keeps_agreement_and_accuracy(digits_result) -> None:
    r = digits_result
    assert r.calibration_source == "builtin:digits-calib" and r.calibration_images == 200
    assert r.evaluation_source == "builtin:digits-test" and r.evaluation_images == 397
    assert r.parity.top1_agreement >= 0.99
    assert r.top1_drop_points is not None and r.top1_drop_points <= 1.0
    assert r.int8_accuracy.top1 >= 0.98
    assert r.speed is not None and r.speed.iterations > 0 and r.speed.int8_p50_ms > 0
    assert r.judged_by == "top-1 agreement" == r.record().to_json()["judged_by"]  # trained weights: judged on decisions


def test_output_is_a_checked_runnable_int8_model_with_every_compute_node_quantized(digits_result) -> None:
    model = onnx.load(str(digits_result.output))
    onnx.checker.check_model(model, full_check=True)
    assert is_quantized(model) and digits_result.fp32_nodes == []
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    compute = [n for n in model.graph.node if n.op_type in COMPUTE_OPS]
    assert len(compute) == digits_result.quantized_nodes == 22  # 21 Conv + the final Gemm
    assert all(producers[n.input[0]] == "DequantizeLinear" for n in compute)
    logits = open_session(model).run(np.zeros((2, 3, 32, 32), np.float32))
    assert logits.shape == (2, 10)


def test_record_in_model_and_sidecar(digits_result) -> None:
    record = read_record(onnx.load(str(digits_result.output)), "quantization")
    assert record == json.loads(digits_result.sidecar.read_text())
    assert record["target"] == detect_target().value and record["method"] == "minmax"
    assert record["calibration"]["images"] == 200 and len(record["calibration"]["files"]) == 200
    assert all(len(f["sha256"]) == 64 for f in record["calibration"]["files"])
    assert record["calibration"]["seed"] == 0 and record["versions"]["onnxruntime"]
    assert record["evaluation"] == {"source": "builtin:digits-test", "images": 397, "overlap_excluded": 0}
    props = {p.key for p in onnx.load(str(digits_result.output)).metadata_props}
    assert {"arch", "preprocessing", "labels", "simplification", "quantization"} <= props


def test_the_record_reads_back_to_the_same_json(digits_result) -> None:
    """The sidecar is written from a QuantizationRecord and read back by it: read and written again, it is the same
    JSON, and it is the record the result made; the embedded one reads back to it too."""
    stored = json.loads(digits_result.sidecar.read_text())
    record = QuantizationRecord.from_json(stored)
    assert record.to_json() == stored
    assert record == digits_result.record() and read_quantization_record(onnx.load(str(digits_result.output))) == record
    assert record.calibration.files[0].sha256 == stored["calibration"]["files"][0]["sha256"]


def test_a_record_written_before_a_key_existed_still_reads(digits_result) -> None:
    stored = json.loads(digits_result.sidecar.read_text())
    for newer in ("weight_bits", "power_of_two", "strict_integer", "judged_by", "accuracy_recovery"):
        del stored[newer]
    record = QuantizationRecord.from_json(stored)
    assert record.weight_bits == 8 and record.judged_by == "top-1 agreement" and record.accuracy_recovery.steps == ()


def test_a_malformed_record_names_the_key(digits_result) -> None:
    stored = json.loads(digits_result.sidecar.read_text())
    del stored["calibration"]["files"][1]["sha256"]
    with pytest.raises(
        DocumentFormatError, match=r"^malformed calibration record: calibration\.files\[1\]\.sha256: missing$"
    ):
        QuantizationRecord.from_json(stored)
    model = onnx.load(str(digits_result.output))
    write_props(model, {"quantization": json.dumps({**stored, "calibration": []})})
    with pytest.raises(InputFileError, match="malformed calibration record: calibration: expected an object"):
        calibrated_hashes([model])


def test_calibration_and_evaluation_never_overlap(digits_sim: Path, tmp_path: Path) -> None:
    # Evaluate on a copy of the calibration images: every one must be dropped by hash, none counted.
    options = QuantizeOptions(calib="builtin:digits-calib", eval_data=str(_calib_copy(tmp_path)), measure_speed=False)
    with pytest.raises(InputFileError, match="no held-out image left"):
        quantize_onnx(digits_sim, tmp_path / "q.onnx", options)
    assert not (tmp_path / "q.onnx").exists()


def _calib_copy(tmp_path: Path) -> Path:
    """The calibration split saved as a separate file: same pixels, so the same hashes."""
    from resnet_edge.calibration.sources import DIGITS_FILE

    with np.load(DIGITS_FILE) as data:
        images = data["images"][data["calib_rows"]]
    np.savez(tmp_path / "copy.npz", images=images)
    return tmp_path / "copy.npz"


def test_one_source_holds_out_a_quarter(tiny_onnx: Path, tmp_path: Path) -> None:
    # A random model's agreement measures noise, not the split this test is about: its INT8 bar is waived.
    options = QuantizeOptions(calib="builtin:photos", measure_speed=False, allow_accuracy_drop=True)
    events: list[Progress] = []
    result = quantize_onnx(tiny_onnx, tmp_path / "t.onnx", options, on_progress=events.append)
    assert result.calibration_source == result.evaluation_source == "builtin:photos"
    assert result.calibration_images + result.evaluation_images == 55 and result.evaluation_images == 13
    assert result.overlap_excluded == 0
    # Progress counts the calibration images, up to all of them, in the stage contract's events.
    assert events and {(e.stage, e.step) for e in events} == {("quantize", "calibrating (minmax)")}
    assert [e.done for e in events] == sorted(e.done for e in events)
    assert events[-1].done == events[-1].total == result.calibration_images


def test_random_weights_are_judged_by_logit_error(tiny_onnx: Path, tmp_path: Path) -> None:
    # No --allow-accuracy-drop: a random model's near-tied decisions must not fail it, a broken calibration must.
    result = quantize_onnx(tiny_onnx, tmp_path / "r.onnx", QuantizeOptions(calib="builtin:photos", measure_speed=False))
    assert result.judged_by == "logit error" == result.record().to_json()["judged_by"]
    assert result.output_step is not None and result.output_step > 0
    assert result.max_error_steps is not None and result.max_error_steps < 16 and result.parity.min_cosine > 0.99
    dark = tmp_path / "dark.npy"  # ranges far too narrow for the photos it is judged on
    np.save(dark, np.random.default_rng(0).integers(0, 12, (40, 32, 32, 3), dtype=np.uint8))
    options = QuantizeOptions(calib=str(dark), eval_data="builtin:photos", measure_speed=False)
    with pytest.warns(UserWarning), pytest.raises(CheckFailedError, match="logit-error bar for random weights"):
        quantize_onnx(tiny_onnx, tmp_path / "dark.onnx", options)
    assert not (tmp_path / "dark.onnx").exists()


@pytest.mark.parametrize("method", [Method.ENTROPY, Method.PERCENTILE])
def test_histogram_methods(digits_sim: Path, tmp_path: Path, method: Method) -> None:
    result = quantize_onnx(digits_sim, tmp_path / "q.onnx", QuantizeOptions(method=method, measure_speed=False))
    assert result.method == method.value and result.parity.top1_agreement >= 0.99


def test_calibration_memory_does_not_grow_with_image_count(tiny_onnx: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    peaks = {}
    for count in (48, 192):
        np.save(tmp_path / f"c{count}.npy", rng.integers(0, 255, (count, 32, 32, 3), dtype=np.uint8))
        tracemalloc.start()
        quantize_onnx(
            tiny_onnx,
            tmp_path / f"q{count}.onnx",
            QuantizeOptions(
                calib=str(tmp_path / f"c{count}.npy"),
                eval_data="builtin:photos",
                method=Method.ENTROPY,
                measure_speed=False,
                allow_accuracy_drop=True,  # a random model: this test is about memory, not agreement
            ),
        )
        peaks[count] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # 4x the images: the peak stays within 1.5x (onnxruntime's own quantize_static would hold all of them).
    assert peaks[192] < 1.5 * peaks[48], peaks


def test_targets_and_overrides() -> None:
    vnni = resolve_config(Int8Target.X86_VNNI)
    assert (vnni.format, vnni.activation_type, vnni.weight_type, vnni.per_channel, vnni.reduce_range) == (
        Format.QDQ,
        "uint8",
        "int8",
        True,
        False,
    )
    assert resolve_config(Int8Target.X86_AVX2).reduce_range
    assert resolve_config(Int8Target.GPU_TENSORRT).symmetric_activations
    overridden = resolve_config(Int8Target.X86_VNNI, per_channel=False, format=Format.QOPERATOR)
    assert not overridden.per_channel and overridden.format is Format.QOPERATOR and "overridden" in overridden.reason


def test_qoperator_and_exclusions(digits_sim: Path, tmp_path: Path) -> None:
    result = quantize_onnx(
        digits_sim,
        tmp_path / "q.onnx",
        QuantizeOptions(format=Format.QOPERATOR, exclude=("layer3.2", "fc"), measure_speed=False),
    )
    assert result.config.format is Format.QOPERATOR
    assert set(result.fp32_nodes) == {"/layer3/layer3.2/conv1/Conv", "/layer3/layer3.2/conv2/Conv", "/fc/Gemm"}
    assert result.parity.top1_agreement >= 0.99
    with pytest.raises(OptionError, match="--exclude 'layer9' matches no node"):
        quantize_onnx(digits_sim, tmp_path / "x.onnx", QuantizeOptions(exclude=("layer9",), measure_speed=False))


def test_already_quantized_and_non_onnx(digits_int8: Path, tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="already quantized"):
        quantize_onnx(digits_int8, tmp_path / "q.onnx", FAST)
    text = tmp_path / "model.onnx"
    text.write_text("definitely not protobuf")
    with pytest.raises(InputFileError, match="not a readable ONNX model"):
        quantize_onnx(text, tmp_path / "q.onnx", FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.parametrize("kind", ["empty", "no-images", "nan", "wrong-shape", "wrong-channels", "truncated"])
def test_bad_calibration_data_leaves_nothing(tiny_onnx: Path, tmp_path: Path, kind: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    if kind == "no-images":
        (data / "a.txt").write_text("x")
    elif kind == "nan":
        data = tmp_path / "nan.npy"
        np.save(data, np.full((4, 3, 32, 32), np.nan, np.float32))
    elif kind == "wrong-shape":
        data = tmp_path / "shape.npy"
        np.save(data, np.zeros((4, 3, 16, 16), np.float32))
    elif kind == "wrong-channels":
        data = tmp_path / "chan.npy"
        np.save(data, np.zeros((4, 32, 32, 2), np.uint8))
    elif kind == "truncated":
        from PIL import Image

        Image.new("RGB", (64, 64)).save(tmp_path / "full.jpg")
        (data / "cut.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:200])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputFileError):
        quantize_onnx(
            tiny_onnx, out / "q.onnx", QuantizeOptions(calib=str(data), eval_data="builtin:photos", measure_speed=False)
        )
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_fixed_batch_model_quantizes_and_times(tmp_path: Path) -> None:
    from resnet_edge.conversion.export import export_onnx
    from resnet_edge.conversion.options import ExportOptions

    export_onnx("builtin:digits-resnet20", tmp_path / "b4.onnx", ExportOptions(batch=4))
    result = quantize_onnx(tmp_path / "b4.onnx", tmp_path / "b4.int8.onnx", QuantizeOptions(limit=40))
    assert result.evaluation_images == 397 and result.parity.top1_agreement >= 0.99 and result.speed is not None
