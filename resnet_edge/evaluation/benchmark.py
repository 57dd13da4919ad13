"""Latency you can trust: several models (and PyTorch eager) timed side by side in one run.

Method: all ONNX models of one provider and batch size are timed in one run, as deployed by default: each session
with its worker threads spinning between calls (a deployed single model's threading), each model in short phases of
its own whose order is shuffled every round, so that machine drift hits them alike (:func:`resnet_edge.timing.
time_phased`); with ``spinning=False``, one call each per round in a shuffled order with spinning off
(:func:`resnet_edge.timing.time_interleaved`). Warm-up rounds come first, and cold start (session creation and first
inference) is reported apart. PyTorch eager is timed in a
phase of its own right after: its OpenMP threads keep spinning after each call, and interleaved with onnxruntime
they slowed whichever model ran next (measured: three copies of one ONNX file differed by 1.4x once PyTorch took
part). Inputs are real preprocessed images. On CUDA, inputs and outputs stay on the device through I/O binding, so
host-device copies are excluded from every row alike.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from resnet_edge import formatting as fmt
from resnet_edge.artifacts import sha256_file
from resnet_edge.calibration.preprocess import PreprocessSpec
from resnet_edge.calibration.sources import default_test_images, iter_batches, open_source
from resnet_edge.environment import Environment, collect_environment
from resnet_edge.errors import OptionError, ResnetEdgeWarning
from resnet_edge.evaluation.options import (
    BenchmarkOptions,
)
from resnet_edge.memory import check_fits
from resnet_edge.onnx.io import load_onnx
from resnet_edge.onnx.memory import onnx_estimate
from resnet_edge.onnx.metadata import preprocessing_for, read_metadata, static_input_shape
from resnet_edge.onnx.placement import Placement
from resnet_edge.onnx.providers import Provider
from resnet_edge.onnx.runtime import Session, open_session
from resnet_edge.progress import Progress, ProgressCallback
from resnet_edge.quantization.coverage import IntegerCoverage, coverage_of
from resnet_edge.timing import (
    POOL_IMAGES,
    LatencyStats,
    Timed,
    batch_from_pool,
    cold_start,
    default_threads,
    io_placement,
    latency_stats,
    time_interleaved,
    time_phased,
    time_sessions,
)


@dataclass(frozen=True)
class BenchmarkRow:
    model: str  # a label: the file name, or "pytorch"
    path: str | None
    provider: str  # requested
    ran_on: str  # the provider the session really used
    providers_used: list[str]
    batch: int
    cold_start_ms: float | None  # session creation + first inference, once per model and provider
    latency: LatencyStats | None  # None when skipped
    p50_ratio: float | None = None  # this row's p50 / the first model's p50 at the same provider and batch
    speedup: float | None = None  # the first model's p50 / this row's p50
    skipped: str | None = None
    placement: Placement | None = None  # where each node ran (runtime module docstring)
    coverage: IntegerCoverage | None = None  # INT8: which Conv/Gemm ran as integer kernels (quantization.coverage)
    target: str | None = None  # the device it ran on (``--target``); None: this machine, in this process


@dataclass(frozen=True)
class BenchmarkResult:
    rows: list[BenchmarkRow]
    options: BenchmarkOptions
    threads: int
    environment: Environment
    file_sha256: dict[str, str]
    io: dict[str, str]  # per provider: what the timing includes

    @property
    def threading(self) -> dict[str, object]:
        """The threading every row was timed with: what a deployment must use to see the same figures."""
        return threading_record(self.threads, spinning=self.options.spinning)


def threading_record(threads: int, *, spinning: bool) -> dict[str, object]:
    """How the sessions were threaded when timed (and how a deployment should open them)."""
    return {"intra_op_threads": threads, "inter_op_threads": 1, "spinning": spinning, "timed": how_timed(spinning)}


def how_timed(spinning: bool) -> str:
    """How models were timed side by side: in phases of their own as deployed (spinning), else call by call."""
    return "as deployed: each model in phases of its own" if spinning else "interleaved call by call"


STAGE = "benchmark"


def benchmark_models(
    sources: Sequence[Path | str],
    options: BenchmarkOptions | None = None,
    *,
    on_progress: ProgressCallback | None = None,
) -> BenchmarkResult:
    """Time ``sources`` (and optionally PyTorch eager) side by side on each provider and batch size.

    Args:
        sources: ONNX files; ratios are taken against the first.
        on_progress: told after each timed round, PyTorch's included: ``Progress("benchmark", "timing", done,
            options.total_rounds)`` (``total`` None when timing for a duration).

    Raises:
        OptionError: no models, a bad batch size, iteration count, duration or thread count.
        InputFileError: a model cannot be read or loaded.
        ProviderError: ``strict_ep`` and a provider is missing or took only part of the compute ops.
    """
    options = options or BenchmarkOptions()
    models = list(sources)
    check_options(models, options)
    threads = options.threads or default_threads()
    protos = {str(m): load_onnx(m) for m in models}
    specs = {name: preprocessing_for(proto, source=name) for name, proto in protos.items()}
    fixed = {name: static_input_shape(proto)[0] for name, proto in protos.items()}
    _check_batches_fit(protos, fixed, options.batch_sizes)
    data = {name: options.data or default_timing_data(proto) for name, proto in protos.items()}
    pools: dict[tuple[str, str], np.ndarray] = {}

    def images(name: str, batch: int) -> np.ndarray:
        return _images(specs[name], batch, data[name], pools)

    def first_images(name: str) -> np.ndarray:  # its fixed batch, or the first batch size asked for
        return images(name, fixed[name] or options.batch_sizes[0])

    if options.torch_reference and on_progress is not None:
        on_progress(Progress(STAGE, "load the PyTorch reference", detail=str(options.torch_reference)))
    torch_runner = _torch_reference(options.torch_reference, protos, threads) if options.torch_reference else None
    timing = {
        "warmup": options.warmup,
        "iterations": options.rounds,
        "duration_s": options.duration_s,
        "on_round": _round_counter(options.total_rounds, on_progress),
    }
    rows: list[BenchmarkRow] = []
    io: dict[str, str] = {}
    for provider in options.providers:
        sessions, cold = _open_sessions(protos, provider, options, threads, first_images, on_progress=on_progress)
        io[provider.value] = io_placement(s.ran_on for s in sessions.values())
        rows += _provider_rows(provider, sessions, cold, protos, images, options, timing=timing, torch=torch_runner)
    if not any(row.latency for row in rows):
        sizes = sorted({b for b in fixed.values() if b})
        raise OptionError(
            f"nothing was timed: the models take fixed batch sizes {sizes}, not {list(options.batch_sizes)}"
        )
    return BenchmarkResult(
        rows=rows,
        options=options,
        threads=threads,
        environment=collect_environment(),
        file_sha256={str(m): sha256_file(m) for m in models},
        io=io,
    )


def _provider_rows(
    provider: Provider,
    sessions: dict[str, Session],
    cold: dict[str, float],
    protos: dict[str, onnx.ModelProto],
    images: Callable[[str, int], np.ndarray],
    options: BenchmarkOptions,
    *,
    timing: dict,
    torch: Callable[[np.ndarray], Callable[[], object]] | None,
) -> list[BenchmarkRow]:
    """One provider's sessions timed side by side at each batch size, as rows with ratios to the first model; on the
    CPU, PyTorch eager (``torch``) in a phase of its own after them. ``timing``: the timers' keyword arguments."""
    first = next(iter(protos))
    timer = time_phased if options.spinning else time_interleaved
    rows: list[BenchmarkRow] = []
    # Where each session runs does not depend on the batch: found once (coverage infers the model's shapes).
    ran = {k: (s.ran_on, s.providers_used) for k, s in sessions.items()}
    placements = {k: s.placement for k, s in sessions.items()}
    coverages = {k: coverage_of(protos[k], s.executed) for k, s in sessions.items()}
    for batch, timed in time_sessions(sessions, images, options.batch_sizes, **timing, timer=timer):
        if torch is not None and provider.name == "cpu":
            # its own phase (module docstring), right after the ONNX models, fed as the first model is;
            # the progress bar counts its rounds too (options.total_rounds)
            (times,) = time_interleaved([torch(images(first, batch))], **timing)
            timed.insert(
                sum(t.latency is not None for t in timed), Timed("pytorch", batch, latency_stats(times, batch))
            )
        rows.extend(
            timed_rows(
                timed,
                first=first,
                provider=provider.value,
                sessions=ran,
                cold=cold,
                placements=placements,
                coverages=coverages,
            )
        )
    return rows


