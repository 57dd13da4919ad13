"""The evaluation stages' options, declared once: the library's dataclasses, which the CLI's flags are made from.

This module imports neither numpy, onnx nor onnxruntime (the execution providers' type is read only when an options
object is made), so that the CLI can build its options from these classes at start-up. Each field's ``metadata``
carries its flag's help text (``help``) and, where it differs from the field's name, the flag (``flag``); each class
checks its own values in ``__post_init__``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from resnet_edge.calibration.labels import LABEL_MAP
from resnet_edge.errors import OptionError
from resnet_edge.onnx.providers import Provider

if TYPE_CHECKING:
    from resnet_edge.quantization.configs import Int8Recipe

# Benchmark's defaults, declared here once (a light module: the CLI shows them in --help without loading numpy).
DEFAULT_WARMUP = 10
DEFAULT_ITERATIONS = 100
# Upper bounds, so that a typo (--duration 1e308, --iterations 10**12) cannot run for ever: one hour per provider
# and batch size is far beyond what a stable median needs.
MAX_DURATION_S = 3600.0
MAX_ITERATIONS = 1_000_000
MAX_WARMUP = 100_000
DEFAULT_BATCH = 8  # validate's inference batch
DEFAULT_TUNE_ITERATIONS = 30
DEFAULT_TUNE_WARMUP = 5

_STRICT_EP_HELP = (
    "Fail if a provider is missing, or leaves compute ops to another (partial placement), instead of"
    " falling back to cpu."
)


def _cpu_only() -> tuple[Provider, ...]:
    return (Provider.CPU,)


def _check_at_least(name: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise OptionError(f"{name} must be at least {low}, got {value}")


def _check_thresholds(min_agreement: float | None, max_top1_drop: float | None) -> None:
    if min_agreement is not None and not 0 <= min_agreement <= 1:  # refuses NaN too
        raise OptionError(f"min agreement is a fraction from 0 to 1, got {min_agreement}")
    if max_top1_drop is not None and not 0 <= max_top1_drop <= 100:
        raise OptionError(f"max top-1 drop is in percentage points, 0 to 100, got {max_top1_drop}")


@dataclass(frozen=True)
class ValidateOptions:
    """
    Attributes:
        data: images (folder, .npy/.npz, builtin:NAME); default: the models' built-in test split, else the photos.
        labels_file: labels for a folder without class sub-folders.
        label_map: which model class each data class is (``calibration.labels``); default: the model's labels.
        providers: each model runs on each.
        strict_ep: a missing provider, or one that leaves compute ops to another (partial placement), fails instead
            of falling back to the CPU (the row says where it ran, node by node).
        min_agreement: top-1 agreement required of every model (default: exact for FP32, 99% for INT8).
        max_top1_drop: labelled top-1 accuracy a model may lose, in points (default: 0 for FP32, 1 for INT8).
        batch: inference batch size.

    Raises:
        OptionError: a batch below 1, or a threshold out of range (NaN included).
    """

    data: str | None = field(
        default=None, metadata={"help": "Images: folder (class sub-folders = labels), .npy/.npz, builtin:NAME."}
    )
    labels_file: Path | None = field(default=None, metadata={"flag": "--labels", "help": "CSV of relative/path,label."})
    label_map: Path | None = field(default=None, metadata=LABEL_MAP)
    providers: tuple[Provider, ...] = field(default_factory=_cpu_only)
    strict_ep: bool = field(default=False, metadata={"help": _STRICT_EP_HELP})
    min_agreement: float | None = field(
        default=None, metadata={"help": "Top-1 agreement required (fraction). [default: 1 FP32, 0.99 INT8]"}
    )
    max_top1_drop: float | None = field(
        default=None, metadata={"help": "Accuracy points a model may lose. [default: 0 FP32, 1 INT8]"}
    )
    batch: int = DEFAULT_BATCH

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise OptionError(f"batch must be at least 1, got {self.batch}")
        _check_thresholds(self.min_agreement, self.max_top1_drop)


@dataclass(frozen=True)
class BenchmarkOptions:
    """How to benchmark.

    Attributes:
        providers: each model is timed on each provider.
        batch_sizes: each model is timed at each batch size, all in one session per model and provider.
        threads: intra-op threads for onnxruntime and PyTorch; all logical cores when None (recorded either way).
        warmup: untimed rounds before timing.
        iterations: timed rounds (DEFAULT_ITERATIONS when neither this nor ``duration_s`` is given).
        duration_s: time each provider and batch for this long instead of a fixed count.
        torch_reference: also time PyTorch eager: an arch name (fresh weights) or a checkpoint.
        strict_ep: a missing provider, or one that leaves compute ops to another, is an error instead of a CPU
            fallback.
        data: images to time on (default: the model's built-in test split, else the bundled photos).
        spinning: time each model as a deployed single model runs: worker threads spinning between calls, each model
            in phases of its own (``timing.time_phased``). Off: the sessions interleaved call by call with spinning
            off (``timing.time_interleaved``), finer against drift but a threading no deployment uses (issue 24).

    Raises:
        OptionError: a bad batch size, iteration count, duration (NaN and inf included), warm-up or thread count, or
            both an iteration count and a duration.
    """

    providers: tuple[Provider, ...] = field(default_factory=_cpu_only)
    batch_sizes: tuple[int, ...] = field(
        default=(1,), metadata={"flag": "--batch", "help": "Comma-separated batch sizes."}
    )
    threads: int | None = field(default=None, metadata={"help": "Intra-op threads. [default: all cores]"})
    warmup: int = field(default=DEFAULT_WARMUP, metadata={"help": "Untimed rounds first."})
    iterations: int | None = field(default=None, metadata={"help": f"Timed rounds. [default: {DEFAULT_ITERATIONS}]"})
    duration_s: float | None = field(
        default=None,
        metadata={"flag": "--duration", "help": "Seconds to time each batch size, instead of --iterations."},
    )
    torch_reference: str | None = field(
        default=None, metadata={"flag": "--torch", "help": "Also time PyTorch eager: an arch name or a checkpoint."}
    )
    strict_ep: bool = field(default=False, metadata={"help": _STRICT_EP_HELP})
    data: str | None = field(default=None, metadata={"help": "Images to time on. [default: built-in]"})
    spinning: bool = field(
        default=True,
        metadata={
            "flag": "--no-spinning",
            "help": "Interleave the models call by call with worker threads not spinning, instead of timing each as"
            " deployed (spinning, in phases of its own).",
        },
    )

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise OptionError(f"batch sizes must be at least 1, got {list(self.batch_sizes)}")
        if self.iterations is not None and self.duration_s is not None:
            raise OptionError("give an iteration count or a duration, not both")
        if self.iterations is not None and not 1 <= self.iterations <= MAX_ITERATIONS:
            raise OptionError(f"iterations must be from 1 to {MAX_ITERATIONS:,}, got {self.iterations}")
        if self.duration_s is not None and not 0 < self.duration_s <= MAX_DURATION_S:  # refuses NaN and inf too
            raise OptionError(f"duration must be more than 0 and at most {MAX_DURATION_S:g} s, got {self.duration_s}")
        if not 0 <= self.warmup <= MAX_WARMUP:
            raise OptionError(f"warmup must be from 0 to {MAX_WARMUP:,}, got {self.warmup}")
        _check_at_least("threads", self.threads, 1)

    @property
    def rounds(self) -> int | None:
        """Timed rounds per provider and batch size; None when timing for ``duration_s`` instead."""
        if self.iterations is None and self.duration_s is None:
            return DEFAULT_ITERATIONS
        return self.iterations

    @property
    def total_rounds(self) -> int | None:
        """Timed rounds in the whole run, PyTorch eager's phase included (a progress bar's total)."""
        if self.rounds is None:
            return None
        phases = len(self.providers) * len(self.batch_sizes)
        if self.torch_reference and any(p.name == "cpu" and not p.options for p in self.providers):
            phases += len(self.batch_sizes)
        return self.rounds * phases


@dataclass(frozen=True)
class TuneOptions:
    """What to try and how.

    Attributes:
        providers: providers to try; default: every provider of the table that runs here.
        batch: the batch size the deployment will use; candidates are timed at batch 1 and at this one, and chosen
            at this one.
        threads: intra-op threads (all cores when None).
        data: held-out images for parity (default: the model's built-in test split, else the bundled photos).
        calib: calibration images for the INT8 candidates (default: quantize's default).
        label_map: which model class each class of ``data`` is (``calibration.labels``); default: the model's labels.
        limit: calibrate on this many images, drawn with ``seed``.
        int8: try INT8 candidates. fp16: try FP16 where the provider runs it natively.
        candidates: more model files to try (on every provider), judged and timed like the others.
        iterations, warmup: timed and untimed rounds per provider and batch size.
        min_agreement, max_top1_drop: validate's thresholds, when not its defaults (99% top-1 agreement and one
            point of accuracy for INT8 and FP16; exact for FP32).
        knobs: search the chosen candidate's runtime settings by measurement, here only
            (``evaluation.tune.search_knobs``): onnxruntime CPU's spinning, graph optimisation level, dynamic block
            base and threads; the OpenVINO runtime's thread pinning, performance hint and threads.
        int8_models: INT8 files already built from this model, with their configurations (the pipeline's
            ``model.int8.onnx``): one whose configuration a candidate needs stands in for it (no quantization), any
            other is tried as one more INT8 candidate.

    Raises:
        OptionError: a bad batch, iteration, warm-up, thread or image count, or a threshold out of range.
    """

    providers: tuple[Provider, ...] | None = None
    batch: int = field(default=1, metadata={"help": "The deployment's batch (batch 1 is timed too)."})
    threads: int | None = field(default=None, metadata={"help": "Intra-op threads. [default: all cores]"})
    data: str | None = field(
        default=None, metadata={"help": "Held-out images for parity. [default: built-in test split, else the photos]"}
    )
    calib: str | None = field(
        default=None, metadata={"help": "Calibration images for the INT8 candidates. [default: as quantize]"}
    )
    label_map: Path | None = field(default=None, metadata=LABEL_MAP)
    limit: int | None = field(default=None, metadata={"help": "Calibrate on this many images, drawn with --seed."})
    seed: int = field(default=0, metadata={"help": "Seed for drawing --limit calibration images."})
    int8: bool = field(default=True, metadata={"flag": "--no-int8", "help": "Do not try INT8."})
    fp16: bool = field(
        default=True, metadata={"flag": "--no-fp16", "help": "Do not try FP16 (tried only on cuda and tensorrt)."}
    )
    candidates: tuple[Path, ...] = field(default=(), metadata={"flag": "--candidate", "help": "Also try this file."})
    iterations: int = field(default=DEFAULT_TUNE_ITERATIONS, metadata={"help": "Timed rounds per provider and batch."})
    warmup: int = field(default=DEFAULT_TUNE_WARMUP, metadata={"cli": False})
    min_agreement: float | None = field(
        default=None, metadata={"help": "Top-1 agreement required (fraction). [default: validate's]"}
    )
    max_top1_drop: float | None = field(
        default=None, metadata={"help": "Accuracy points a candidate may lose. [default: validate's]"}
    )
    knobs: bool = field(
        default=True,
        metadata={
            "flag": "--no-knobs",
            "help": "Do not search the runtime's settings (onnxruntime: spinning, optimisation level, threads;"
            " OpenVINO: pinning, hint, threads).",
        },
    )
    int8_models: tuple[tuple[Int8Recipe, Path], ...] = field(default=(), metadata={"cli": False})

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise OptionError(f"batch must be at least 1, got {self.batch}")
        if self.iterations < 1 or self.warmup < 0:
            raise OptionError(f"iterations must be at least 1 and warmup 0 or more, got {self.iterations}")
        _check_at_least("threads", self.threads, 1)
        _check_at_least("limit", self.limit, 1)
        _check_at_least("seed", self.seed, 0)
        _check_thresholds(self.min_agreement, self.max_top1_drop)
