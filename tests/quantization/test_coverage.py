"""Integer coverage: which Conv/Gemm really run as integer kernels, read off the kernels a session executed."""

from __future__ import annotations

import platform
import warnings
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from resnet_edge.cli.main import main
from resnet_edge.errors import CheckFailedError, ResnetEdgeWarning
from resnet_edge.onnx.graph import macs_per_image
from resnet_edge.onnx.placement import ExecutedNode, executed_nodes_from_profile
from resnet_edge.onnx.runtime import open_session
from resnet_edge.quantization.configs import Format, Int8Target, resolve_config
from resnet_edge.quantization.coverage import integer_coverage
from resnet_edge.quantization.options import QuantizeOptions
from resnet_edge.quantization.quantize import check_integer_coverage, quantize_onnx

x86 = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="the fusions asserted are onnxruntime's x86 ones"
)


def _executed(model: Path | onnx.ModelProto) -> list[ExecutedNode]:
    session = open_session(model)
    assert session.executed, "the audit recorded no kernels"
    return session.executed


def test_default_int8_runs_every_conv_and_gemm_in_integer_kernels(digits_int8: Path) -> None:
    model = onnx.load(str(digits_int8))
    coverage = integer_coverage(model, _executed(digits_int8))
    assert coverage.complete and coverage.fraction == 1.0
    assert coverage.integer_macs == macs_per_image(model) > 0
    assert len(coverage.nodes) == 22  # resnet20: 21 Conv and the Gemm
    assert (coverage.quantize_nodes, coverage.dequantize_nodes) == (1, 1)  # the graph's input and output only
    assert coverage.float_ops == {}
    assert "integer: 100.0%" in coverage.describe()


def test_a_kernel_left_in_fp32_is_counted_with_its_macs_and_block(digits_int8: Path) -> None:
    """The matching and counting, independent of what this platform fuses: one Conv reported as an FP32 kernel."""
    model = onnx.load(str(digits_int8))
    executed = _executed(digits_int8)
    target = next(n for n in executed if n.name.startswith("/layer2/layer2.1/conv1/Conv"))
    demoted = [
        ExecutedNode(n.name, "Conv", n.provider, ("float", "float"), n.output_shape) if n is target else n
        for n in executed
    ]
    coverage = integer_coverage(model, demoted)
    conv = next(c for c in coverage.nodes if c.name == "/layer2/layer2.1/conv1/Conv")
    assert not conv.integer and conv.block == "layer2.1" and conv.macs > 0
    assert coverage.float_macs == conv.macs and coverage.integer_macs == macs_per_image(model) - conv.macs
    assert coverage.float_compute == ["/layer2/layer2.1/conv1/Conv"]
    assert coverage.float_ops == {"layer2.1": [f"Conv {target.name}"]}
    with pytest.raises(CheckFailedError, match=r"1 Conv/Gemm ran as FP32 kernels .*layer2\.1/conv1"):
        check_integer_coverage(coverage, excluded=[], strict=True)
    check_integer_coverage(coverage, excluded=["/layer2/layer2.1/conv1/Conv"], strict=True)  # excluded on purpose


def test_kernels_named_after_their_op_are_paired_in_order(digits_int8: Path) -> None:
    """onnxruntime 1.19 names fused kernels "QLinearConv_token_3", not after the node they replaced."""
    model = onnx.load(str(digits_int8))
    renamed = [
        ExecutedNode(f"{n.op_type}_token_{i}", n.op_type, n.provider, n.input_types, n.output_shape)
        if n.op_type in ("QLinearConv", "QGemm")
        else n
        for i, n in enumerate(_executed(digits_int8))
    ]
    coverage = integer_coverage(model, renamed)
    assert coverage.complete and coverage.integer_macs == macs_per_image(model)
    assert len([n for n in coverage.nodes if n.kernel]) == 22


def test_profile_events_become_executed_nodes() -> None:
    events = [
        {"cat": "Session", "name": "model_run", "ts": 1},
        {
            "cat": "Node",
            "name": "/conv1/Conv_token_1_kernel_time",
            "ts": 3,
            "args": {
                "op_name": "QLinearConv",
                "provider": "CPUExecutionProvider",
                "input_type_shape": [{"uint8": [1, 32, 32, 3]}, {"float": []}],
                "output_type_shape": [{"uint8": [1, 32, 32, 16]}],
            },
        },
        {"cat": "Node", "name": "/conv1/Conv_token_1_fence_before", "ts": 2, "args": {"op_name": "QLinearConv"}},
        {"cat": "Node", "name": "input_QuantizeLinear_kernel_time", "ts": 2, "args": {"op_name": "QuantizeLinear"}},
    ]
    nodes = executed_nodes_from_profile(events)
    assert [n.name for n in nodes] == ["input_QuantizeLinear", "/conv1/Conv_token_1"]
    assert nodes[1].input_types == ("uint8", "float") and nodes[1].output_shape == (1, 32, 32, 16)
    assert not nodes[1].float_input and ExecutedNode.from_dict(nodes[1].to_dict()) == nodes[1]


