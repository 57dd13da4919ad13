"""The one-command pipeline on small settings: artifacts, report content, failures and interruption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from resnet_edge import pipeline as pipeline_module
from resnet_edge.cli.main import main
from resnet_edge.errors import InputFileError, OptionError, StageError
from resnet_edge.pipeline import PipelineConfig, load_config, run_pipeline

SMALL = dict(iterations=5, warmup=1, batch_sizes=(1, 4), threads=1)
EXPECTED = {
    "model.onnx",
    "model.sim.onnx",
    "model.int8.onnx",
    "model.int8.onnx.json",
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


def test_report_records_what_makes_the_run_repeatable(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "complete" and report["config"]["weights"] == "builtin:digits-resnet20"
    assert report["config"]["iterations"] == 5 and report["seeds"]["calibration_subset"] == 0
    assert set(report["file_sha256"]) == {"model.onnx", "model.sim.onnx", "model.int8.onnx"}
    assert report["environment"]["cpu"]["features"] and report["environment"]["packages"]["onnxruntime"]
    html = (run_dir / "report.html").read_text()
    assert "<table>" in html and 'src="latency.png"' in html and "ONNX INT8" in html
    assert "| ONNX INT8 |" in (run_dir / "report.md").read_text()


def test_refuses_an_existing_outdir_unless_overwrite(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="exists and is not empty; pass --overwrite"):
        run_pipeline(PipelineConfig(**SMALL), run_dir)
    old = tmp_path / "old"
    old.mkdir()
    (old / "stale.onnx").write_text("from another run")
    with pytest.raises(OptionError, match="not made by resnet-edge pipeline"):
        run_pipeline(PipelineConfig(**SMALL, int8=False), old, overwrite=True)
    assert (old / "stale.onnx").read_text() == "from another run"
    (old / ".resnet-edge-pipeline").write_text("made by an earlier run")
    run_pipeline(PipelineConfig(**SMALL, int8=False), old, overwrite=True)
    names = {p.name for p in old.iterdir()}
    assert "stale.onnx" not in names and "model.int8.onnx" not in names and "model.sim.onnx" in names


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


def test_ctrl_c_publishes_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_module, "simplify_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(PipelineConfig(**SMALL), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_config_file_and_cli(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.toml"
    config.write_text("[pipeline]\niterations = 3\nwarmup = 0\nbatch_sizes = [1]\nint8 = false\nthreads = 1\n")
    loaded = load_config(config, iterations=4)
    assert loaded.iterations == 4 and loaded.int8 is False and loaded.batch_sizes == (1,)
    config.write_text("iterations = 3\ncolour = 'blue'\n")
    with pytest.raises(OptionError, match="unknown option"):
        load_config(config)
    config.write_text("iterations = 2\nwarmup = 0\nbatch_sizes = [1]\nint8 = false\nthreads = 1\n")
    result = CliRunner().invoke(main, ["pipeline", "--config", str(config), "-o", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert (
        "[export] done" in result.output and "[benchmark] done" in result.output and "ONNX simplified" in result.output
    )
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
    from resnet_edge.pipeline import make_config

    with pytest.raises(OptionError, match=match):
        make_config(values)


def test_the_current_folder_is_never_an_outdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OptionError, match="holds the current folder"):
        run_pipeline(PipelineConfig(**SMALL), ".")
