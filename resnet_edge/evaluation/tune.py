"""Choose the deployment by measurement: the fastest (provider, precision) that still gives FP32's answers.

Candidates are the providers that run here (or those asked for) times their precisions: FP32; the INT8 configurations of
the per-target table in :mod:`resnet_edge.quantization.configs` that fit the provider (the CPU target of this machine,
in QDQ and QOperator form, for the CPU EP and OpenVINO; ``gpu-tensorrt`` for CUDA and TensorRT); FP16 where the provider
runs it natively (CUDA, TensorRT), converted with onnxconverter-common with float32 inputs and outputs kept; and any
model file the caller adds. Every candidate is judged against the FP32 model on held-out images by
:func:`resnet_edge.evaluation.validate.validate_models` with the validate thresholds (FP16 is judged like INT8, on
decisions), and timed side by side with the others of its provider in one run
(:func:`resnet_edge.evaluation.benchmark.benchmark_models`) at batch 1 and the user's batch, as it will be deployed:
its worker threads spinning, in phases of its own (issue 24; the threading is recorded with the choice). The fastest
candidate that passed at the user's batch is written (:func:`rank_candidates`: a gap within the timing's noise is a
tie, which goes to the candidate validated already, then to the one with more integer-kernel MACs), with a JSON
record of every candidate; a candidate that failed parity is never chosen, however fast (Olive's search over passes
and providers is the anchor; this one searches a small, fixed space, so it runs in minutes).

Calibration runs once per activation symmetry and is shared by the INT8 configurations that need it.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from resnet_edge import formatting as fmt
from resnet_edge.artifacts import (
    atomic_output,
    path_for_record,
    refuse_overwriting_inputs,
    require_file,
    require_writable_destination,
    sha256_file,
)
from resnet_edge.errors import CheckFailedError, OptionError, ResnetEdgeError, ResnetEdgeWarning
from resnet_edge.evaluation.options import (
    TuneOptions,
)
from resnet_edge.evaluation.tune_record import (
    Candidate,
    ChosenRecord,
    DeploymentRecord,
    KnobSettings,
    KnobTrial,
    RandomWeightsBar,
    ThresholdsRecord,
    TuneRecord,
    write_tuned,
)
from resnet_edge.onnx.graph import is_quantized, output_step
from resnet_edge.onnx.io import load_onnx
from resnet_edge.onnx.metadata import read_metadata
from resnet_edge.onnx.parity import RANDOM_WEIGHTS_MAX_STEPS, RANDOM_WEIGHTS_MIN_COSINE, logit_error_shortfalls
from resnet_edge.onnx.plugins import available_providers
from resnet_edge.onnx.providers import OPENVINO_RUNTIME, PROVIDERS, Provider, parse_providers
from resnet_edge.progress import Progress, ProgressCallback
from resnet_edge.timing import GPU_PROVIDERS, NOISY_CV, default_threads, median_interval

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from resnet_edge.evaluation.benchmark import BenchmarkResult
    from resnet_edge.evaluation.options import BenchmarkOptions, ValidateOptions
    from resnet_edge.evaluation.validate import ValidateResult, ValidateRow
    from resnet_edge.onnx.parity import Parity
    from resnet_edge.onnx.runtime import Session
    from resnet_edge.quantization.configs import Int8Recipe, Int8Target
    from resnet_edge.timing import Timed

logger = logging.getLogger("resnet_edge")

STAGE = "tune"
FP16_PROVIDERS = GPU_PROVIDERS  # providers with native FP16 kernels; elsewhere FP16 only adds casts
GPU_INT8_PROVIDERS = GPU_PROVIDERS  # they take the gpu-tensorrt INT8 recipe
# Candidates within this fraction of the fastest one's p50 are a tie on this noisy machine; the tie goes to the one
# whose Conv/Gemm MACs run most in integer kernels (quantization.coverage), which stays fast where timing cannot be
# trusted.
SPEED_TIE = 0.03


@dataclass(frozen=True)
class Site:
    """Where the candidates are judged and timed: this machine (the default), or a device as its facts describe it.

    The device layer fills it in (:func:`resnet_edge.device.fleet.tune_on_target`), so that tune needs to know
    nothing of how a device is reached.
    """

    target: str | None = None  # the device's name; None: here
    providers: tuple[str, ...] | None = None  # onnxruntime's provider names there; None: those that load here
    architecture: str | None = None  # the device's machine (aarch64, x86_64), to pick its INT8 configuration
    cpu_features: dict[str, bool] = field(default_factory=dict)
    emulated: bool = False
    facts: dict | None = None  # the device's facts, for the record


class Measure(Protocol):
    """Judge ``paths`` against ``reference`` with validate's thresholds and time them, both at one site."""

    def __call__(
        self, paths: list[str], reference: Path, thresholds: ValidateOptions, timing: BenchmarkOptions
    ) -> tuple[ValidateResult, BenchmarkResult]: ...


HERE = Site()


# A candidate's file before it is judged: (name, precision, the file or None, why it could not be built).
_CandidateFile = tuple[str, str, Path | None, str | None]


@dataclass(frozen=True)
class TuneResult:
    output: Path
    record: Path
    chosen: Candidate
    candidates: list[Candidate]
    batch_sizes: list[int]
    threads: int | None
    seconds: float
    target: str | None = None  # the device it was measured on (None: here)
    device: dict | None = None  # that device's facts
    reason: str = ""  # why the chosen candidate, with the timing intervals behind it
    random_weights: bool = False  # the model's weights are known to be random: INT8/FP16 judged by logit error
    # False on an emulated device: timings under emulation are not the device's, so the choice rests on parity and
    # integer coverage alone (issue 22) and the candidates carry no timings.
    timing_used: bool = True


