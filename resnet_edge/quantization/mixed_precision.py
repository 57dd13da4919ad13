"""Accuracy-aware mixed precision: keep the blocks INT8 hurts most in FP32, fewest first, until a target holds.

The rule, precisely:

1. Calibrate once (:func:`resnet_edge.quantization.calibrate.calibrate_onnx`); every step below reuses those ranges,
   since the ranges do not depend on which nodes stay FP32.
2. Step 0 quantizes everything the user did not ``--exclude`` and judges it on the held-out images. Target met: stop.
3. Otherwise rank the blocks that step 0 quantized by isolated sensitivity
   (:mod:`resnet_edge.quantization.sensitivity`: the logit SQNR of the FP32 model with only that block INT8; lowest
   first, ties in execution order). Step k keeps the k highest-ranked blocks in FP32 (on top of the user's exclusions),
   k = 1, 2, ..., n - 1, and stops at the first k whose model meets the target. So the result has the fewest FP32 blocks
   of any prefix of the ranking.
4. With n - 1 blocks in FP32 and the target still missed, the search fails with :class:`TargetMissedError`: keeping
   all n in FP32 would leave no INT8 block, which is not a quantization, so it never counts as meeting the target.

The target is judged on the same held-out images that rank the blocks and pick the stopping step; for an unbiased
final number, validate the result on a third set (``resnet-edge validate --data``).

Latency: every step's model is timed side by side with the FP32 model in one interleaved run at the end (batch 1,
CPU), since timings taken minutes apart on a shared machine do not compare.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import onnx

from resnet_edge.artifacts import refuse_overwriting_inputs, require_writable_destination
from resnet_edge.calibration.sources import open_source
from resnet_edge.errors import CheckFailedError
from resnet_edge.onnx.io import load_onnx
from resnet_edge.onnx.metadata import preprocessing_for
from resnet_edge.progress import ProgressCallback
from resnet_edge.quantization.calibrate import Calibration, calibrate_onnx
from resnet_edge.quantization.evaluate import SPEED_ITERATIONS, SpeedComparison, median_latencies_ms
from resnet_edge.quantization.options import AccuracyGoal, QuantizeOptions
from resnet_edge.quantization.quantize import QuantizeResult, quantize_onnx
from resnet_edge.quantization.record import (
    MixedPrecisionRecord,
    QuantizationRecord,
    RankedBlock,
    SearchStepRecord,
    write_quantized,
)
from resnet_edge.quantization.sensitivity import DEFAULT_IMAGES, SensitivityOptions, analyze_quantization

SPEED_WARMUP = 5

T = TypeVar("T")


class TargetMissedError(CheckFailedError):
    """No mixed-precision model with at least one INT8 block met the accuracy target."""


@dataclass(frozen=True)
class BlockSensitivity:
    block: str
    sensitivity_db: float  # logit SQNR with only this block INT8: lower costs more accuracy
    isolated_top1_agreement: float | None
    exclude: list[str]  # --exclude items that keep it in FP32


@dataclass(frozen=True)
class SearchStep:
    """One model the search tried.

    Attributes:
        step: number of ranked blocks kept in FP32.
        fp32_blocks: those blocks, most sensitive first.
        exclude: every ``--exclude`` item of this model (the user's, then the blocks').
        fp32_nodes: compute nodes left in FP32.
        p50_ms, speedup: batch-1 median latency and FP32 p50 over it, from the side-by-side timing (None when
            timing is off).
    """

    step: int
    fp32_blocks: list[str]
    exclude: list[str]
    fp32_nodes: list[str]
    top1_agreement: float
    fp32_top1: float | None
    int8_top1: float | None
    top1_drop_points: float | None
    met: bool
    p50_ms: float | None = None
    speedup: float | None = None


@dataclass(frozen=True)
class MixedPrecisionResult:
    """The chosen model (written like :func:`quantize_onnx` writes one) and every step that led to it.

    Attributes:
        quantize: the chosen step's result; its file and sidecar record the search under ``mixed_precision``.
        exclude: the ``--exclude`` items that reproduce the chosen model with ``resnet-edge quantize``.
        ranking: the blocks step 0 quantized, most sensitive first (empty when step 0 met the target).
        fp32_p50_ms: the FP32 model's median latency in the same timing run as the steps.
    """

    target: AccuracyGoal
    quantize: QuantizeResult
    steps: list[SearchStep]
    ranking: list[BlockSensitivity]
    exclude: list[str]
    fp32_p50_ms: float | None
    timing_iterations: int | None
    seconds: float

    @property
    def fp32_blocks(self) -> list[str]:
        return self.steps[-1].fp32_blocks

    def record(self) -> QuantizationRecord:
        """The chosen model's calibration record, with the search under ``mixed_precision``."""
        search = MixedPrecisionRecord(
            target=self.target,
            ranking=tuple(RankedBlock(r.block, _finite(r.sensitivity_db), tuple(r.exclude)) for r in self.ranking),
            steps=tuple(
                SearchStepRecord(
                    step=s.step,
                    fp32_blocks=tuple(s.fp32_blocks),
                    top1_agreement=s.top1_agreement,
                    top1_drop_points=s.top1_drop_points,
                    p50_ms=s.p50_ms,
                    met=s.met,
                )
                for s in self.steps
            ),
            exclude=tuple(self.exclude),
        )
        return replace(self.quantize.record(), mixed_precision=search)


