"""How an INT8 model compares with its FP32 source: speed, side by side in one run."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from resnet_edge.onnx.runtime import open_session
from resnet_edge.timing import default_threads, time_interleaved


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
