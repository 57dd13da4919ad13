"""Comparing two sets of logits: synthetic arrays, no model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from resnet_edge.onnx.parity import compare_outputs


def logits(rows: int = 6, classes: int = 10) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(rows, classes)).astype(np.float32)


def test_identical_outputs_agree_fully() -> None:
    ref = logits()
    parity = compare_outputs(ref, ref.copy())
    assert parity.samples == 6 and parity.top1_agreement == 1.0 and parity.top5_overlap == 1.0
    assert parity.max_abs_error == 0.0 and parity.non_finite == 0
    assert parity.cosine == pytest.approx(1.0) and parity.kl_divergence == pytest.approx(0.0, abs=1e-12)
    assert parity.within_fp32_tolerance(float(np.abs(ref).max()))


def test_one_flipped_top1() -> None:
    ref = logits()
    cand = ref.copy()
    row = cand[2]
    first, second = np.argsort(-row)[:2]
    row[first], row[second] = row[second], row[first]  # the runner-up becomes the top class in one row
    parity = compare_outputs(ref, cand)
    assert parity.top1_agreement == pytest.approx(5 / 6)
    assert parity.top5_overlap == 1.0  # the same five classes, in another order
    assert parity.max_abs_error > 0 and not parity.within_fp32_tolerance(float(np.abs(ref).max()))


def test_nan_rows_never_agree() -> None:
    ref = logits()
    cand = ref.copy()
    cand[0, 3] = np.nan
    parity = compare_outputs(ref, cand)
    assert parity.non_finite == 1 and parity.top1_agreement == pytest.approx(5 / 6)
    everything = compare_outputs(ref, np.full_like(ref, np.nan))
    assert everything.non_finite == 6 and everything.top1_agreement == 0.0 and math.isnan(everything.cosine)


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="logit shapes differ"):
        compare_outputs(logits(4), logits(5))


def test_random_weights_are_judged_by_logit_error_not_decisions() -> None:
    from resnet_edge.onnx.parity import RANDOM_WEIGHTS_MAX_STEPS, logit_error_shortfalls

    ref = logits(rows=20)
    step = 0.05
    close = ref + np.random.default_rng(1).uniform(-2 * step, 2 * step, ref.shape).astype(np.float32)
    parity = compare_outputs(ref, close)
    assert logit_error_shortfalls(parity, step) == [] and logit_error_shortfalls(parity, None) == []
    # Near-tied random logits flip under rounding: agreement falls, yet the logit error stays a few steps.
    tied = ref.copy()
    tied[:, 1] = tied.max(axis=1) + 0.01  # class 1 leads by a hair in every row
    flipped = tied.copy()
    flipped[:, 1] -= 0.02
    parity = compare_outputs(tied, flipped)
    assert parity.top1_agreement < 0.5 and logit_error_shortfalls(parity, step) == []
    # Ranges far off: the error is many steps and the cosine collapses.
    broken = compare_outputs(ref, ref * 0.1 + np.random.default_rng(2).normal(0, 1, ref.shape))
    misses = logit_error_shortfalls(broken, step)
    assert len(misses) == 2 and "worst logit cosine" in misses[0] and "output steps" in misses[1]
    assert logit_error_shortfalls(compare_outputs(ref, ref + (RANDOM_WEIGHTS_MAX_STEPS + 1) * step), step)
    assert logit_error_shortfalls(compare_outputs(ref, np.full_like(ref, np.nan)), step)
