"""How an INT8 model compares with its FP32 source: agreement and accuracy on held-out images, and speed, side by
side in one run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from resnet_edge.calibration.preprocess import PreprocessSpec
from resnet_edge.calibration.sources import ImageSource, iter_batches
from resnet_edge.errors import InputFileError
from resnet_edge.onnx.parity import Accuracy, Parity, accuracy, compare_outputs
from resnet_edge.onnx.providers import Provider
from resnet_edge.onnx.runtime import open_session
from resnet_edge.quantization.calibrate import CALIBRATION_BATCH
from resnet_edge.quantization.coverage import IntegerCoverage, integer_coverage
from resnet_edge.timing import default_threads, time_interleaved

SPEED_ITERATIONS = 30


@dataclass(frozen=True)
class SpeedComparison:
    fp32_p50_ms: float
    int8_p50_ms: float
    iterations: int
    threads: int

    @property
    def speedup(self) -> float:
        return self.fp32_p50_ms / self.int8_p50_ms


@dataclass(frozen=True)
class Evaluation:
    images: int
    overlap_excluded: int
    parity: Parity
    fp32_accuracy: Accuracy | None
    int8_accuracy: Accuracy | None
    first_image: np.ndarray = field(repr=False, metadata={"json": False})
    coverage: IntegerCoverage | None = None


def evaluate_against(
    fp32: onnx.ModelProto | Path,
    int8: onnx.ModelProto,
    source: ImageSource,
    indices: Sequence[int],
    spec: PreprocessSpec,
    *,
    exclude_hashes: set[str],
    provider: Provider = Provider.CPU,
    strict_ep: bool = False,
) -> Evaluation:
    """INT8 (on ``provider``) against FP32 (CPU) on held-out images, dropping any image whose hash was calibrated on.

    ``fp32`` may be the model's file: opened from there, its session spares a serialised copy (ResNet-50: 100 MB).

    Raises:
        InputFileError: no held-out image is left.
        ProviderError: ``strict_ep`` and the provider is missing or took only part of the compute ops.
    """
    fp32_session = open_session(fp32, audit=False)  # the reference: where it runs is not in question
    int8_session = open_session(int8, provider, strict=strict_ep)
    batch = fp32_session.fixed_batch or CALIBRATION_BATCH
    ref, cand, labels = [], [], []
    dropped = 0
    first_image = np.empty(0)
    for _, samples in iter_batches(source, spec, list(indices), batch):
        kept = [s for s in samples if s.sha256 not in exclude_hashes]
        dropped += len(samples) - len(kept)
        if not kept:
            continue
        x = np.stack([s.tensor for s in kept])
        first_image = first_image if ref else x[0]
        ref.append(fp32_session.logits(x))
        cand.append(int8_session.logits(x))
        labels.extend(s.label for s in kept)
    if not ref:
        raise InputFileError(f"{source.name}: no held-out image left that was not used for calibration")
    ref_logits, cand_logits = np.concatenate(ref), np.concatenate(cand)
    labelled = all(label is not None for label in labels)
    y = np.asarray(labels, dtype=np.int64) if labelled else None
    return Evaluation(
        images=len(ref_logits),
        overlap_excluded=dropped,
        parity=compare_outputs(ref_logits, cand_logits),
        fp32_accuracy=accuracy(ref_logits, y) if y is not None else None,
        int8_accuracy=accuracy(cand_logits, y) if y is not None else None,
        first_image=first_image,
        coverage=integer_coverage(int8, int8_session.executed) if int8_session.executed else None,
    )


def compare_speed(fp32: onnx.ModelProto, int8: onnx.ModelProto, image: np.ndarray) -> SpeedComparison:
    """Median latency of FP32 and INT8 on one real image (CPU), timed side by side."""
    (fp32_ms, int8_ms), threads = median_latencies_ms([fp32, int8], image, iterations=SPEED_ITERATIONS)
    return SpeedComparison(fp32_p50_ms=fp32_ms, int8_p50_ms=int8_ms, iterations=SPEED_ITERATIONS, threads=threads)


def median_latencies_ms(
    models: Sequence[onnx.ModelProto], image: np.ndarray, *, warmup: int = 5, iterations: int = 30
) -> tuple[list[float], int]:
    """Median latency of each model on one image (its fixed batch, else batch 1, CPU), interleaved in one run.

    Returns:
        The medians in milliseconds, in the order given, and the thread count used.
    """
    threads = default_threads()
    sessions = [open_session(m, threads=threads, spinning=False, audit=False) for m in models]
    feeds = [np.repeat(image[None], s.fixed_batch or 1, axis=0) for s in sessions]
    times = time_interleaved(
        [lambda s=s, x=x: s.run(x) for s, x in zip(sessions, feeds, strict=True)], warmup=warmup, iterations=iterations
    )
    return [float(np.median(t)) * 1e3 for t in times], threads
