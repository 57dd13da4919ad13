"""Execution providers: the table and its parse syntax, the node placement audit, OpenVINO, TensorRT's absence,
FP16, and ``tune`` choosing only what passed parity."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from resnet_edge.cli.main import main
from resnet_edge.errors import InputFileError, OptionError, ProviderError, ResnetEdgeWarning
from resnet_edge.onnx.plugins import available_providers, provider_statuses
from resnet_edge.onnx.providers import PROVIDERS, Provider, parse_provider, parse_providers
from resnet_edge.onnx.runtime import open_session

OPENVINO_HERE = "OpenVINOExecutionProvider" in available_providers()
TENSORRT_HERE = "TensorrtExecutionProvider" in available_providers()
AZURE_HERE = "AzureExecutionProvider" in available_providers()


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert all(f in lines[0] for f in fragments), lines[0]


# --- the parse syntax ------------------------------------------------------------------------------------------------


def test_named_and_ep_providers_with_options() -> None:
    parsed = parse_providers(
        'cpu,openvino[load_config={"CPU": {"A": "2", "B": "1"}}],ep:QNNExecutionProvider[backend_path=libQnnHtp.so],'
        "ep:CUDAExecutionProvider,tensorrt[fp16=1;cache=/tmp/trt],cpu"
    )
    assert [p.name for p in parsed] == ["cpu", "openvino", "QNNExecutionProvider", "cuda", "tensorrt"]
    assert dict(parsed[1].options) == {"load_config": '{"CPU": {"A": "2", "B": "1"}}'}  # commas inside brackets
    assert parsed[2].ort_name == "QNNExecutionProvider" and parsed[2].short == "ep:QNNExecutionProvider"
    assert parsed[3] == Provider.CUDA  # onnxruntime's name of a table provider is that provider
    assert dict(parsed[4].options) == {"cache": "/tmp/trt", "fp16": "1"}
    assert parse_providers(",".join(p.value for p in parsed)) == parsed  # each value reads back


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cpu,tpu", "unknown execution provider 'tpu'"),
        ("openvino[hint]", "bad option 'hint'"),
        ("openvino[hint=A;hint=B]", "option 'hint' is given twice"),
        ("openvino[hint=A", "options go in brackets"),
        ("ep:", "after 'ep:' comes onnxruntime's name"),
        (" , ", "no execution provider given"),
        ("cpu[arena=x]", r"the CPU provider takes no options \(arena\)"),  # issue 21: ignored, yet shown as applied
        ("ep:CPUExecutionProvider[use_arena=0]", "the CPU provider takes no options"),
    ],
)
def test_bad_provider_text(text: str, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        parse_providers(text)


def test_provider_text_round_trips_property() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    names = st.one_of(
        st.sampled_from(sorted(PROVIDERS)),
        st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,20}ExecutionProvider", fullmatch=True),
    )
    keys = st.from_regex(r"[A-Za-z0-9_.\-]{1,12}", fullmatch=True)
    values = st.text(st.characters(blacklist_characters=";[]", blacklist_categories=("Cs",)), max_size=20).map(
        str.strip
    )
    specs = st.builds(
        lambda name, options: (
            parse_provider(name if name in PROVIDERS else f"ep:{name}")
            if not options or parse_provider(name if name in PROVIDERS else f"ep:{name}").name == "cpu"
            else Provider(
                parse_provider(name if name in PROVIDERS else f"ep:{name}").name, tuple(sorted(options.items()))
            )
        ),
        names,
        st.dictionaries(keys, values, max_size=3),
    )

    @hypothesis.settings(max_examples=150, deadline=None)
    @hypothesis.given(st.lists(specs, min_size=1, max_size=4, unique=True))
    def round_trip(providers: list[Provider]) -> None:
        assert parse_providers(",".join(p.value for p in providers)) == providers

    round_trip()


# --- the placement audit --------------------------------------------------------------------------------------------


def fallback_model() -> onnx.ModelProto:
    """A classifier with two nodes OpenVINO leaves to the CPU: a com.microsoft FastGelu (no compute op), and a float64
    Gemm (a compute op; OpenVINO takes float32 ones). The CPU EP runs all of it."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((5, 4)), "fc64"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("FastGelu", ["r"], ["g"], name="gelu", domain="com.microsoft"),
        helper.make_node("GlobalAveragePool", ["g"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Cast", ["f"], ["f64"], name="to64", to=TensorProto.DOUBLE),
        helper.make_node("Gemm", ["f64", "fc64"], ["y64"], name="fc", transB=1),
        helper.make_node("Cast", ["y64"], ["y"], name="to32", to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "fallback",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def test_placement_on_cpu_counts_every_node() -> None:
    session = open_session(fallback_model())
    placement = session.placement
    assert placement is not None and not placement.partial
    assert [s.provider for s in placement.shares] == ["cpu"]
    assert placement.shares[0].op_types.get("FastGelu") == 1 and placement.total >= 7
    assert placement.describe().startswith(f"cpu: {placement.total} of {placement.total} nodes")


@pytest.mark.skipif(not AZURE_HERE, reason="this onnxruntime build has no AzureExecutionProvider")
def test_provider_that_takes_no_compute_op_is_partial_placement() -> None:
    """A real provider that takes no ordinary node: the session 'uses' it, yet every Conv/Gemm runs on the CPU."""
    azure = parse_provider("ep:AzureExecutionProvider")
    with pytest.warns(ResnetEdgeWarning, match="left compute ops to another provider") as caught:
        session = open_session(fallback_model(), azure)
    assert session.ran_on == "ep:AzureExecutionProvider" and session.placement.partial
    assert session.placement.compute_elsewhere == {"Conv": 1, "Gemm": 1} or "FusedConv" in str(caught[0].message)
    assert "ep:AzureExecutionProvider: 0 of" in session.placement.describe()
    with pytest.raises(ProviderError, match="left compute ops to another provider"):
        open_session(fallback_model(), azure, strict=True)


@pytest.mark.skipif(not AZURE_HERE, reason="this onnxruntime build has no AzureExecutionProvider")
def test_cli_shows_placement_and_strict_fails_on_partial(digits_onnx: Path) -> None:
    shown = run("benchmark", digits_onnx, "--iterations", "2", "--warmup", "0")
    assert shown.exit_code == 0 and "placement digits.onnx on cpu: cpu: " in shown.output
    assert_one_line_error(
        run("validate", digits_onnx, "--providers", "ep:AzureExecutionProvider", "--strict-ep"),
        "requested ep:AzureExecutionProvider but it left compute ops to another provider",
    )


@pytest.mark.skipif(not OPENVINO_HERE, reason="no OpenVINO provider with a device here (the plugin serves Intel only)")
def test_openvino_leaves_unsupported_nodes_to_cpu_and_says_so() -> None:
    with pytest.warns(ResnetEdgeWarning, match="left compute ops"):
        session = open_session(fallback_model(), Provider.OPENVINO, threads=2)
    placement = session.placement
    assert session.ran_on == "openvino" and placement.shares[0].provider == "openvino"
    assert placement.shares[0].subgraphs >= 1
    cpu = next(s for s in placement.shares if s.provider == "cpu")
    assert {"FastGelu", "Gemm"} <= set(cpu.op_types) and placement.compute_elsewhere == {"Gemm": 1}
    with pytest.raises(ProviderError, match="left compute ops"):
        open_session(fallback_model(), Provider.OPENVINO, strict=True)


@pytest.mark.slow
@pytest.mark.skipif(not OPENVINO_HERE, reason="no OpenVINO provider with a device here (the plugin serves Intel only)")
def test_openvino_validate_and_benchmark_end_to_end(digits_sim: Path, digits_int8: Path) -> None:
    checked = run("validate", digits_sim, digits_int8, "--providers", "cpu,openvino", "--strict-ep", "--json")
    assert checked.exit_code == 0, checked.output
    rows = json.loads(checked.stdout)["rows"]
    assert {r["ran_on"] for r in rows} == {"cpu", "openvino"} and all(r["passed"] for r in rows)
    assert all(r["placement"]["shares"][0]["provider"] == r["ran_on"] for r in rows)
    timed = run("benchmark", digits_sim, digits_int8, "--providers", "openvino[hint=LATENCY]", "--threads", "2")
    assert timed.exit_code == 0 and "placement digits.int8.onnx on openvino: openvino:" in timed.output


# --- providers that are not here ------------------------------------------------------------------------------------


@pytest.mark.skipif(TENSORRT_HERE, reason="this machine has TensorRT")
def test_tensorrt_missing_is_a_visible_fallback_or_a_strict_error(digits_onnx: Path, tmp_path: Path) -> None:
    wanted = parse_provider(f"tensorrt[fp16=1;cache={tmp_path}]")
    with pytest.warns(ResnetEdgeWarning, match=r"requested tensorrt\[cache=.*fp16=1\] but TensorrtExecutionProvider"):
        session = open_session(digits_onnx, wanted)
    assert session.ran_on == "cpu" and session.fell_back
    assert_one_line_error(
        run("benchmark", digits_onnx, "--providers", "tensorrt", "--strict-ep", "--iterations", "1"),
        "requested tensorrt: TensorrtExecutionProvider is not available",
    )


@pytest.mark.skipif(OPENVINO_HERE, reason="this machine has OpenVINO")
def test_openvino_missing_says_why() -> None:
    with pytest.raises(ProviderError, match="requested openvino: OpenVINOExecutionProvider is not available"):
        open_session(fallback_model(), Provider.OPENVINO, strict=True)


def test_doctor_lists_every_provider_with_how_to_add_it() -> None:
    result = run("doctor", "--json")
    listed = {p["name"]: p for p in json.loads(result.stdout)["providers"]}
    assert {"cpu", "cuda", "tensorrt", "openvino"} <= set(listed) and listed["cpu"]["available"]
    assert "resnet-edge[openvino]" in listed["openvino"]["install"]
    assert listed["openvino"]["available"] == OPENVINO_HERE
    text = run("doctor").output
    assert ("no  openvino" in text and "to add: pip install 'resnet-edge[openvino]'" in text) or OPENVINO_HERE


# --- FP16 and tune --------------------------------------------------------------------------------------------------


def test_fp16_variant_keeps_float32_io_and_passes_on_decisions(digits_sim: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxconverter_common")
    from resnet_edge.evaluation.options import ValidateOptions
    from resnet_edge.evaluation.tune import convert_fp16
    from resnet_edge.evaluation.validate import Reference, validate_models

    half = convert_fp16(digits_sim, tmp_path / "digits.fp16.onnx")
    model = onnx.load(str(half))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResnetEdgeWarning)
        result = validate_models([half], Reference(onnx=digits_sim), ValidateOptions())
    row = result.rows[0]
    assert row.passed and row.parity.top1_agreement >= 0.99 and row.parity.max_abs_error > 0


def test_quantize_checks_on_one_provider(digits_sim: Path) -> None:
    assert_one_line_error(
        run("quantize", digits_sim, "--providers", "cpu,openvino"), "quantize checks INT8 on one provider, got 2"
    )


def test_pipeline_providers_keep_commas_inside_options() -> None:
    from resnet_edge.pipeline.config import make_config

    config = make_config({"providers": 'cpu,openvino[load_config={"CPU": {"A": "1", "B": "2"}}]'})
    assert config.providers == ("cpu", 'openvino[load_config={"CPU": {"A": "1", "B": "2"}}]')
    with pytest.raises(OptionError, match="unknown execution provider 'tpu'"):
        make_config({"providers": "cpu,tpu"})


def test_optimization_level_and_session_config_reach_the_session() -> None:
    """The CPU EP experiments (benchmarks/providers.py) open their sessions here too, with these two settings."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    session = open_session(
        model, classifier=False, audit=False, optimization="basic", session_config={"session.qdqisint8allowed": "1"}
    )
    assert session.session.get_session_options().graph_optimization_level.name == "ORT_ENABLE_BASIC"
    assert session.session.get_session_options().get_session_config_entry("session.qdqisint8allowed") == "1"
    with pytest.raises(OptionError, match="optimization must be one of basic, extended, all, got 'max'"):
        open_session(model, classifier=False, audit=False, optimization="max")


# --- the OpenVINO runtime itself (issue 24): a backend beside onnxruntime's providers --------------------------------

OPENVINO_RUNTIME_HERE = "OpenVINORuntime" in available_providers()


def small_classifier(fixed_batch: int | None = None) -> onnx.ModelProto:
    """Conv -> Relu -> pool -> Gemm: a float classifier every runtime reads."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
            helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1),
        ],
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [fixed_batch or "batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [fixed_batch or "batch", 5])],
        [
            numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "fc"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.mark.skipif(not OPENVINO_RUNTIME_HERE, reason="the openvino package is not installed")
def test_openvino_runtime_runs_fp32_by_default_and_says_its_precision() -> None:
    model = small_classifier()
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    expected = open_session(model, audit=False).logits(x)
    session = open_session(model, parse_provider("openvino-runtime"), threads=1)
    assert session.ran_on == "openvino-runtime" and not session.fell_back and session.fixed_batch is None
    assert "inference precision f32" in session.placement.describe()
    np.testing.assert_allclose(session.logits(x), expected, rtol=1e-5, atol=1e-5)
    bf16 = open_session(model, parse_provider("openvino-runtime[precision=bf16]"), threads=1)
    # Asked for, it says BF16 (or what the CPU really runs, where it has no BF16 kernels).
    assert "inference precision" in bf16.placement.describe()
    with pytest.raises(OptionError, match=r"takes no option cache \(it takes: hint, pinning, precision, streams\)"):
        open_session(model, parse_provider("openvino-runtime[cache=x]"))
    with pytest.raises(OptionError, match="pinning is 1 .* or 0"):
        open_session(model, parse_provider("openvino-runtime[pinning=off]"))
    with pytest.raises(OptionError, match="precision is one of f32, bf16, f16"):
        open_session(model, parse_provider("openvino-runtime[precision=int4]"))
    assert next(s for s in provider_statuses() if s.name == "openvino-runtime").available


def test_openvino_runtime_missing_is_a_visible_fallback_or_a_strict_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import resnet_edge.onnx.plugins as plugins
    import resnet_edge.onnx.runtime as runtime

    for module in (plugins, runtime):
        monkeypatch.setattr(module, "openvino_runtime_version", lambda: None)
    with pytest.warns(ResnetEdgeWarning, match="requested openvino-runtime but the OpenVINO runtime is not installed"):
        session = open_session(small_classifier(), parse_provider("openvino-runtime"))
    assert session.ran_on == "cpu" and session.fell_back
    with pytest.raises(ProviderError, match=r"pip install 'resnet-edge\[openvino\]'"):
        open_session(small_classifier(), parse_provider("openvino-runtime"), strict=True)
    assert "OpenVINORuntime" not in available_providers()


@pytest.mark.skipif(not OPENVINO_RUNTIME_HERE, reason="the openvino package is not installed")
def test_openvino_runtime_validate_and_benchmark_end_to_end(digits_sim: Path, digits_int8: Path) -> None:
    checked = run("validate", digits_sim, digits_int8, "--providers", "cpu,openvino-runtime", "--strict-ep", "--json")
    assert checked.exit_code == 0, checked.output
    rows = json.loads(checked.stdout)["rows"]
    assert {r["ran_on"] for r in rows} == {"cpu", "openvino-runtime"} and all(r["passed"] for r in rows)
    int8 = next(r for r in rows if r["ran_on"] == "openvino-runtime" and r["quantized"])
    assert "Convolution u8" in int8["placement"]["note"] and "inference precision f32" in int8["placement"]["note"]
    timed = run("benchmark", digits_int8, "--providers", "openvino-runtime", "--threads", "1", "--iterations", "5")
    assert timed.exit_code == 0, timed.output
    assert "placement digits.int8.onnx on openvino-runtime: openvino-runtime:" in timed.output


@pytest.mark.skipif(not OPENVINO_RUNTIME_HERE, reason="the openvino package is not installed")
def test_the_openvino_runtime_compiles_with_the_settings_its_provider_text_carries() -> None:
    # What tune's knob search records is the provider text; the session opened from it must run that way (issue 24).
    session = open_session(small_classifier(), parse_provider("openvino-runtime[hint=THROUGHPUT;pinning=0;streams=1]"))
    compiled = session.session.compiled
    assert compiled.get_property("ENABLE_CPU_PINNING") is False and compiled.get_property("NUM_STREAMS") == 1
    assert str(compiled.get_property("PERFORMANCE_HINT")).endswith("THROUGHPUT")
    pinned = open_session(small_classifier(), parse_provider("openvino-runtime[pinning=1]"), threads=1).session.compiled
    assert pinned.get_property("ENABLE_CPU_PINNING") is True and pinned.get_property("INFERENCE_NUM_THREADS") == 1


@pytest.mark.skipif(not OPENVINO_RUNTIME_HERE, reason="the openvino package is not installed")
def test_a_file_the_openvino_runtime_cannot_read_is_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputFileError, match=r"the OpenVINO runtime cannot load .*bad.onnx"):
        open_session(bad, parse_provider("openvino-runtime"))


def test_placement_says_what_it_counts_when_the_file_has_other_nodes(tmp_path: Path) -> None:
    # Nodes are counted as onnxruntime ran them, after its fusions: a file of 52 nodes runs as 24 (issue 22). The
    # file's own count is said beside, so two commands' figures for one file can be read together.
    from resnet_edge.onnx.placement import Placement, ProviderShare, placement_from_json

    fused = Placement("cpu", 24, [ProviderShare("cpu", 24, {"FusedConv": 19})], model_nodes=52)
    assert fused.describe() == "cpu: 24 of 24 nodes as onnxruntime ran them (52 in the file)"
    assert Placement("cpu", 24, [ProviderShare("cpu", 24, {})], model_nodes=24).describe() == "cpu: 24 of 24 nodes"
    assert placement_from_json({"requested": "cpu", "total": 24, "shares": []}, model_nodes=52).model_nodes == 52