def tune_model(
    source: Path | str,
    output: Path | str,
    options: TuneOptions | None = None,
    *,
    site: Site = HERE,
    measure: Measure | None = None,
    on_progress: ProgressCallback | None = None,
) -> TuneResult:
    """Try every candidate, keep the fastest one that passes parity, write it and a record of all.

    The candidates are built here, for ``site``'s CPU and providers, and judged and timed by ``measure`` (default:
    :func:`validate_models` and :func:`benchmark_models` here).

    Writes ``output`` (the chosen model, with a ``deployment`` record in its metadata) and ``output + ".json"``.

    Args:
        source: the FP32 (simplified) model.
        output: where the chosen model goes.
        options: what to try and how.
        on_progress: told as the candidates are built (``build``), then before each provider's candidates are
            judged and timed (``judge and time PROVIDER``, ``detail`` "1 of 2": a step that starts, not a count).

    Raises:
        OptionError: a bad batch or iteration count, no provider to try.
        InputFileError: an unreadable or already quantized model.
        CheckFailedError: no candidate passed parity (nothing is written).
    """
    options = options or TuneOptions()
    started = time.perf_counter()
    model_path = require_file(source, what="model")
    report = on_progress or (lambda progress: None)
    output, record_path = _destinations(output, model_path, options)
    random_weights = _check_source(model_path, options)
    if site.emulated:
        warnings.warn(
            f"{site.target} runs under emulation: parity and integer coverage are real and decide; its timings are"
            " not the device's and are not used",
            ResnetEdgeWarning,
            stacklevel=2,
        )
    providers = _providers(options, site)
    batches = sorted({1, options.batch})

    with tempfile.TemporaryDirectory(prefix="resnet-edge-tune-") as tmp:
        report(Progress(STAGE, "build"))
        variants = _build_variants(model_path, Path(tmp), providers, options, cpu_target=_cpu_target(site))
        measure = measure or _measure_here
        flat = _measure_candidates(
            variants, model_path, batches, options, measure, report=report, random_weights=random_weights
        )
        picked, chosen, reason, knobs = _choose(flat, options, site, search=measure is _measure_here)
        record = _tune_record(
            model_path, record_path, chosen, flat, options, batches, site, reason, knobs, random_weights
        )
        deployment = DeploymentRecord(chosen=record.chosen, target=site.target, p50_ms=chosen.p50_ms)
        write_tuned(load_onnx(chosen.path), output, record_path, record, deployment)
    return TuneResult(
        output=output,
        record=record_path,
        chosen=_with_path(chosen, str(output)),
        candidates=[_with_path(chosen, str(output)) if c is picked else c for c in flat],
        batch_sizes=batches,
        threads=options.threads,
        seconds=time.perf_counter() - started,
        target=site.target,
        device=site.facts,
        reason=reason,
        random_weights=random_weights,
        timing_used=not site.emulated,
    )


def _destinations(output: Path | str, model_path: Path, options: TuneOptions) -> tuple[Path, Path]:
    """The chosen model's path and its record's (``output + ".json"``), checked writable and none of tune's inputs.

    Raises:
        OptionError: a destination that cannot be written, or one that is an input.
    """
    output = require_writable_destination(output)
    record_path = require_writable_destination(Path(f"{output}.json"))
    refuse_overwriting_inputs(
        [output, record_path],
        [
            model_path,
            options.data,
            options.calib,
            options.label_map,
            *options.candidates,
            *(path for _, path in options.int8_models),
        ],
        command="tune output",
    )
    return output, record_path


def _tune_record(
    model_path: Path,
    record_path: Path,
    chosen: Candidate,
    candidates: list[Candidate],
    options: TuneOptions,
    batches: list[int],
    site: Site,
    reason: str,
    knobs: list[KnobTrial],
    random_weights: bool,
) -> TuneRecord:
    """The record of the choice: the model, the chosen candidate and why, the bar, the site, every candidate."""
    return TuneRecord(
        model=path_for_record(model_path, record_path.parent),
        model_sha256=sha256_file(model_path),
        chosen=ChosenRecord(
            name=chosen.name,
            provider=chosen.provider,
            precision=chosen.precision,
            runtime=_runtime_of(chosen.provider),
            threading=chosen.threading,
        ),
        reason=reason,
        batch_sizes=tuple(batches),
        threads=options.threads,
        iterations=options.iterations,
        thresholds=_thresholds_record(options, random_weights),
        target=site.target,
        device=site.facts,
        timing_used=not site.emulated,
        candidates=tuple(_as_record(c, record_path.parent) for c in candidates),
        knobs=tuple(knobs),
    )


def _measure_candidates(
    variants: list[tuple[Provider, list[_CandidateFile]]],
    model_path: Path,
    batches: list[int],
    options: TuneOptions,
    measure: Measure,
    *,
    report: ProgressCallback,
    random_weights: bool,
) -> list[Candidate]:
    """Every provider's candidates judged and timed, with their speed-ups over FP32 on the CPU where it was timed."""
    flat: list[Candidate] = []
    for done, (provider, files) in enumerate(variants):
        report(Progress(STAGE, f"judge and time {provider.value}", detail=f"{done + 1} of {len(variants)}"))
        flat += _judge_and_time(provider, files, model_path, batches, options, measure, random_weights=random_weights)
    baseline = next((c for c in flat if c.provider == "cpu" and c.precision == "fp32" and c.p50_ms), None)
    if baseline is None:
        return flat
    _warn_noisy_baseline(baseline)
    return [_with_speedup(c, baseline) for c in flat]