def search_prefixes(
    evaluate: Callable[[list[str]], T],
    met: Callable[[T], bool],
    rank: Callable[[T], Sequence[str]],
    *,
    describe: Callable[[T], str] = str,
) -> list[tuple[list[str], T]]:
    """The stopping rule, apart from quantization (see the module docstring).

    Args:
        evaluate: builds and judges the model that keeps the given blocks in FP32.
        met: whether an outcome meets the target.
        rank: from step 0's outcome, the blocks it quantized, most sensitive first.
        describe: an outcome in words, for the failure message.

    Returns:
        Every step tried, as (blocks kept in FP32, outcome); the last one met the target.

    Raises:
        TargetMissedError: no step with at least one INT8 block met the target.
    """
    first = evaluate([])
    steps = [([], first)]
    if met(first):
        return steps
    ranking = list(rank(first))
    for k in range(1, len(ranking)):
        kept = ranking[:k]
        outcome = evaluate(kept)
        steps.append((kept, outcome))
        if met(outcome):
            return steps
    best = steps[-1][1]
    raise TargetMissedError(
        f"no model with an INT8 block meets the target: with {len(steps) - 1} of {len(ranking)} quantized blocks"
        f" in FP32 {describe(best)}"
    )


def quantize_mixed_precision(
    source: Path | str,
    output: Path | str,
    options: QuantizeOptions | None = None,
    *,
    goal: AccuracyGoal,
    on_progress: ProgressCallback | None = None,
    on_step: Callable[[SearchStep], object] | None = None,
    analysis_images: int = DEFAULT_IMAGES,
) -> MixedPrecisionResult:
    """Quantize, and keep the most sensitive blocks in FP32, fewest first, until ``goal`` holds.

    Args:
        source: the FP32 (simplified) model.
        output: where the chosen INT8 model goes, with its record beside it (``output + ".json"``).
        goal: what the quantized model must keep.
        on_progress: as for :func:`quantize_onnx` (the one calibration).
        options: as for :func:`quantize_onnx`; ``exclude`` is kept in FP32 at every step, ``measure_speed`` turns
            the side-by-side timing of the steps on or off.
        on_step: called with each step as soon as it is judged (before timing).
        analysis_images: held-out images the blocks are ranked on.

    Returns:
        The chosen model, written to ``output`` with its sidecar, both atomically; nothing is written on failure.

    Raises:
        OptionError: a bad target, a top-1 drop target without labels, or see :func:`quantize_onnx`.
        TargetMissedError: the target holds for no model with an INT8 block.
        InputFileError, CheckFailedError: see :func:`quantize_onnx`.
    """
    started = time.perf_counter()
    goal.check()
    model_path = Path(source)
    output = require_writable_destination(output)
    sidecar = require_writable_destination(Path(f"{output}.json"))
    options = options or QuantizeOptions()
    refuse_overwriting_inputs(
        [output, sidecar], [model_path, options.calib, options.eval_data], command="quantize output"
    )
    fp32 = load_onnx(model_path)
    with tempfile.TemporaryDirectory(prefix="resnet-edge-mixed-") as tmp:
        calibration = calibrate_onnx(model_path, tmp, options, on_progress=on_progress)
        search = _Search(model_path, Path(tmp), fp32, options, calibration, goal, on_step, analysis_images)
        tried = search_prefixes(search.evaluate, goal.met_by, search.rank, describe=lambda r: _describe(r, goal))
        steps = [_step(blocks, result, goal, search.exclusions(blocks)) for blocks, result in tried]
        fp32_p50, iterations = None, None
        if options.measure_speed:
            fp32_p50, p50s, iterations = _time_side_by_side(fp32, [r for _, r in tried])
            steps = [replace(s, p50_ms=p, speedup=fp32_p50 / p) for s, p in zip(steps, p50s, strict=True)]
        chosen = tried[-1][1]
        result = MixedPrecisionResult(
            target=goal,
            quantize=replace(chosen, output=output, sidecar=sidecar, speed=_speed(fp32_p50, steps, iterations)),
            steps=steps,
            ranking=search.ranking,
            exclude=steps[-1].exclude,
            fp32_p50_ms=fp32_p50,
            timing_iterations=iterations,
            seconds=0.0,
        )
        size = write_quantized(onnx.load(str(chosen.output)), output, sidecar, result.record())

    seconds = time.perf_counter() - started
    return replace(result, quantize=replace(result.quantize, bytes_after=size, seconds=seconds), seconds=seconds)


