"""The one-command pipeline on small settings: artifacts, report content, failures and interruption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from resnet_edge.cli.main import main
from resnet_edge.errors import InputFileError, OptionError, ResnetEdgeWarning, StageError
from resnet_edge.pipeline.config import PipelineConfig, load_config, option_keys
from resnet_edge.pipeline.publish import write_manifest
from resnet_edge.pipeline.run import run_pipeline
from tests.conftest import FailingStage

SMALL = dict(iterations=5, warmup=1, batch_sizes=(1, 4), threads=1)
EXPECTED = {
    "model.onnx",
    "model.sim.onnx",
    "model.int8.onnx",
    "model.int8.onnx.json",
    "model.tuned.onnx",  # the tune stage's choice, on by default
    "model.tuned.onnx.json",
    "report.json",
    "report.md",
    "report.html",
    "latency.png",
    "accuracy_vs_latency.png",
    "ops_before_after.png",
    ".resnet-edge-pipeline",  # the marker that lets a later --overwrite replace this folder
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    outdir = tmp_path_factory.mktemp("pipeline") / "out"
    result = run_pipeline(PipelineConfig(**SMALL), outdir)
    assert result.completed
    return outdir


@pytest.mark.slow
def test_all_artifacts_and_nothing_else(run_dir: Path) -> None:
    assert {p.name for p in run_dir.iterdir()} == EXPECTED
    assert not list(run_dir.parent.glob(".out.*"))  # no staging folder left behind


def test_report_head_table_matches_validate_and_benchmark(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    rows = {r["variant"]: r for r in report["summary"]}
    assert list(rows) == ["PyTorch eager", "ONNX FP32", "ONNX simplified", "ONNX INT8"]
    validate = {r["model"]: r for r in report["stages"]["validate"]["rows"]}
    bench = {(r["model"], r["batch"]): r for r in report["stages"]["benchmark"]["rows"]}
    for variant, file in (
        ("ONNX FP32", "model.onnx"),
        ("ONNX simplified", "model.sim.onnx"),
        ("ONNX INT8", "model.int8.onnx"),
    ):
        row = rows[variant]
        assert row["top1_agreement"] == validate[file]["parity"]["top1_agreement"]
        assert row["accuracy"] == validate[file]["accuracy"]["top1"]
        assert row["p50_ms"] == bench[(file, 1)]["latency"]["p50_ms"]
        assert row["p99_ms"] == bench[(file, 1)]["latency"]["p99_ms"]
        assert row["speedup_vs_onnx_fp32"] == bench[(file, 1)]["speedup"]
        assert row["size_bytes"] == (run_dir / file).stat().st_size
        assert row["ran_on"] == "cpu"
    assert rows["ONNX FP32"]["top1_agreement"] == 1.0 and rows["ONNX INT8"]["top1_agreement"] >= 0.99
    assert rows["PyTorch eager"]["p50_ms"] == bench[("pytorch", 1)]["latency"]["p50_ms"]


def test_plots_show_the_reported_numbers(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    plots = report["plots"]
    bench = {(r["model"], r["batch"]): r for r in report["stages"]["benchmark"]["rows"]}
    assert plots["latency"]["series"]["ONNX INT8 (cpu)"] == bench[("model.int8.onnx", 1)]["latency"]["samples_ms"]
    points = {p["label"]: p for p in plots["accuracy_latency"]["points"]}
    summary = {r["variant"]: r for r in report["summary"]}
    assert points["ONNX INT8 (cpu)"]["p50_ms"] == summary["ONNX INT8"]["p50_ms"]
    assert points["ONNX INT8 (cpu)"]["value"] == summary["ONNX INT8"]["accuracy"]
    assert plots["ops"]["before"] == report["stages"]["simplify"]["ops_before"]
    assert set(plots["files"].values()) == {"latency.png", "accuracy_vs_latency.png", "ops_before_after.png"}
    for name in plots["files"].values():
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_json_is_what_its_document_writes(run_dir: Path) -> None:
    """report.json is written through the schema it is read with: read and written again, it is the same JSON."""
    from resnet_edge.pipeline.document import ReportDocument

    stored = json.loads((run_dir / "report.json").read_text())
    assert json.dumps(ReportDocument.from_json(stored).to_json()) == json.dumps(stored)


def test_report_records_what_makes_the_run_repeatable(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "complete" and report["config"]["weights"] == "builtin:digits-resnet20"
    assert report["config"]["iterations"] == 5 and report["seeds"]["calibration_subset"] == 0
    assert set(report["file_sha256"]) == {"model.onnx", "model.sim.onnx", "model.int8.onnx", "model.tuned.onnx"}
    assert report["environment"]["cpu"]["features"] and report["environment"]["packages"]["onnxruntime"]
    html = (run_dir / "report.html").read_text()
    assert "<table>" in html and 'src="latency.png"' in html and "ONNX INT8" in html
    assert "| ONNX INT8 |" in (run_dir / "report.md").read_text()
    assert "- ONNX INT8 on cpu: cpu: " in (run_dir / "report.md").read_text()  # where each node ran
    assert "- ONNX INT8 on cpu: integer: 100.0% of" in (run_dir / "report.md").read_text()  # INT8 kernels
    assert "<h2>INT8 kernels</h2>" in html
    assert "Speed-up: ONNX FP32" in html


def _assert_paths_are_relative_and_exist(report: dict, folder: Path) -> None:
    """Every string in the report that names a file names one beside the report, by a relative path."""
    found = []

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(k)
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            assert ".partial" not in value and "resnet-edge-weights-" not in value, value
            if value.endswith((".onnx", ".json", ".png")) and " " not in value:
                assert not Path(value).is_absolute(), value
                found.append(value)
                assert (folder / value).exists(), value

    walk(report)
    assert found


def test_report_paths_are_relative_to_the_report_and_exist(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    _assert_paths_are_relative_and_exist(report, run_dir)
    assert report["stages"]["validate"]["rows"][0]["path"] == "model.onnx"
    # Issue 21: no record beside the report, and no model's metadata, points into the staging folder it was built in.
    for written in run_dir.iterdir():
        assert b".partial" not in written.read_bytes(), written.name
    assert json.loads((run_dir / "model.tuned.onnx.json").read_text())["model"] == "model.sim.onnx"
    # The manifest lists every file the run wrote, with its hash: what a later --overwrite may remove, and no more.
    manifest = json.loads((run_dir / ".resnet-edge-pipeline").read_text())["files"]
    assert set(manifest) == {p.name for p in run_dir.iterdir()} - {".resnet-edge-pipeline"}
    assert manifest["model.onnx"] == report["file_sha256"]["model.onnx"]


def test_report_records_resolved_configuration_and_where_it_came_from(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    config, sources = report["config"], report["config_sources"]
    assert set(config) == set(sources) == set(option_keys())
    for key in ("arch", "calib", "data", "threads", "variant", "input_size", "per_channel", "format"):
        assert config[key] is not None, key
    assert config["arch"] == "resnet20" and sources["arch"] == "checkpoint"
    assert config["calib"] == "builtin:digits-calib" and config["data"] == "builtin:digits-test"
    assert config["threads"] == 1 and sources["threads"] == "argument" and sources["opset"] == "default"
    assert config["batch"] == [1, 4] and "auto" in sources["target"]
    assert "<th>From</th>" in (run_dir / "report.html").read_text()


def test_the_pipeline_shows_the_batchnorm_fold(run_dir: Path) -> None:
    """model.onnx keeps PyTorch's BatchNorms; the simplify stage folds every one, and the ops plot shows it."""
    report = json.loads((run_dir / "report.json").read_text())
    simplify = report["stages"]["simplify"]
    assert simplify["batch_norm_before"] == 21 == report["stages"]["export"]["op_counts"]["BatchNormalization"]
    assert simplify["batch_norm_remaining"] == [] and report["plots"]["ops"]["after"].get("BatchNormalization", 0) == 0
    assert report["plots"]["ops"]["before"]["BatchNormalization"] == 21