def _choose(
    candidates: list[Candidate], options: TuneOptions, site: Site, *, search: bool
) -> tuple[Candidate, Candidate, str, list[KnobTrial]]:
    """The candidate picked among those that passed (one of ``candidates``), the same as deployed (``search``:
    measured here, with the runtime settings :func:`search_knobs` kept), why, and the knobs tried on it.

    Raises:
        CheckFailedError: no candidate passed parity.
    """
    passing = [c for c in candidates if c.passed and (site.emulated or options.batch in c.p50_ms)]
    if not passing:
        raise CheckFailedError(
            "no candidate passed parity against FP32: "
            + "; ".join(f"{c.name} on {c.provider}: {', '.join(c.failures) or c.error}" for c in candidates)
        )
    picked, reason = rank_by_coverage(passing) if site.emulated else rank_candidates(passing, options.batch)
    chosen, knobs = picked, []
    if options.knobs and site.target is None and search:
        chosen, knobs, knob_reason = search_knobs(picked, options)
        reason += f"; runtime knobs: {knob_reason}"
    return picked, chosen, reason, knobs


# --- the runtime's own knobs (issue 24) -------------------------------------------------------------------------------

# A knob that changes the graph onnxruntime runs (the optimisation level) must leave the decisions as they were and the
# logits within this cosine of the default settings' on every held-out image. Measured: levels all and extended gave
# identical logits on the digits and ResNet-50 INT8 QDQ files (onnxruntime 1.32); the bar leaves room for a fusion
# that rounds differently by an output step, and catches one that changes the function.
KNOB_MIN_COSINE = 0.999
KNOB_IMAGES = 32  # held-out images the knob variants are compared on


class Knobs(Protocol):
    """Runtime settings a deployment opens its session with: what :func:`search_knobs` varies and records."""

    threads: int | None  # intra-op threads; None: tune's (all cores by default)

    def describe(self) -> str: ...

    def open(self, path: str, base: Provider, threads: int) -> Session:
        """The candidate's session under these settings (``base``: the provider it was chosen on)."""
        ...

    def record(self) -> KnobSettings:
        """These settings, for the knob records."""
        ...

    def deployed(self, chosen: Candidate, base: Provider, threads: int) -> Candidate:
        """``chosen`` as deployed with these settings: its threading (and provider options) say how to open it."""
        ...


@dataclass(frozen=True)
class SessionKnobs:
    """onnxruntime session settings a deployment opens its session with, searched by :func:`search_knobs`."""

    spinning: bool = True  # worker threads spin between calls (onnxruntime's default)
    optimization: str = "all"  # graph optimisation level
    threads: int | None = None  # intra-op threads; None: tune's (all cores by default)
    dynamic_block_base: int | None = None  # session.dynamic_block_base: onnxruntime's adaptive work split

    @property
    def session_config(self) -> dict[str, str]:
        return {"session.dynamic_block_base": str(self.dynamic_block_base)} if self.dynamic_block_base else {}

    def describe(self) -> str:
        parts = [f"spinning {'on' if self.spinning else 'off'}", f"level {self.optimization}"]
        if self.threads is not None:
            parts.append(f"{self.threads} threads")
        if self.dynamic_block_base:
            parts.append(f"dynamic_block_base {self.dynamic_block_base}")
        return ", ".join(parts)

    def open(self, path: str, base: Provider, threads: int) -> Session:
        from resnet_edge.onnx.runtime import open_session

        return open_session(
            path,
            base,
            threads=self.threads or threads,
            spinning=self.spinning,
            optimization=self.optimization,
            session_config=self.session_config,
            audit=False,
        )

    def record(self) -> KnobSettings:
        return KnobSettings(spinning=self.spinning, optimization=self.optimization, session_config=self.session_config)

    def deployed(self, chosen: Candidate, base: Provider, threads: int) -> Candidate:
        from resnet_edge.evaluation.benchmark import threading_record

        threading = threading_record(self.threads or threads, spinning=self.spinning) | {
            "optimization": self.optimization,
            "session_config": self.session_config,
        }
        return dataclasses.replace(chosen, threading=threading)


@dataclass(frozen=True)
class OpenVinoKnobs:
    """OpenVINO runtime settings a deployment compiles its model with, searched by :func:`search_knobs`: options of
    the ``openvino-runtime`` provider (:mod:`resnet_edge.onnx.providers`) laid over the chosen provider's own, so
    that the deployment's provider text carries them and the session it opens honours them."""

    options: tuple[tuple[str, str], ...] = ()  # provider options changed from the chosen provider's
    threads: int | None = None  # INFERENCE_NUM_THREADS; None: tune's

    def describe(self) -> str:
        parts = [f"{key}={value}" for key, value in self.options]
        if self.threads is not None:
            parts.append(f"{self.threads} threads")
        return ", ".join(parts) or "as chosen"

    def provider(self, base: Provider) -> Provider:
        return Provider(base.name, tuple(sorted((dict(base.options) | dict(self.options)).items())))

    def open(self, path: str, base: Provider, threads: int) -> Session:
        from resnet_edge.onnx.runtime import open_session

        return open_session(path, self.provider(base), threads=self.threads or threads, audit=False)

    def record(self) -> KnobSettings:
        return KnobSettings(options=dict(self.options))

    def deployed(self, chosen: Candidate, base: Provider, threads: int) -> Candidate:
        provider = self.provider(base)
        return dataclasses.replace(
            chosen,
            provider=provider.value,
            threading=_openvino_threading(provider, self.threads or threads, spinning=True),  # timed in phases
        )