def test_qoperator_macs_come_from_the_profile_past_contrib_ops(digits_sim: Path, tmp_path: Path) -> None:
    """onnx's shape inference stops at QLinearAdd (a contrib op); the profile's output shapes carry the count on."""
    qop = tmp_path / "qop.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_onnx(digits_sim, qop, QuantizeOptions(format=Format.QOPERATOR, measure_speed=False))
    coverage = integer_coverage(onnx.load(str(qop)), _executed(qop))
    assert coverage.complete
    assert coverage.integer_macs == macs_per_image(onnx.load(str(digits_sim)))


def test_arm64_takes_asymmetric_activations_so_relus_fuse() -> None:
    config = resolve_config(Int8Target.ARM64)
    assert config.activation_type == "int8" and not config.symmetric_activations and config.per_channel


@x86
def test_signed_symmetric_int8_is_partly_fp32_on_x86_and_quantize_says_so(digits_sim: Path, tmp_path: Path) -> None:
    """MEASURED.md's trap, made visible: on the x86 CPU EP a signed-activation model dequantizes some convolutions."""
    output = tmp_path / "signed.int8.onnx"
    with pytest.warns(ResnetEdgeWarning, match="ran as FP32 kernels"):
        result = quantize_onnx(digits_sim, output, QuantizeOptions(target=Int8Target.GPU_TENSORRT, measure_speed=False))
    assert result.coverage is not None and 0 < result.coverage.fraction < 1
    assert result.record().to_json()["integer_coverage"]["float_compute"] == result.coverage.float_compute
    assert result.coverage.quantize_nodes > 1

    refused = tmp_path / "refused.int8.onnx"
    run = CliRunner().invoke(
        main,
        ["quantize", str(digits_sim), "-o", str(refused), "--target", "gpu-tensorrt", "--no-speed", "--require-int8"],
    )
    assert run.exit_code == 1
    errors = [line for line in run.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ran as FP32 kernels" in errors[0] and "Traceback" not in run.output
    assert not refused.exists() and not Path(f"{refused}.json").exists()


def test_validate_and_benchmark_report_coverage_and_error_in_output_steps(digits_sim: Path, digits_int8: Path) -> None:
    from resnet_edge.evaluation.benchmark import benchmark_models
    from resnet_edge.evaluation.options import BenchmarkOptions, ValidateOptions
    from resnet_edge.evaluation.validate import validate_models
    from resnet_edge.onnx.graph import output_step

    step = output_step(onnx.load(str(digits_int8)))
    assert step is not None and step > 0
    assert output_step(onnx.load(str(digits_sim))) is None
    result = validate_models([digits_sim, digits_int8], options=ValidateOptions(data="builtin:digits-test"))
    fp32, int8 = result.rows
    assert fp32.coverage is None and fp32.max_error_steps is None
    assert int8.coverage is not None and int8.coverage.complete
    assert int8.max_error_steps == pytest.approx(int8.parity.max_abs_error / step)
    rows = benchmark_models([digits_int8], BenchmarkOptions(iterations=2, warmup=0, threads=1)).rows
    assert rows[0].coverage is not None and rows[0].coverage.complete


def test_a_device_reports_the_same_coverage_as_here(digits_int8: Path) -> None:
    """The runner sends the kernels its sessions ran; the host attributes them with the model file."""
    from resnet_edge.device.fleet import validate_on_targets
    from resnet_edge.device.targets import Target
    from resnet_edge.evaluation.options import ValidateOptions
    from resnet_edge.evaluation.validate import validate_models

    options = ValidateOptions(data="builtin:digits-test")
    here = validate_models([digits_int8], options=options).rows[0]
    fleet = validate_on_targets([digits_int8], [Target.parse("local")], options=options)
    there = fleet.results["local"].rows[0]
    assert there.coverage is not None and there.coverage.describe() == here.coverage.describe()
    assert there.placement is not None and there.placement.describe() == here.placement.describe()
    assert there.max_error_steps == pytest.approx(here.max_error_steps)


def test_tune_breaks_a_speed_tie_by_integer_coverage() -> None:
    from resnet_edge.evaluation.tune import Candidate, rank_candidates

    partial = Candidate("int8 a", "cpu", "int8", "a.onnx", passed=True, integer_fraction=0.53, p50_ms={1: 1.00})
    full = Candidate("int8 b", "cpu", "int8", "b.onnx", passed=True, integer_fraction=1.0, p50_ms={1: 1.02})
    slow = Candidate("fp32", "cpu", "fp32", "c.onnx", passed=True, p50_ms={1: 2.0})
    assert rank_candidates([partial, full, slow], 1)[0] is full  # within 3%: the fully integer one
    faster = Candidate("int8 a", "cpu", "int8", "a.onnx", passed=True, integer_fraction=0.53, p50_ms={1: 0.5})
    assert rank_candidates([faster, full, slow], 1)[0] is faster  # a real speed difference wins