def test_inputs_are_checked_before_the_first_stage(tmp_path: Path) -> None:
    for values, error, match in (
        ({"calib": str(tmp_path / "missing")}, InputFileError, "calib: .*not found"),
        ({"data": str(tmp_path / "missing")}, InputFileError, "data: .*not found"),
        ({"weights": str(tmp_path / "missing.pt")}, InputFileError, "missing.pt"),
        ({"weights": "builtin:nope"}, OptionError, "unknown built-in checkpoint"),
    ):
        with pytest.raises(error, match=match):
            run_pipeline(PipelineConfig(**SMALL, **values), tmp_path / "out")
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_every_option_is_a_config_key_with_help() -> None:
    command = main.commands["pipeline"]
    not_keys = {"config_file", "outdir", "overwrite", "as_json", "help"}
    options = {p.name: p for p in command.params if p.name not in not_keys}
    assert set(options) == set(option_keys())
    for name, param in options.items():
        assert param.help and len(param.help) > 10, name
    assert "skips" in options["torch_eager"].help


def test_a_config_file_list_may_be_written_as_on_the_command_line(tmp_path: Path) -> None:
    from resnet_edge.pipeline.config import make_config

    config = tmp_path / "p.toml"
    config.write_text('batch = "1,4"\nstrict-ep = true\ntorch_eager = false\n')
    loaded = load_config(config)
    assert loaded.batch_sizes == (1, 4) == make_config({"batch": "1,4"}).batch_sizes
    assert loaded.strict_ep is True and loaded.torch_eager is False
    assert loaded.origins["batch_sizes"] == "config file p.toml"
    assert load_config(config, batch="8").origins["batch_sizes"] == "flag"
    with pytest.raises(OptionError, match="batch must be list of integers"):
        make_config({"batch": "1,x"})