def knob_variants(threads: int) -> list[SessionKnobs]:
    """The settings tried, the default first: spinning off, optimisation level extended (no NHWC layout transform),
    a dynamic block base of 4, one thread fewer. Inter-op threads are left at 1: they matter only in onnxruntime's
    parallel execution mode, which a chain of convolutions does not use."""
    variants = [
        SessionKnobs(),
        SessionKnobs(spinning=False),
        SessionKnobs(optimization="extended"),
        SessionKnobs(dynamic_block_base=4),
    ]
    if threads > 1:
        variants.append(SessionKnobs(threads=threads - 1))
    return variants


def openvino_knob_variants(threads: int) -> list[OpenVinoKnobs]:
    """The OpenVINO runtime settings tried, the chosen provider's own first: threads not pinned to cores
    (``pinning=0``: ENABLE_CPU_PINNING off, for a machine whose cores other processes share), the THROUGHPUT hint
    with one stream, one thread fewer. The precision of the non-quantized parts stays the provider's: BF16 changes
    the function, which is tune's choice between candidates, not a knob's.

    Measured on an AMD EPYC (2 cores, load about 4; INT8 ResNet-50, all in one process in shuffled rotation, 40
    rounds; median of block ratios / ratio of minima against the default settings): pinning off 0.95/1.06, THROUGHPUT
    with one stream 0.92/0.97, BF16 for the non-quantized parts 0.92/0.97, hyper-threading off 0.93/0.96, while a
    second copy of the default read 0.82/0.96: none wins beyond the noise there, which is why they are measured per
    machine. Not tried: ENABLE_CPU_RESERVATION takes the cores from every later compile in the process ("No CPU
    resources available"), and SCHEDULING_CORE_TYPE matters only on hybrid CPUs."""
    variants = [
        OpenVinoKnobs(),
        OpenVinoKnobs(options=(("pinning", "0"),)),
        OpenVinoKnobs(options=(("hint", "THROUGHPUT"), ("streams", "1"))),
    ]
    if threads > 1:
        variants.append(OpenVinoKnobs(threads=threads - 1))
    return variants


def search_knobs(chosen: Candidate, options: TuneOptions) -> tuple[Candidate, list[KnobTrial], str]:
    """Time the chosen candidate under each of its runtime's knob variants (:func:`knob_variants` on the onnxruntime
    CPU EP, :func:`openvino_knob_variants` on the OpenVINO runtime) in one run, as deployed (phases of its own), and
    keep a variant only where it kept the default settings' answers and wins beyond the measured noise
    (:func:`rank_candidates`, with the default settings as the validated one that keeps every tie).

    Returns:
        the candidate with the settings kept (its threading, provider options and p50 updated), a record of every
        variant, and why.
    """
    from resnet_edge.onnx.parity import compare_outputs
    from resnet_edge.onnx.providers import parse_provider
    from resnet_edge.timing import batch_from_pool, time_phased, time_sessions

    base = parse_provider(chosen.provider)
    threads = options.threads or default_threads()
    variants: list[Knobs]
    if base == Provider.CPU:
        variants = list(knob_variants(threads))
    elif base.ort_name == OPENVINO_RUNTIME:
        variants = list(openvino_knob_variants(threads))
    else:
        return chosen, [], f"not searched: tune knows no runtime settings of {chosen.provider}"
    pool, held_out = _knob_images(chosen.path, options)
    sessions = {knob.describe(): knob.open(chosen.path, base, threads) for knob in variants}
    default = variants[0].describe()
    reference = sessions[default].logits(held_out)
    parity = {label: compare_outputs(reference, session.logits(held_out)) for label, session in sessions.items()}
    batch = options.batch
    ((_, timed),) = time_sessions(
        sessions,
        lambda label, b: batch_from_pool(pool, b),
        [batch],
        warmup=options.warmup,
        iterations=options.iterations,
        timer=time_phased,
    )
    by_label = {t.label: t for t in timed}
    records, contenders = [], []
    for knob in variants:
        t = by_label[knob.describe()]
        validated = knob == variants[0]  # the default settings: they keep every tie
        record, contender = _knob_trial(
            knob, t, parity[t.label], chosen, batch=batch, threads=threads, validated=validated
        )
        records.append(record)
        if contender is not None:
            contenders.append((knob, contender))
    if not any(k == variants[0] for k, _ in contenders):
        return chosen, records, f"not searched: the default settings could not be timed at batch {batch}"
    return _keep_fastest_knob(chosen, base, contenders, records, batch=batch, threads=threads)


def _knob_images(model: str, options: TuneOptions) -> tuple[np.ndarray, np.ndarray]:
    """The knob search's inputs: the pool its timings are fed from, and KNOB_IMAGES held-out images for parity."""
    from resnet_edge.calibration.sources import iter_batches, open_source
    from resnet_edge.evaluation.benchmark import default_timing_data, image_pool
    from resnet_edge.onnx.metadata import preprocessing_for

    proto = load_onnx(model)
    spec = preprocessing_for(proto, source=model)
    data = options.data or default_timing_data(proto)
    pool = image_pool(spec, data, {})
    source = open_source(data, classes=None)
    held_out, _ = next(iter_batches(source, spec, source.indices()[:KNOB_IMAGES], KNOB_IMAGES))
    return pool, held_out


