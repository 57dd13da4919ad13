"""Accuracy-aware mixed precision: the stopping rule (with a fake evaluator), targets, and one real search."""

from __future__ import annotations

import json
import shlex
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from resnet_edge.calibration.sources import DIGITS_FILE
from resnet_edge.cli.convert import quantize
from resnet_edge.errors import CheckFailedError, OptionError
from resnet_edge.onnx.metadata import QUANTIZATION_KEY, read_record
from resnet_edge.quantization.mixed_precision import TargetMissedError, search_prefixes
from resnet_edge.quantization.options import AccuracyGoal, QuantizeOptions
from resnet_edge.quantization.quantize import quantize_onnx
from resnet_edge.quantization.record import QuantizationRecord

RANKING = ["layer2.0", "stem", "head", "layer1.0"]


class FakeModels:
    """Scores each set of FP32 blocks from a table; records what was evaluated and whether ranking was asked for."""

    def __init__(self, scores: dict[tuple[str, ...], float]) -> None:
        self.scores = scores
        self.evaluated: list[tuple[str, ...]] = []
        self.ranked = 0

    def evaluate(self, blocks: list[str]) -> float:
        self.evaluated.append(tuple(blocks))
        return self.scores[tuple(blocks)]

    def rank(self, first: float) -> list[str]:
        self.ranked += 1
        return RANKING


def prefixes(n: int) -> list[tuple[str, ...]]:
    return [tuple(RANKING[:k]) for k in range(n)]


def run(fake: FakeModels, threshold: float = 0.99) -> list[tuple[list[str], float]]:
    return search_prefixes(fake.evaluate, lambda score: score >= threshold, fake.rank)


def test_plain_int8_meeting_the_target_is_kept_without_ranking() -> None:
    fake = FakeModels({(): 0.995})
    assert run(fake) == [([], 0.995)]
    assert fake.evaluated == [()] and fake.ranked == 0


def test_most_sensitive_blocks_are_kept_fewest_first_until_the_target_holds() -> None:
    # Non-monotone on purpose: step 3 would also pass, step 1 does not; the search stops at step 2.
    fake = FakeModels(dict(zip(prefixes(4), [0.90, 0.97, 0.992, 0.999], strict=True)))
    steps = run(fake)
    assert [tuple(kept) for kept, _ in steps] == prefixes(3)
    assert fake.evaluated == prefixes(3) and fake.ranked == 1
    assert steps[-1] == (["layer2.0", "stem"], 0.992)


def test_missing_the_target_with_one_int8_block_left_fails() -> None:
    fake = FakeModels(dict(zip(prefixes(4), [0.5, 0.6, 0.7, 0.8], strict=True)))
    with pytest.raises(TargetMissedError, match=r"with 3 of 4 quantized blocks in FP32 0\.8") as caught:
        search_prefixes(fake.evaluate, lambda s: s >= 0.99, fake.rank, describe=str)
    assert isinstance(caught.value, CheckFailedError)  # a failed check: the CLI exits non-zero
    # All four in FP32 would leave no INT8 block: never tried, never counted as meeting the target.
    assert fake.evaluated == prefixes(4)


def test_a_single_quantized_block_that_misses_fails_at_once() -> None:
    fake = FakeModels({(): 0.5})
    with pytest.raises(TargetMissedError, match="0 of 1"):
        search_prefixes(fake.evaluate, lambda s: s >= 0.99, lambda first: ["fc"], describe=str)
    assert fake.evaluated == [()]


def result_like(agreement: float, drop: float | None) -> SimpleNamespace:
    return SimpleNamespace(
        parity=SimpleNamespace(top1_agreement=agreement), top1_drop_points=drop, evaluation_source="builtin:photos"
    )


def test_targets() -> None:
    both = AccuracyGoal(max_top1_drop=0.5, min_agreement=0.99)
    assert both.met_by(result_like(0.99, 0.5))
    assert not both.met_by(result_like(0.989, 0.0)) and not both.met_by(result_like(1.0, 0.51))
    assert AccuracyGoal(min_agreement=0.99).met_by(result_like(0.995, None))
    assert both.describe() == "top-1 drop <= 0.5 points and top-1 agreement >= 99%"
    with pytest.raises(OptionError, match="needs labelled held-out images"):
        AccuracyGoal(max_top1_drop=1.0).met_by(result_like(1.0, None))
    for bad, message in [
        (AccuracyGoal(), "give an accuracy target"),
        (AccuracyGoal(min_agreement=99), "fraction above 0 and at most 1"),
        (AccuracyGoal(max_top1_drop=-1), "percentage points, 0 to 100"),
    ]:
        with pytest.raises(OptionError, match=message):
            bad.check()