@pytest.mark.slow
def test_refuses_an_existing_outdir_unless_overwrite(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="exists and is not empty; pass --overwrite"):
        run_pipeline(PipelineConfig(**SMALL), run_dir)
    old = tmp_path / "old"
    old.mkdir()
    (old / "stale.onnx").write_text("from another run")
    with pytest.raises(OptionError, match="not made by resnet-edge pipeline"):
        run_pipeline(PipelineConfig(**SMALL, int8=False, tune=False), old, overwrite=True)
    assert (old / "stale.onnx").read_text() == "from another run"
    (old / ".resnet-edge-pipeline").write_text("made by an earlier run")  # an older release's marker: no file list
    with pytest.raises(OptionError, match="no file list in its"):
        run_pipeline(PipelineConfig(**SMALL, int8=False, tune=False), old, overwrite=True)
    (old / "model.int8.onnx").write_text("an earlier run's INT8 model")
    write_manifest(old)  # as an earlier run leaves it: stale.onnx and model.int8.onnx listed with their hashes
    (old / "notes.txt").write_text("the user's")
    with pytest.raises(OptionError, match="holds notes.txt, not written by the earlier run"):
        run_pipeline(PipelineConfig(**SMALL, int8=False, tune=False), old, overwrite=True)
    (old / "notes.txt").unlink()
    run_pipeline(PipelineConfig(**SMALL, int8=False, tune=False), old, overwrite=True)
    names = {p.name for p in old.iterdir()}
    assert "stale.onnx" not in names and "model.int8.onnx" not in names and "model.sim.onnx" in names


@pytest.mark.slow
def test_a_failing_stage_is_named_and_earlier_artifacts_stay(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputFileError, match="no images"):  # a source that cannot work is refused before any stage
        run_pipeline(PipelineConfig(**SMALL, calib=str(empty)), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    wrong_size = tmp_path / "wrong.npy"  # opens fine; only the quantize stage finds it does not fit the model
    np.save(wrong_size, np.zeros((8, 3, 16, 16), np.float32))
    with pytest.raises(StageError, match=r"^quantize: .*float arrays .* \(kept in .*: model.onnx, model.sim.onnx"):
        run_pipeline(PipelineConfig(**SMALL, calib=str(wrong_size)), tmp_path / "out")
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"model.onnx", "model.sim.onnx", "report.json"} <= names and "model.int8.onnx" not in names
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "stopped at quantize" and "float arrays" in report["error"]
    # No timings, so no speed-up column to explain.
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Speed-up:" not in html and "Speed-up:" not in (tmp_path / "out" / "report.md").read_text()
    _assert_paths_are_relative_and_exist(report, tmp_path / "out")


