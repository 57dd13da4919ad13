"""The one timing implementation, shared by ``benchmark`` on the host and the device runner on a target.

Two methods, one per threading (issue 24: time what is deployed):

* **as deployed** (:func:`time_phased`, the default): a deployed model runs alone in its process, its worker threads
  spinning between calls (onnxruntime's default), which is measurably faster than with spinning off (ResNet-50 INT8
  on an EPYC: 12.4 against 13.2 ms, /work/shared/MEASURED.md). Sessions opened that way cannot be interleaved call
  by call (an idle pool that spins takes the cores of the running one), so each model runs in phases of its own:
  blocks of PHASE_BLOCK timed calls, each after PHASE_SETTLE untimed calls that let the previous model's threads go
  quiet, the blocks of all models in a freshly shuffled order per round, so that machine drift still hits them alike.
* **interleaved** (:func:`time_interleaved`): one call each per round in a shuffled order, the sessions opened with
  spinning off; finer against drift, but it times a threading no deployment uses.

Warm-up rounds come first, and cold start (session creation and first inference) is measured apart. On CUDA, inputs
and outputs stay on the device through I/O binding, so host-device copies are excluded.

This module needs only numpy (onnxruntime is imported only to bind CUDA inputs) and runs on Python 3.8: the
device runner bundles it, so on-device and local numbers come from the same code.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

NOISY_CV = 0.15  # a coefficient of variation above this means the machine was too busy to trust the row
MIN_ITERATIONS = 5  # a duration-bound run still times every model at least this often
POOL_IMAGES = 64  # distinct real images a timing batch is drawn from (repeated when the batch is larger)
GPU_PROVIDERS = ("cuda", "tensorrt")  # inputs and outputs are bound on the device for these
IO_ON_DEVICE = "inputs and outputs bound on the GPU (copies excluded)"
IO_ON_HOST = "host memory"

S = TypeVar("S")


@dataclass(frozen=True)
class LatencyStats:
    """Warm latency of one model at one batch size, in milliseconds per call."""

    iterations: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    throughput: float  # images per second: batch / mean latency
    samples_ms: list[float] = field(default_factory=list)  # every timed call, for distributions

    @property
    def cv(self) -> float:
        return self.std_ms / self.mean_ms if self.mean_ms > 0 else float("nan")

    @property
    def noisy(self) -> bool:
        return self.cv > NOISY_CV

    @classmethod
    def from_json(cls, data: dict) -> LatencyStats:
        """Read back what :func:`resnet_edge.jsonable.to_jsonable` (or the runner) wrote; derived keys ignored."""
        names = ("iterations", "mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "throughput")
        return cls(**{n: data[n] for n in names}, samples_ms=[float(v) for v in data.get("samples_ms", [])])


MEDIAN_INTERVAL_Z = 1.96  # a 95% confidence interval of the median
MEDIAN_INTERVAL_MIN_SAMPLES = 6  # below this the order statistics give no useful interval


def median_interval(samples: Sequence[float]) -> tuple[float, float] | None:
    """A distribution-free 95% confidence interval of the median of ``samples``: the order statistics at ranks
    ``floor((n - 1.96 sqrt(n)) / 2)`` and ``ceil((n + 1.96 sqrt(n)) / 2)`` (the binomial's normal approximation;
    Conover, *Practical Nonparametric Statistics*, 3rd ed., 3.2). Timings are skewed and shared machines add
    outliers, so no normal model of the latencies is assumed. None under MEDIAN_INTERVAL_MIN_SAMPLES samples."""
    n = len(samples)
    if n < MEDIAN_INTERVAL_MIN_SAMPLES:
        return None
    ordered = sorted(samples)
    spread = MEDIAN_INTERVAL_Z * math.sqrt(n)
    low = max(1, math.floor((n - spread) / 2))  # 1-based ranks, as Conover writes them
    high = min(n, math.ceil((n + spread) / 2))
    return float(ordered[low - 1]), float(ordered[high - 1])


def latency_stats(seconds: Sequence[float], batch: int) -> LatencyStats:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return LatencyStats(
        iterations=len(ms),
        mean_ms=float(ms.mean()),
        std_ms=float(ms.std()),
        min_ms=float(ms.min()),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        max_ms=float(ms.max()),
        throughput=float(batch / (ms.mean() / 1e3)),
        samples_ms=[float(v) for v in ms],
    )


def time_interleaved(
    runners: Sequence[Callable[[], object]],
    *,
    warmup: int,
    iterations: int | None,
    duration_s: float | None = None,
    on_round: Callable[[], object] | None = None,
    seed: int = 0,
) -> list[list[float]]:
    """Call each runner once per round, in a new shuffled order each round; seconds per call, per runner.

    Runs ``iterations`` timed rounds, or rounds until ``duration_s`` has passed (at least MIN_ITERATIONS).
    """
    order = np.random.default_rng(seed)
    for _ in range(warmup):
        for run in runners:
            run()
    times: list[list[float]] = [[] for _ in runners]
    started = time.perf_counter()
    round_index = 0
    while not _finished(round_index, iterations=iterations, duration_s=duration_s, started=started):
        for i in order.permutation(len(runners)):  # no runner always follows the same neighbour
            t0 = time.perf_counter()
            runners[i]()
            times[i].append(time.perf_counter() - t0)
        round_index += 1
        if on_round is not None:
            on_round()
    return times


# As deployed: timed calls per model per block, and untimed calls before each block. After a block, the previous
# model's pool spins on for a moment (onnxruntime spins a bounded count, then sleeps); two calls let it settle.
PHASE_BLOCK = 5
PHASE_SETTLE = 2


def time_phased(
    runners: Sequence[Callable[[], object]],
    *,
    warmup: int,
    iterations: int | None,
    duration_s: float | None = None,
    on_round: Callable[[], object] | None = None,
    seed: int = 0,
) -> list[list[float]]:
    """Time each runner in phases of its own (module docstring: as deployed); seconds per call, per runner.

    ``iterations`` timed calls per runner (or rounds until ``duration_s``, at least MIN_ITERATIONS), in blocks of
    PHASE_BLOCK, each block after PHASE_SETTLE untimed calls; the blocks of one round run in a shuffled order.
    ``on_round`` is told once per timed call of every runner, as :func:`time_interleaved` tells it once per round.
    """
    order = np.random.default_rng(seed)
    for run in runners:  # warm-up, each in its own phase too
        for _ in range(warmup):
            run()
    times: list[list[float]] = [[] for _ in runners]
    started = time.perf_counter()
    done = 0
    while not _finished(done, iterations=iterations, duration_s=duration_s, started=started):
        block = PHASE_BLOCK if iterations is None else min(PHASE_BLOCK, iterations - done)
        for i in order.permutation(len(runners)):
            run = runners[i]
            for _ in range(PHASE_SETTLE):
                run()
            for _ in range(block):
                t0 = time.perf_counter()
                run()
                times[i].append(time.perf_counter() - t0)
        done += block
        if on_round is not None:
            for _ in range(block):
                on_round()
    return times


def _finished(done: int, *, iterations: int | None, duration_s: float | None, started: float) -> bool:
    """Whether a timer is done: ``iterations`` timed, or ``duration_s`` passed since ``started`` and at least
    MIN_ITERATIONS timed."""
    if iterations is not None and done >= iterations:
        return True
    return duration_s is not None and done >= MIN_ITERATIONS and time.perf_counter() - started >= duration_s


def cold_start(open_session: Callable[[], S], first_run: Callable[[S], object]) -> tuple[S, float]:
    """Open a session and run it once; the session and the milliseconds both took (what a user waits at start)."""
    t0 = time.perf_counter()
    session = open_session()
    first_run(session)
    return session, (time.perf_counter() - t0) * 1e3


def default_threads() -> int:
    """Every core this process may run on: the thread count used when none is given (and recorded)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def batch_from_pool(pool: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` images from a pool of real preprocessed images, repeated when the batch is larger than the pool."""
    return np.ascontiguousarray(np.concatenate([pool] * -(-batch // len(pool)))[:batch])


def binds_io_on_device(ran_on: str) -> bool:
    """The one I/O-binding rule, for the host's benchmark and the device runner alike: a session that runs on a GPU
    provider (``cuda``, ``tensorrt``) is timed with its input and output bound on the GPU."""
    return ran_on in GPU_PROVIDERS


def io_placement(ran_on: Iterable[str]) -> str:
    """Where a provider's timed inputs and outputs lived, as a benchmark row says it (:func:`binds_io_on_device`)."""
    return IO_ON_DEVICE if any(binds_io_on_device(name) for name in ran_on) else IO_ON_HOST


def session_runner(session: object, batch: np.ndarray) -> Callable[[], object]:
    """A no-argument call of ``session`` (a :class:`resnet_edge.onnx.runtime.Session`) on ``batch``, as timed.

    On a GPU provider the input is bound on the device once and the output stays there, so copies are excluded.
    """
    ort_session = session.session  # type: ignore[attr-defined]
    input_name, output_name = session.input_name, session.output_name  # type: ignore[attr-defined]
    if not binds_io_on_device(session.ran_on):  # type: ignore[attr-defined]
        feed = {input_name: batch}
        return lambda: ort_session.run([output_name], feed)
    import onnxruntime as ort

    binding = ort_session.io_binding()
    binding.bind_ortvalue_input(input_name, ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))
    binding.bind_output(output_name, "cuda")

    def run() -> None:
        ort_session.run_with_iobinding(binding)  # returns after the device has finished (synchronised)

    return run


@dataclass(frozen=True)
class Timed:
    """One model at one batch size: its latency, or why it was not timed."""

    label: str
    batch: int
    latency: LatencyStats | None
    skipped: str | None = None


def time_sessions(
    sessions: dict[str, object],
    images: Callable[[str, int], np.ndarray],
    batch_sizes: Sequence[int],
    *,
    warmup: int,
    iterations: int | None,
    duration_s: float | None = None,
    on_round: Callable[[], object] | None = None,
    timer: Callable[..., list[list[float]]] | None = None,
) -> Iterator[tuple[int, list[Timed]]]:
    """Time the sessions of one provider side by side at each batch size; yields (batch, results) per batch size.

    A session whose model has a fixed batch (``session.fixed_batch``) is skipped at the other sizes, with the reason.

    Args:
        sessions: label -> :class:`resnet_edge.onnx.runtime.Session`, opened with spinning off for
            :func:`time_interleaved`, as deployed (spinning on) for :func:`time_phased`.
        images: (label, batch) -> that model's input batch.
        timer: :func:`time_interleaved` unless given (a caller's module-level name, so a test can spy on it).
    """
    timer = timer or time_interleaved
    for batch in batch_sizes:
        labels: list[str] = []
        runners: list[Callable[[], object]] = []
        skipped: list[Timed] = []
        for label, session in sessions.items():
            fixed = session.fixed_batch  # type: ignore[attr-defined]
            if fixed is not None and fixed != batch:
                skipped.append(Timed(label, batch, None, f"model has a fixed batch of {fixed}"))
                continue
            labels.append(label)
            runners.append(session_runner(session, images(label, batch)))
        times = (
            timer(runners, warmup=warmup, iterations=iterations, duration_s=duration_s, on_round=on_round)
            if runners
            else []
        )
        timed = [Timed(label, batch, latency_stats(t, batch)) for label, t in zip(labels, times)]  # noqa: B905 (3.8)
        yield batch, timed + skipped