def _knob_trial(
    knob: Knobs, t: Timed, p: Parity, chosen: Candidate, *, batch: int, threads: int, validated: bool
) -> tuple[KnobTrial, Candidate | None]:
    """One knob variant's record, and the chosen candidate as timed under it when it kept the default's answers
    (None when it did not, or was not timed)."""
    passed = p.top1_agreement == 1.0 and p.min_cosine >= KNOB_MIN_COSINE and not p.non_finite
    interval = median_interval(t.latency.samples_ms) if t.latency else None
    record = KnobTrial(
        settings=knob.describe(),
        knob=knob.record(),
        threads=knob.threads or threads,
        p50_ms=t.latency.p50_ms if t.latency else None,
        p50_interval_ms=tuple(interval) if interval else None,
        min_cosine_vs_default=p.min_cosine,
        passed=passed,
    )
    if not passed or t.latency is None:
        return record, None
    return record, dataclasses.replace(
        chosen,
        name=t.label,
        p50_ms={batch: t.latency.p50_ms},
        p50_interval_ms={batch: interval} if interval else {},
        validated=validated,
        integer_fraction=None,
    )


def _keep_fastest_knob(
    chosen: Candidate,
    base: Provider,
    contenders: list[tuple[Knobs, Candidate]],
    records: list[KnobTrial],
    *,
    batch: int,
    threads: int,
) -> tuple[Candidate, list[KnobTrial], str]:
    """The knob variant :func:`rank_candidates` keeps (the default wins every tie): the chosen candidate as deployed
    with it, the records marked with the one kept, and why."""
    best, why = rank_candidates([c for _, c in contenders], batch)
    knob = next(k for k, c in contenders if c is best)
    records = [dataclasses.replace(record, chosen=record.settings == knob.describe()) for record in records]
    # Its p50 stays the comparison's, the figure its speed-up and its row in the candidate table were computed from:
    # one number per candidate. The knob search's own timings (each in its own phase) are in the knob records.
    return knob.deployed(chosen, base, threads), records, f"{knob.describe()} ({why})"


def convert_fp16(model_path: Path | str, output: Path | str) -> Path:
    """An FP16 copy of an FP32 model with float32 inputs and outputs kept (onnxconverter-common), written atomically.

    Raises:
        OptionError: onnxconverter-common is not installed.
    """
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise OptionError("FP16 needs onnxconverter-common: pip install 'resnet-edge[gpu]'") from None
    model = load_onnx(model_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns about values clamped to the FP16 range, which validate judges
        half = float16.convert_float_to_float16(model, keep_io_types=True)
    with atomic_output(output) as tmp:
        tmp.write_bytes(half.SerializeToString())
    return Path(output)


def _providers(options: TuneOptions, site: Site) -> list[Provider]:
    """The providers to try: those asked for, or every table provider that runs at the site."""
    here = available_providers() if site.providers is None else list(site.providers)
    where = (
        "here (resnet-edge doctor says why)" if site.target is None else f"on {site.target} (it has {', '.join(here)})"
    )
    if options.providers is not None:
        providers = parse_providers(list(options.providers))
        missing = [p.value for p in providers if p.ort_name not in here]
        if missing:
            raise OptionError(f"cannot tune on {', '.join(missing)}: not available {where}")
        return providers
    return [Provider(short) for short, info in PROVIDERS.items() if info.ort_name in here]


def _cpu_target(site: Site) -> Int8Target:
    """The INT8 target of the CPU the candidates run on: this machine's, or the device's from its facts."""
    from resnet_edge.quantization.configs import Int8Target, detect_target

    if site.architecture is None:
        return detect_target()
    if site.architecture in ("aarch64", "arm64"):
        return Int8Target.ARM64
    vnni = site.cpu_features.get("avx512_vnni") or site.cpu_features.get("avx_vnni")
    return Int8Target.X86_VNNI if vnni else Int8Target.X86_AVX2


def _check_source(model_path: Path, options: TuneOptions) -> bool:
    """Refuse a quantized model, and options that do not fit it, now; whether its weights are known to be random.

    Raises:
        OptionError: the model is quantized already.
    """
    fp32 = load_onnx(model_path)
    if is_quantized(fp32):
        raise OptionError(f"{model_path} is quantized; tune starts from the FP32 (simplified) model")
    _check_options(options, fp32)
    return read_metadata(fp32).random_weights


def _check_options(options: TuneOptions, fp32: onnx.ModelProto) -> None:
    """Refuse unreadable data, and labels that do not fit the model, now, before minutes of calibration and timing."""
    from resnet_edge.calibration.sources import open_source
    from resnet_edge.onnx.metadata import model_classes

    if options.data is not None:
        open_source(options.data, classes=model_classes(fp32, label_map=options.label_map))
    if options.calib is not None:
        open_source(options.calib, classes=None)
    for candidate in options.candidates:
        require_file(candidate, what="candidate model")


def _build_variants(
    model_path: Path,
    folder: Path,
    providers: Sequence[Provider],
    options: TuneOptions,
    *,
    cpu_target: Int8Target | None = None,
) -> list[tuple[Provider, list[_CandidateFile]]]:
    """Per provider: (name, precision, file or None, error) of each candidate; INT8 files are built once.
    ``cpu_target``: the INT8 target of the CPU they will run on (default: this machine's)."""
    from resnet_edge.quantization.configs import detect_target

    cpu_target = cpu_target or detect_target()
    int8 = _Int8Files(model_path, folder, options)
    fp16_file: list[tuple[Path | None, str | None]] = []
    result = []
    for provider in providers:
        files: list[_CandidateFile] = [("fp32", "fp32", model_path, None)]
        if options.int8:
            configs = _int8_configs(provider, cpu_target)
            for config in configs:
                label = f"{config.target.value} {config.format.value}" + ("" if config.per_channel else " per-tensor")
                files.append((f"int8 {label}", "int8", *int8.get(config, label)))
            for given, path in options.int8_models:  # built with another configuration: one more candidate
                if not any(_same_config(given, config) for config in configs):
                    label = f"{given.target.value} {given.format.value}"
                    files.append((f"int8 {label} ({Path(path).name})", "int8", require_file(path), None))
        if options.fp16 and provider.name in FP16_PROVIDERS:
            if not fp16_file:
                try:
                    fp16_file.append((convert_fp16(model_path, folder / "fp16.onnx"), None))
                except ResnetEdgeError as exc:
                    fp16_file.append((None, str(exc)))
            files.append(("fp16", "fp16", *fp16_file[0]))
        for extra in options.candidates:
            files.append((f"file {Path(extra).name}", "file", *_fits(model_path, extra)))
        result.append((provider, files))
    return result


def _int8_configs(provider: Provider, cpu_target: Int8Target) -> list[Int8Recipe]:
    """The INT8 configurations tried on ``provider``: ``gpu-tensorrt`` on the GPU providers, else the CPU target's;
    on the CPU EP also its QOperator form and (for a per-channel recipe) per-tensor, measured anew."""
    from resnet_edge.quantization.configs import Format, Int8Target, resolve_config

    if provider.name in GPU_INT8_PROVIDERS:
        return [resolve_config(Int8Target.GPU_TENSORRT)]
    configs = [resolve_config(cpu_target)]
    if provider.name == "cpu":  # QOperator against QDQ, per-tensor against per-channel, measured anew
        configs.append(resolve_config(cpu_target, format=Format.QOPERATOR))
        if configs[0].per_channel:
            configs.append(resolve_config(cpu_target, per_channel=False))
    return configs


@dataclass
class _Int8Files:
    """The INT8 candidate files, each built once (or taken from ``options.int8_models`` where the caller built it
    with the same configuration); calibration runs once per activation symmetry and is shared."""

    model_path: Path
    folder: Path
    options: TuneOptions
    built: dict[str, tuple[Path | None, str | None]] = field(default_factory=dict)
    calibrations: dict[bool, object] = field(default_factory=dict)

    def get(self, config: Int8Recipe, label: str) -> tuple[Path | None, str | None]:
        """The file for ``config`` (named by ``label``), or None and why quantization failed."""
        if label not in self.built:
            ready = next((path for given, path in self.options.int8_models if _same_config(given, config)), None)
            if ready is not None:
                self.built[label] = (require_file(ready, what="INT8 model"), None)
            else:
                self.built[label] = self._quantize(config, self.folder / f"int8-{label.replace(' ', '-')}.onnx")
        return self.built[label]

    def _quantize(self, config: Int8Recipe, path: Path) -> tuple[Path | None, str | None]:
        from resnet_edge.quantization.calibrate import calibrate_onnx
        from resnet_edge.quantization.options import QuantizeOptions
        from resnet_edge.quantization.quantize import quantize_onnx

        options = self.options
        quantize = QuantizeOptions(
            calib=options.calib,
            eval_data=options.data,
            label_map=options.label_map,
            limit=options.limit,
            seed=options.seed,
            config=config,
        )
        symmetric = config.symmetric_activations
        try:
            if symmetric not in self.calibrations:
                where = self.folder / f"calibration-{'symmetric' if symmetric else 'asymmetric'}"
                where.mkdir(exist_ok=True)
                self.calibrations[symmetric] = calibrate_onnx(self.model_path, where, quantize)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResnetEdgeWarning)  # quantize's own notes; validate judges below
                quantize_onnx(
                    self.model_path,
                    path,
                    QuantizeOptions(**{**quantize.__dict__, "measure_speed": False}),
                    calibration=self.calibrations[symmetric],
                )
        except ResnetEdgeError as exc:
            return None, f"quantization failed: {exc}"
        return path, None


