"""benchmarks/calibration.py in its short mode: every runner in its own process, wall time and peak memory."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "calibration.py"


@pytest.mark.slow
def test_short_mode_times_each_runner_in_its_own_process(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--short",
            "--repeats",
            "1",
            "--workdir",
            str(tmp_path),
            "--json",
            str(report_file),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(report_file.read_text())
    assert report["calibration_images"] == 18 and report["held_out_images"] == 6
    runners = ["resnet-edge", "onnxruntime"] + (["nncf"] if importlib.util.find_spec("nncf") else [])
    for runner in runners:
        (run,) = report["runs"][runner]
        assert "error" not in run and run["wrote"], (runner, run)
        # A process that imported onnxruntime and ran a model: tens of MB at least, far from this test's own size.
        assert run["wall_s"] > 0 and 50 < run["peak_rss_mb"] < 4096, (runner, run)
    if "nncf" not in runners:
        assert "nncf not installed" in report["skipped"]["nncf"]
    assert "| quantizing resnet20 at 32x32, random weights on the same 18 calibration images |" in done.stdout
    assert done.stdout.count(" GiB |") == len(runners)
