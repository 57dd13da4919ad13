"""The degradation experiment's short mode: the same code as the full run, on a few hundred images."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from resnet_edge.calibration.sources import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_the_short_mode_trains_the_four_networks_and_draws_them(tmp_path: Path, monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location("degradation", ROOT / "benchmarks" / "degradation.py")
    degradation = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "degradation", degradation)  # dataclasses look their module up there
    spec.loader.exec_module(degradation)
    lines: list[str] = []
    data = degradation.run(degradation.SHORT, tmp_path, log=lines.append)
    assert (tmp_path / "degradation.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "degradation.json").read_text()) == json.loads(json.dumps(data))
    networks = data["networks"]
    assert list(networks) == ["plain-20", "plain-56", "ResNet-20", "ResNet-56"]
    for label, record in networks.items():
        assert len(record["epochs"]) == degradation.SHORT.epochs, label
        assert 0 <= record["epochs"][0]["train_error"] <= 1 and 0 <= record["epochs"][0]["test_error"] <= 1
        blocks = 9 if label.endswith("20") else 27
        assert all(len(record["gradflow"][m]["blocks"]) == blocks for m in ("init", "trained"))
    # gradflow at initialisation: without skips the gradient's scale grows exponentially toward the input.
    init = {label: record["gradflow"]["init"]["first_to_last"] for label, record in networks.items()}
    assert init["plain-56"] > 10 * init["ResNet-56"]
    assert data["comparisons"]["epochs"] == degradation.SHORT.epochs
    assert sum(line.startswith("plain-56: epoch 1") for line in lines) == 1