def _same_config(a: Int8Recipe, b: Int8Recipe) -> bool:
    """The same INT8 configuration, whatever the reason recorded for choosing it."""

    return dataclasses.replace(a, reason="") == dataclasses.replace(b, reason="")


def _fits(model_path: Path, candidate: Path) -> tuple[Path | None, str | None]:
    """A candidate file, or why it cannot stand in for the model (another input shape)."""
    from resnet_edge.onnx.metadata import static_input_shape

    candidate = require_file(candidate, what="candidate model")
    want, got = static_input_shape(load_onnx(model_path))[1:], static_input_shape(load_onnx(candidate))[1:]
    if want != got:
        return None, f"takes input {list(got)}, the model takes {list(want)}"
    return candidate, None


def _judge_and_time(
    provider: Provider,
    files: list[_CandidateFile],
    reference: Path,
    batches: list[int],
    options: TuneOptions,
    measure: Measure,
    *,
    random_weights: bool = False,
) -> list[Candidate]:
    """Judge and time one provider's candidates. With ``random_weights``, an INT8 or FP16 candidate is judged by its
    logit error against FP32 instead of validate's agreement bar (:func:`_judged`)."""
    runnable = [(name, precision, path) for name, precision, path, error in files if path is not None]
    # One file may serve several candidates (fp32 is the reference itself); validate and time each file once.
    paths = list(dict.fromkeys(str(path) for _, _, path in runnable))
    thresholds, timing_options = _measure_options(provider, batches, options)
    validation, timing = measure(paths, reference, thresholds, timing_options)
    threading = _deployed_threading(provider, options, spinning=timing_options.spinning)
    rows = {row.path: row for row in validation.rows}
    p50, intervals, cvs = _timings_by_path(timing)
    validated = {str(path) for _, path in options.int8_models}
    candidates: list[Candidate] = []
    for name, precision, path, error in files:
        if path is None:
            candidates.append(Candidate(name, provider.value, precision, "", error=error))
            continue
        row = rows[str(path)]
        judged_by, failures, steps = _judged(row, Path(path), random_weights=random_weights)
        candidates.append(
            Candidate(
                name=name,
                provider=provider.value,
                precision=precision,
                path=str(path),
                ran_on=row.ran_on,
                placement=row.placement.describe() if row.placement else None,
                integer_fraction=row.coverage.fraction if row.coverage else None,
                int8_coverage=row.coverage.describe() if row.coverage else None,
                passed=not failures and not row.fell_back,
                failures=tuple(failures + ([f"ran on {row.ran_on}, not {provider.value}"] if row.fell_back else [])),
                top1_agreement=row.parity.top1_agreement,
                accuracy=row.accuracy.top1 if row.accuracy else None,
                max_abs_error=row.parity.max_abs_error,
                p50_ms=p50.get(str(path), {}),
                p50_interval_ms=intervals.get(str(path), {}),
                cv=cvs.get(str(path), {}),
                validated=str(path) in validated,
                judged_by=judged_by,
                max_error_steps=steps,
                threading=threading,
            )
        )
    return candidates