@dataclass
class _Search:
    """The search's steps: each quantizes with the one calibration, keeping the given blocks in FP32; step 0's model
    ranks the blocks (:func:`analyze_quantization`)."""

    model_path: Path
    folder: Path
    fp32: onnx.ModelProto
    options: QuantizeOptions
    calibration: Calibration
    goal: AccuracyGoal
    on_step: Callable[[SearchStep], object] | None
    analysis_images: int
    by_block: dict[str, list[str]] = field(default_factory=dict)  # block -> the --exclude items keeping it in FP32
    ranking: list[BlockSensitivity] = field(default_factory=list)  # filled by rank()

    def exclusions(self, blocks: list[str]) -> list[str]:
        """The user's ``--exclude`` items, then those of ``blocks``."""
        return list(dict.fromkeys([*self.options.exclude, *(item for b in blocks for item in self.by_block[b])]))

    def evaluate(self, blocks: list[str]) -> QuantizeResult:
        """The model with ``blocks`` in FP32, judged on the held-out images."""
        # Every step is judged by the search's own target, not by quantize's default bar.
        step_options = replace(
            self.options, exclude=tuple(self.exclusions(blocks)), measure_speed=False, allow_accuracy_drop=True
        )
        output = self.folder / f"step{len(blocks)}.onnx"
        result = quantize_onnx(self.model_path, output, step_options, calibration=self.calibration)
        if self.on_step is not None:
            self.on_step(_step(blocks, result, self.goal, self.exclusions(blocks)))
        return result

    def rank(self, first: QuantizeResult) -> list[str]:
        """The blocks ``first`` quantized, most sensitive first."""
        analysis = analyze_quantization(
            self.fp32,
            onnx.load(str(first.output)),
            SensitivityOptions(
                data=first.evaluation_source,
                label_map=self.options.label_map,
                limit=self.analysis_images,
                seed=self.options.seed,
            ),
        )
        for name in analysis.ranking:
            block = analysis.block(name)
            self.by_block[name] = block.exclude
            self.ranking.append(
                BlockSensitivity(name, block.sensitivity_db, block.isolated_top1_agreement, block.exclude)
            )
        return analysis.ranking


def _speed(fp32_p50: float | None, steps: list[SearchStep], iterations: int | None) -> SpeedComparison | None:
    """The chosen model's speed against FP32, from the side-by-side timing; None when timing was off."""
    if fp32_p50 is None:
        return None
    return SpeedComparison(
        fp32_p50_ms=fp32_p50, int8_p50_ms=steps[-1].p50_ms, iterations=iterations, threads=_threads()
    )


def _step(blocks: list[str], result: QuantizeResult, target: AccuracyGoal, exclude: list[str]) -> SearchStep:
    return SearchStep(
        step=len(blocks),
        fp32_blocks=list(blocks),
        exclude=exclude,
        fp32_nodes=result.fp32_nodes,
        top1_agreement=result.parity.top1_agreement,
        fp32_top1=result.fp32_accuracy.top1 if result.fp32_accuracy else None,
        int8_top1=result.int8_accuracy.top1 if result.int8_accuracy else None,
        top1_drop_points=result.top1_drop_points,
        met=target.met_by(result),
    )


def _describe(result: QuantizeResult, target: AccuracyGoal) -> str:
    text = f"top-1 agreement is {100 * result.parity.top1_agreement:.2f}%"
    if result.top1_drop_points is not None:
        text += f" and the top-1 drop {result.top1_drop_points:.2f} points"
    return f"{text}; the target is {target.describe()}"


def _time_side_by_side(fp32: onnx.ModelProto, results: Sequence[QuantizeResult]) -> tuple[float, list[float], int]:
    """Median latency of FP32 and of each step's model, interleaved in one run (one real image)."""
    image = open_source(results[0].evaluation_source, classes=None).load(0, preprocessing_for(fp32)).tensor
    models = [fp32, *(onnx.load(str(r.output)) for r in results)]
    p50, _ = median_latencies_ms(models, image, warmup=SPEED_WARMUP, iterations=SPEED_ITERATIONS)
    return p50[0], p50[1:], SPEED_ITERATIONS


def _threads() -> int:
    from resnet_edge.timing import default_threads

    return default_threads()


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