@pytest.mark.slow
def test_ctrl_c_publishes_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(PipelineConfig(**SMALL), tmp_path / "out", stages=[FailingStage("simplify", KeyboardInterrupt())])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_config_file_and_cli(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.toml"
    config.write_text("[pipeline]\niterations = 3\nwarmup = 0\nbatch_sizes = [1]\nint8 = false\nthreads = 1\n")
    loaded = load_config(config, iterations=4)
    assert loaded.iterations == 4 and loaded.int8 is False and loaded.batch_sizes == (1,)
    config.write_text("iterations = 3\ncolour = 'blue'\n")
    with pytest.raises(OptionError, match="unknown option"):
        load_config(config)
    config.write_text("iterations = 2\nwarmup = 0\nbatch_sizes = [1]\nint8 = false\nthreads = 1\ntune = false\n")
    result = CliRunner().invoke(main, ["pipeline", "--config", str(config), "-o", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert (
        "[export] done" in result.output and "[benchmark] done" in result.output and "ONNX simplified" in result.output
    )
    assert "[tune]" not in result.output and "deployment:" not in result.output  # tune = false skips the stage
    assert not (tmp_path / "cli" / "model.tuned.onnx").exists()
    skipped = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert skipped["deployment"] is None and skipped["stages"]["tune"] is None
    assert skipped["config"]["tune"] is False and skipped["config_sources"]["tune"] == "config file pipeline.toml"
    again = CliRunner().invoke(main, ["pipeline", "--config", str(config), "-o", str(tmp_path / "cli")])
    assert again.exit_code == 2 and "error: " in again.output and "--overwrite" in again.output


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"batch_sizes": ["x"]}, "batch_sizes must be list of integers"),
        ({"providers": 5}, "providers must be list of strings"),
        ({"iterations": "fifty"}, "iterations must be int"),
        ({"batch_sizes": [1, 0]}, "batch sizes must be at least 1"),
        ({"method": "median"}, "method 'median' is not one of"),
    ],
)
def test_config_values_are_checked_before_any_stage(values: dict, match: str) -> None:
    from resnet_edge.pipeline.config import make_config

    with pytest.raises(OptionError, match=match):
        make_config(values)


def test_the_stages_are_the_reports_in_its_order_and_a_stranger_is_refused(tmp_path: Path) -> None:
    """The stages a run drives are those the report records, in order; a replacement must name one of them."""
    from resnet_edge.pipeline.result import STAGES as REPORTED
    from resnet_edge.pipeline.stages import STAGES

    assert tuple(stage.name for stage in STAGES) == REPORTED
    with pytest.raises(ValueError, match="no pipeline stage is named quantise"):
        run_pipeline(PipelineConfig(**SMALL), tmp_path / "out", stages=[FailingStage("quantise", RuntimeError())])
    assert not (tmp_path / "out").exists()


def test_the_current_folder_is_never_an_outdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OptionError, match="holds the current folder"):
        run_pipeline(PipelineConfig(**SMALL), ".")


@pytest.mark.slow
def test_random_weights_are_said_out_loud(tmp_path: Path) -> None:
    from resnet_edge.models.checkpoints import read_checkpoint_metadata
    from resnet_edge.onnx.metadata import RANDOM_INIT

    exported = []

    class Stop:
        name = "export"

        def run(self, source: str, *args: object) -> None:
            # The fresh weights say so in their file: the exported model records random init, and quantize judges it
            # by logit error instead of noise-level agreement.
            exported.append(read_checkpoint_metadata(source).get("weights"))
            raise InputFileError("stopped here on purpose")

    with (
        pytest.warns(ResnetEdgeWarning, match="resnet20 has random weights .* seed 3.* measure noise"),
        pytest.raises(StageError, match="stopped here"),
    ):
        run_pipeline(PipelineConfig(**SMALL, arch="resnet20", seed=3), tmp_path / "out", stages=[Stop()])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["config"]["weights"] == "random init (seed 3)" and exported == [RANDOM_INIT]