@pytest.fixture(scope="module")
def dim_calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits calibration split at 80% brightness: a camera that was under-exposed when calibrating.

    The input quantizer's range then clips real images: plain INT8 agrees with FP32 on ~95.5% of the test split.
    """
    with np.load(DIGITS_FILE) as archive:
        images = archive["images"][archive["calib_rows"]]
    path = tmp_path_factory.mktemp("dim") / "dim.npz"
    np.savez(path, images=(images * 0.8).round().astype(np.uint8))
    return path


@pytest.mark.slow
def test_search_wins_back_agreement_and_is_reproducible(
    digits_sim: Path, dim_calibration: Path, tmp_path: Path
) -> None:
    output = tmp_path / "mixed.onnx"
    args = [str(digits_sim), "-o", str(output), "--calib", str(dim_calibration), "--eval-data", "builtin:digits-test"]
    result = CliRunner().invoke(quantize, [*args, "--min-agreement", "0.99"])
    assert result.exit_code == 0, result.output
    record = json.loads(Path(f"{output}.json").read_text())
    assert read_record(onnx.load(str(output)), QUANTIZATION_KEY) == record
    assert QuantizationRecord.from_json(record).to_json() == record  # the search's record reads back the same
    search = record["mixed_precision"]
    steps = search["steps"]
    assert steps[0]["fp32_blocks"] == [] and steps[0]["top1_agreement"] < 0.99 and not steps[0]["met"]
    assert steps[-1]["met"] and steps[-1]["top1_agreement"] >= 0.99
    assert all(not s["met"] for s in steps[:-1]) and [s["step"] for s in steps] == list(range(len(steps)))
    assert steps[-1]["fp32_blocks"] == [r["block"] for r in search["ranking"][: len(steps) - 1]]
    assert all(s["p50_ms"] > 0 for s in steps)
    sensitivities = [r["sensitivity_db"] for r in search["ranking"]]
    assert sensitivities == sorted(sensitivities)
    assert search["ranking"][0]["block"] == "stem"  # the clipped input quantizer is the damage

    lines = result.output.splitlines()
    assert any(line.startswith("step  FP32 blocks") for line in lines)
    command = next(line.removeprefix("reproduce: ") for line in lines if line.startswith("reproduce: "))
    assert shlex.split(command)[:3] == ["resnet-edge", "quantize", str(digits_sim)]
    # The model meets quantize's default bar (the rebuild below passes it): no --allow-accuracy-drop (issue 21).
    assert "--allow-accuracy-drop" not in shlex.split(command)
    excluded = [v for k, v in zip(shlex.split(command), shlex.split(command)[1:], strict=False) if k == "--exclude"]
    assert excluded == search["exclude"] == ["conv1", "relu"]
    # Plain --exclude rebuilds the same model, calibrating afresh.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = quantize_onnx(
            digits_sim,
            tmp_path / "again.onnx",
            QuantizeOptions(
                calib=str(dim_calibration),
                eval_data="builtin:digits-test",
                exclude=tuple(excluded),
                measure_speed=False,
            ),
        )
    assert again.parity.top1_agreement == steps[-1]["top1_agreement"]
    assert again.fp32_nodes == record["fp32_nodes"] == ["/conv1/Conv"]
    rebuilt, chosen = onnx.load(str(again.output)), onnx.load(str(output))
    assert [n.name for n in rebuilt.graph.node] == [n.name for n in chosen.graph.node]
    weights = [{i.name: i.raw_data for i in model.graph.initializer} for model in (rebuilt, chosen)]
    assert weights[0] == weights[1]


@pytest.mark.filterwarnings("ignore:calibrating on only")
def test_target_that_needs_labels_on_unlabelled_data(digits_sim: Path, tmp_path: Path) -> None:
    output = tmp_path / "x.onnx"
    result = CliRunner().invoke(
        quantize,
        [
            str(digits_sim),
            "-o",
            str(output),
            "--eval-data",
            "builtin:photos",
            "--max-top1-drop",
            "1",
            "--no-speed",
            "--limit",
            "16",
        ],
    )
    assert isinstance(result.exception, OptionError) and "needs labelled held-out images" in str(result.exception)
    assert not output.exists() and list(tmp_path.iterdir()) == []  # nothing written
    bad = CliRunner().invoke(quantize, [str(digits_sim), "-o", str(output), "--min-agreement", "99"])
    assert isinstance(bad.exception, OptionError) and "such as 0.99" in str(bad.exception)