def _check_batches_fit(
    protos: dict[str, onnx.ModelProto], fixed: dict[str, int | None], batch_sizes: Sequence[int]
) -> None:
    """Refuse now, not after the machine swaps, a batch a model cannot fit in memory (its fixed one, else each asked).

    Raises:
        OptionError: a model at a batch size does not fit (:func:`resnet_edge.memory.check_fits`).
    """
    for name, proto in protos.items():
        estimate = onnx_estimate(proto)
        for batch in {fixed[name]} if fixed[name] else set(batch_sizes):
            check_fits(f"{Path(name).name} at batch {batch}", estimate, batch)


def _round_counter(total: int | None, on_progress: ProgressCallback | None) -> Callable[[], None] | None:
    """What the timers call after each round: tells ``on_progress`` the rounds done of ``total``, across providers
    (None without ``on_progress``)."""
    if on_progress is None:
        return None
    done = 0

    def count_round() -> None:
        nonlocal done
        done += 1
        on_progress(Progress(STAGE, "timing", done, total, unit="round"))

    return count_round


def _open_sessions(
    protos: dict[str, onnx.ModelProto],
    provider: Provider,
    options: BenchmarkOptions,
    threads: int,
    first_images: Callable[[str], np.ndarray],
    *,
    on_progress: ProgressCallback | None,
) -> tuple[dict[str, Session], dict[str, float]]:
    """Each model's session on ``provider`` and its cold start (session creation and first inference) in ms.

    ``first_images``: a model's first batch, for a first inference where the placement audit has not run one."""
    if on_progress is not None:  # cold starts and placement audits: seconds for a large model, before any round
        detail = f"{len(protos)} model{'s' if len(protos) > 1 else ''}, cold start and placement audit"
        on_progress(Progress(STAGE, f"open sessions on {provider.value}", detail=detail))
    sessions: dict[str, Session] = {}
    cold: dict[str, float] = {}
    for name, proto in protos.items():
        sessions[name], cold[name] = cold_start(
            lambda proto=proto: open_session(
                proto, provider, strict=options.strict_ep, threads=threads, spinning=options.spinning
            ),
            # The placement audit has already run a first inference; else run one (cold start includes it).
            lambda session, name=name: session.placement is None and session.run(first_images(name)),
        )
    return sessions, cold