@pytest.mark.slow
def test_a_random_model_missing_the_int8_bar_is_told_the_likely_cause(tmp_path: Path) -> None:
    """quantize judges INT8 on validate's bar; on random weights its failure names the likely cause."""
    from resnet_edge.errors import CheckFailedError

    # a random model's real miss takes minutes
    misses = CheckFailedError("INT8 model misses validate's bar on 13 held-out images: top-1 agreement 92.31%")
    config = PipelineConfig(arch="resnet20", torch_eager=False, **SMALL)
    with pytest.warns(ResnetEdgeWarning, match="random weights"), pytest.raises(StageError) as caught:
        run_pipeline(config, tmp_path / "out", stages=[FailingStage("quantize", misses)])
    assert str(caught.value).startswith("quantize: INT8 model misses") and "likely cause: the model has random" in str(
        caught.value
    )


def test_the_default_run_tunes_and_reports_the_deployment(run_dir: Path) -> None:
    """tune runs by default on model.sim.onnx; the quantize stage's INT8 model is one of its candidates, not redone."""
    import onnx

    from resnet_edge.onnx.metadata import read_record

    report = json.loads((run_dir / "report.json").read_text())
    deployment, tune = report["deployment"], report["stages"]["tune"]
    assert deployment["file"] == "model.tuned.onnx" and deployment["provider"] == "cpu"
    assert deployment["parity"] == "pass" and deployment["batch"] == 4 and deployment["speedup_vs_cpu_fp32"] > 0
    assert tune["batch_sizes"] == [1, 4] and tune["threads"] == 1 and report["stage_seconds"]["tune"] > 0
    by_name = {c["name"]: c for c in tune["candidates"]}
    assert by_name["fp32"]["path"] == "model.sim.onnx"
    target = report["config"]["target"]
    reused = by_name[f"int8 {target} qdq"]  # the quantize stage's file, not quantized again
    assert reused["path"] == ("model.tuned.onnx" if reused["name"] == deployment["candidate"] else "model.int8.onnx")
    # fp32, QDQ, QOperator and per-tensor QDQ (issue 24) on x86
    assert len(by_name) == len(tune["candidates"]) == (4 if target.startswith("x86") else 2)
    assert all(c["passed"] for c in tune["candidates"] if c["name"] == deployment["candidate"])
    chosen = next(c for c in tune["candidates"] if c["name"] == deployment["candidate"])
    assert chosen["p50_ms"]["4"] <= 1.03 * min(c["p50_ms"]["4"] for c in tune["candidates"] if c["passed"])
    record = json.loads((run_dir / "model.tuned.onnx.json").read_text())
    assert record["chosen"]["name"] == deployment["candidate"]
    assert read_record(onnx.load(run_dir / "model.tuned.onnx"), "deployment")["name"] == deployment["candidate"]
    md, html = (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()
    assert f"Chosen: {deployment['candidate']} on cpu (model.tuned.onnx)" in md
    section = md.split("## Deployment (tune)")[1].split("## ")[0]
    assert section.count("| cpu | cpu | ") == len(tune["candidates"]) and section.count("◀") == 1
    assert "<h2>Deployment (tune)</h2>" in html


def test_a_failing_tune_is_a_failing_stage(tmp_path: Path) -> None:
    from resnet_edge.errors import CheckFailedError

    # a real miss needs a broken quantizer
    none_passed = CheckFailedError("no candidate passed parity against FP32: int8 on cpu: top-1 agreement 90.00%")
    config = PipelineConfig(**{**SMALL, "iterations": 1, "batch_sizes": (1,)}, torch_eager=False, int8=False)
    with pytest.raises(StageError, match=r"^tune: no candidate passed parity .*\(kept in .*model.sim.onnx"):
        run_pipeline(config, tmp_path / "out", stages=[FailingStage("tune", none_passed)])
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"model.onnx", "model.sim.onnx", "report.json", ".resnet-edge-pipeline"} <= names
    assert "model.tuned.onnx" not in names
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "stopped at tune" and report["deployment"] is None
    assert report["stages"]["benchmark"]["rows"]  # the stages before it are all in the report