def _measure_options(
    provider: Provider, batches: list[int], options: TuneOptions
) -> tuple[ValidateOptions, BenchmarkOptions]:
    """validate's thresholds and benchmark's timing for one provider's candidates, from tune's options."""
    from resnet_edge.evaluation.options import BenchmarkOptions, ValidateOptions

    thresholds = ValidateOptions(
        data=options.data,
        label_map=options.label_map,
        providers=(provider,),
        min_agreement=options.min_agreement,
        max_top1_drop=options.max_top1_drop,
    )
    timing = BenchmarkOptions(
        providers=(provider,),
        batch_sizes=tuple(batches),
        threads=options.threads,
        warmup=options.warmup,
        iterations=options.iterations,
        data=options.data,
    )
    return thresholds, timing


def _deployed_threading(provider: Provider, options: TuneOptions, *, spinning: bool) -> dict:
    """The threading the candidates were timed with, which is the one they deploy with (:func:`threading_record`);
    the OpenVINO runtime's own threads and hints for it (onnxruntime's spinning does not apply)."""
    from resnet_edge.evaluation.benchmark import threading_record

    threads = options.threads or default_threads()
    if provider.ort_name == OPENVINO_RUNTIME:
        return _openvino_threading(provider, threads, spinning=spinning)
    return threading_record(threads, spinning=spinning)


def _openvino_threading(provider: Provider, threads: int, *, spinning: bool) -> dict:
    """The OpenVINO runtime's compile config for ``provider`` and ``threads`` (onnxruntime's spinning does not apply),
    as :func:`resnet_edge.onnx.openvino_runtime.cpu_config` builds it from the provider text the deployment opens, and
    how it was timed (``spinning``: in phases of its own)."""
    from resnet_edge.evaluation.benchmark import how_timed
    from resnet_edge.onnx.openvino_runtime import cpu_config

    return {"compile_config": cpu_config(provider, threads), "timed": how_timed(spinning)}


def _timings_by_path(
    timing: BenchmarkResult,
) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, tuple[float, float]]], dict[str, dict[int, float]]]:
    """Per model file and batch: the median latency, its 95% interval (where there is one) and the CV."""
    p50: dict[str, dict[int, float]] = {}
    intervals: dict[str, dict[int, tuple[float, float]]] = {}
    cvs: dict[str, dict[int, float]] = {}
    for row in timing.rows:
        if row.latency is not None and row.path is not None:
            p50.setdefault(row.path, {})[row.batch] = row.latency.p50_ms
            cvs.setdefault(row.path, {})[row.batch] = row.latency.cv
            interval = median_interval(row.latency.samples_ms)
            if interval is not None:
                intervals.setdefault(row.path, {})[row.batch] = interval
    return p50, intervals, cvs


def _judged(row: ValidateRow, path: Path, *, random_weights: bool) -> tuple[str, list[str], float | None]:
    """How a candidate is judged, what it misses, and its max logit error in output steps.

    Validate's row decides, except for a reduced-precision (INT8, FP16) candidate of a model whose weights are known
    to be random: its logits are nearly tied, INT8 rounding flips top-1 at random, and agreement measures noise
    (issue 24: tune then silently deployed FP32). It is judged as ``quantize`` judges such a model, by the logit error
    (:func:`resnet_edge.onnx.parity.logit_error_shortfalls`: worst-image cosine, max error in output steps); the
    FP32 candidate keeps FP32's tolerance on the logits, which does not depend on decisions.
    """
    from resnet_edge.evaluation.validate import has_float16_weights

    proto = load_onnx(path)
    step = output_step(proto) if row.quantized else None
    steps = row.parity.max_abs_error / step if step else None
    reduced = row.quantized or has_float16_weights(proto)
    if not (random_weights and reduced):
        return "top-1 agreement", list(row.failures), steps
    return "logit error", logit_error_shortfalls(row.parity, step), steps


def _runtime_of(provider: str) -> str:
    """Which runtime a deployment on ``provider`` runs on, with its version: what a user installs to run it."""
    from resnet_edge.onnx.plugins import openvino_runtime_version
    from resnet_edge.onnx.providers import parse_provider

    if parse_provider(provider).ort_name == OPENVINO_RUNTIME:
        return f"openvino {openvino_runtime_version()}"
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def _thresholds_record(options: TuneOptions, random_weights: bool) -> ThresholdsRecord:
    """The bar the candidates were held to, for the record."""
    bar = RandomWeightsBar(
        judged_by="logit error (INT8 and FP16 candidates): the weights are random, agreement measures noise",
        min_cosine=RANDOM_WEIGHTS_MIN_COSINE,
        max_error_steps=RANDOM_WEIGHTS_MAX_STEPS,
    )
    random = bar if random_weights else None
    return ThresholdsRecord(options.min_agreement, options.max_top1_drop, random_weights=random)