def check_options(models: Sequence[Path | str], options: BenchmarkOptions) -> None:
    """Refuse what the options cannot tell alone (they check their own values): no models, or one given twice."""
    if not models:
        raise OptionError("give at least one model to benchmark")
    if len({str(m) for m in models}) != len(models):
        raise OptionError("a model is given twice; to time one file against itself, copy it")


def _images(spec: PreprocessSpec, batch: int, data: str, pools: dict[tuple[str, str], np.ndarray]) -> np.ndarray:
    """A batch of real preprocessed images (up to POOL_IMAGES, repeated when the batch is larger)."""
    return batch_from_pool(image_pool(spec, data, pools), batch)


def image_pool(spec: PreprocessSpec, data: str, pools: dict[tuple[str, str], np.ndarray]) -> np.ndarray:
    """The real preprocessed images a model is timed on, loaded once per (preprocessing, data) into ``pools``."""
    key = (spec.to_json(), data)
    if key not in pools:
        source = open_source(data, classes=None)  # timing only: labels are not read
        pools[key] = np.concatenate([b for b, _ in iter_batches(source, spec, source.indices()[:POOL_IMAGES], 16)])
    return pools[key]


def timed_rows(
    timed: Sequence[Timed],
    *,
    first: str,
    provider: str,
    sessions: dict[str, tuple[str, list[str]]],
    cold: dict[str, float],
    target: str | None = None,
    placements: dict[str, Placement | None] | None = None,
    coverages: dict[str, IntegerCoverage | None] | None = None,
) -> list[BenchmarkRow]:
    """Benchmark rows from one provider's and batch size's timings (here or on a device), with ratios to ``first``.

    Args:
        timed: the models' timings at one batch size, as :func:`resnet_edge.timing.time_sessions` gives them.
        first: the label ratios are taken against.
        sessions: label -> (provider it ran on, providers the session used); PyTorch is absent (cpu).
        cold: label -> cold start in milliseconds.
        target: where it ran; None here.
        placements: label -> where each node ran, when audited.
        coverages: label -> integer coverage, for quantized models.
    """
    by_label = {t.label: t.latency for t in timed if t.latency is not None}
    base = by_label[first].p50_ms if first in by_label else None
    rows = []
    for t in timed:
        ran_on, used = sessions.get(t.label, ("cpu", ["torch eager (CPU)"]))
        s = t.latency
        rows.append(
            BenchmarkRow(
                model=Path(t.label).name,
                path=None if t.label == "pytorch" else t.label,
                provider=provider,
                ran_on=ran_on,
                providers_used=used,
                batch=t.batch,
                cold_start_ms=cold.get(t.label) if s is not None else None,
                latency=s,
                p50_ratio=s.p50_ms / base if s is not None and base else None,
                speedup=base / s.p50_ms if s is not None and base else None,
                skipped=t.skipped,
                placement=(placements or {}).get(t.label),
                coverage=(coverages or {}).get(t.label),
                target=target,
            )
        )
        if s is not None and s.noisy:
            where = f" on {target}" if target else ""
            warnings.warn(
                f"{Path(t.label).name} on {provider} at batch {t.batch}{where} varied by {fmt.cv(s.cv)} (CV);"
                " the machine was busy, treat these numbers with care",
                ResnetEdgeWarning,
                stacklevel=4,  # the caller of benchmark_models or benchmark_on_targets (through a row helper)
            )
    return rows


def default_timing_data(proto: onnx.ModelProto) -> str:
    """The model's built-in held-out split when it was trained on built-in data, else the bundled photos."""
    return default_test_images(read_metadata(proto).dataset)


def _torch_reference(reference: str, protos: dict, threads: int) -> Callable[[np.ndarray], Callable[[], object]]:
    """A factory of PyTorch eager runners for the reference model: an arch name or a checkpoint."""
    import torch

    from resnet_edge.models.checkpoints import build_model, read_checkpoint_metadata
    from resnet_edge.models.registry import list_models

    first = read_metadata(next(iter(protos.values())))
    if reference in list_models():
        loaded = build_model(
            reference, num_classes=first.num_classes, in_chans=first.in_chans or 3, variant=first.variant or "residual"
        )
    else:
        arch = read_checkpoint_metadata(reference).get("arch") or first.arch
        if arch is None:
            raise OptionError(f"cannot tell the arch of {reference}; pass --torch ARCH or export with resnet-edge")
        loaded = build_model(arch, weights=reference, variant=first.variant or "residual")
    torch.set_num_threads(threads)
    model = loaded.model

    def make(batch: np.ndarray) -> Callable[[], object]:
        x = torch.from_numpy(batch)

        def run() -> object:
            with torch.inference_mode():
                return model(x)

        return run

    return make