def _measure_here(
    paths: list[str], reference: Path, thresholds: ValidateOptions, timing: BenchmarkOptions
) -> tuple[ValidateResult, BenchmarkResult]:
    from resnet_edge.evaluation.benchmark import benchmark_models
    from resnet_edge.evaluation.validate import Reference, validate_models

    return validate_models(paths, Reference(onnx=reference), thresholds), benchmark_models(paths, timing)


def rank_candidates(passing: Sequence[Candidate], batch: int) -> tuple[Candidate, str]:
    """The candidate to deploy, and why.

    The fastest passing candidate at ``batch`` wins only where the timing can tell: any candidate within SPEED_TIE
    of it, or whose 95% interval of the median overlaps the fastest's, is tied with it (issue 21: QOperator was chosen
    over the validated QDQ model on a 0.3% gap measured with 91% variation). Among the tied, the candidate already
    validated (``validated``) stays; else the one whose Conv/Gemm MACs run most in integer kernels (which stays fast
    where timing cannot be trusted), then the higher top-1 agreement, then the lower median.
    """
    fastest = min(passing, key=lambda c: c.p50_ms[batch])

    def tied(c: Candidate) -> bool:
        if c.p50_ms[batch] <= fastest.p50_ms[batch] * (1 + SPEED_TIE):
            return True
        mine, best = c.p50_interval_ms.get(batch), fastest.p50_interval_ms.get(batch)
        return mine is not None and best is not None and mine[0] <= best[1]

    ties = [c for c in passing if tied(c)]
    validated = next((c for c in ties if c.validated), None)
    chosen = validated or max(
        ties,
        key=lambda c: (
            c.integer_fraction if c.integer_fraction is not None else 1.0,
            c.top1_agreement if c.top1_agreement is not None else 0.0,
            -c.p50_ms[batch],
        ),
    )
    timing = f"p50 {_with_interval(chosen, batch)} at batch {batch}"
    if chosen is fastest:
        others = [c for c in ties if c is not chosen]
        tie_note = f"; tied with {', '.join(_named(c, batch) for c in others)}" if others else ""
        return chosen, f"the fastest that passed: {timing}{tie_note}"
    why = "it was validated already" if chosen is validated else "it runs more in integer kernels or agrees more"
    return chosen, (
        f"{timing}; {_named(fastest, batch)} was faster by"
        f" {100 * (1 - fastest.p50_ms[batch] / chosen.p50_ms[batch]):.1f}%, within the measured noise, and {why}"
    )


EMULATED_CHOICE = "timing under emulation was not used: chosen by parity and integer coverage"


def rank_by_coverage(passing: Sequence[Candidate]) -> tuple[Candidate, str]:
    """The candidate to deploy where timings cannot be trusted at all (an emulated device), and why.

    The passing candidate whose Conv/Gemm MACs run most in integer kernels there (FP32 runs none), then the higher
    top-1 agreement, then the smaller logit error; the order tried breaks a tie (QDQ before QOperator).
    """
    chosen = max(
        passing,
        key=lambda c: (
            c.integer_fraction or 0.0,
            c.top1_agreement if c.top1_agreement is not None else 0.0,
            -(c.max_abs_error if c.max_abs_error is not None else float("inf")),
        ),
    )
    coverage = fmt.percent(chosen.integer_fraction or 0.0, digits=0)
    return chosen, (
        f"{EMULATED_CHOICE}: {coverage} of its Conv/Gemm MACs in integer kernels, top-1 agreement"
        f" {fmt.percent(chosen.top1_agreement)}"
    )


def _with_interval(c: Candidate, batch: int) -> str:
    return f"{fmt.ms(c.p50_ms[batch], unit=True)}" + (
        f" (95% {fmt.ms(c.p50_interval_ms[batch][0])}-{fmt.ms(c.p50_interval_ms[batch][1])})"
        if batch in c.p50_interval_ms
        else ""
    )


def _named(c: Candidate, batch: int) -> str:
    return f"{c.name} on {c.provider} ({_with_interval(c, batch)})"


def _warn_noisy_baseline(baseline: Candidate) -> None:
    """Every speed-up divides by the CPU FP32 timing: say so when it was noisy, as benchmark says of any row."""
    for batch, cv in sorted(baseline.cv.items()):
        if cv > NOISY_CV:
            warnings.warn(
                f"the speed-ups at batch {batch} divide by {baseline.name} on cpu, whose timing varied by {cv:.1%}"
                " (CV): the machine was busy, treat them with care",
                ResnetEdgeWarning,
                stacklevel=4,  # tune_model's caller (through _measure_candidates)
            )


def _with_speedup(candidate: Candidate, baseline: Candidate) -> Candidate:
    ratios = {b: baseline.p50_ms[b] / ms for b, ms in candidate.p50_ms.items() if b in baseline.p50_ms and ms > 0}
    return Candidate(**{**candidate.__dict__, "speedup_vs_cpu_fp32": ratios})


def _with_path(candidate: Candidate, path: str) -> Candidate:
    return Candidate(**{**candidate.__dict__, "path": path})


def _as_record(candidate: Candidate, folder: Path) -> Candidate:
    """``candidate`` as its record keeps it: built candidates lived in a temporary folder, so their file name says
    which; a file given is named where it is, from the record's ``folder``."""
    if candidate.precision == "file":
        return _with_path(candidate, path_for_record(candidate.path, folder))
    return _with_path(candidate, Path(candidate.path).name)
