"""The pipeline's stages, in one shape: a :class:`Stage`, which the run drives and a caller may replace.

A stage reads ``source`` (a model file, or the models it measures), writes ``output`` (None for a stage that only
measures), takes its own options object, tells ``on_progress`` how it goes, and returns its typed result. Each stage
here is one library call; :data:`STAGES` are the pipeline's, in the order they run. ``run_pipeline(config, outdir,
stages=[...])`` runs others in place of those of the same name: how a test makes a stage fail.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from resnet_edge.conversion.export import ExportResult, export_onnx
from resnet_edge.conversion.options import ExportOptions, SimplifyOptions
from resnet_edge.conversion.simplify import SimplifyResult, simplify_onnx
from resnet_edge.device.fleet import FleetBenchmarkResult, benchmark_on_targets, parse_targets, tune_on_target
from resnet_edge.device.targets import RemoteOptions
from resnet_edge.evaluation.benchmark import BenchmarkResult, benchmark_models
from resnet_edge.evaluation.options import BenchmarkOptions, TuneOptions, ValidateOptions
from resnet_edge.evaluation.tune import TuneResult, tune_model
from resnet_edge.evaluation.validate import Reference, ValidateResult, validate_models
from resnet_edge.progress import ProgressCallback
from resnet_edge.quantization.options import QuantizeOptions
from resnet_edge.quantization.quantize import QuantizeResult, quantize_onnx

OptionsT = TypeVar("OptionsT")


class Stage(Protocol):
    """One stage of a run: ``name`` (what the run and its report call it) and ``run``, which returns its result."""

    name: str

    def run(self, source: Any, output: Path | None, options: Any, on_progress: ProgressCallback | None) -> Any: ...


@dataclass(frozen=True)
class OnTargets(Generic[OptionsT]):
    """A stage's options for a run on --target devices: its own, the devices, and how they are reached."""

    options: OptionsT
    targets: tuple[str, ...]
    remote: RemoteOptions


def _as_stage(stage: str, on_progress: ProgressCallback | None) -> ProgressCallback | None:
    """``on_progress``, told the device layer's events as the stage's own (they are named by the runner's job)."""
    if on_progress is None:
        return None
    return lambda progress: on_progress(dataclasses.replace(progress, stage=stage))


class Export:
    name = "export"

    def run(
        self, source: str, output: Path, options: ExportOptions, on_progress: ProgressCallback | None
    ) -> ExportResult:
        return export_onnx(source, output, options, on_progress=on_progress)


class Simplify:
    name = "simplify"

    def run(
        self, source: Path, output: Path, options: SimplifyOptions, on_progress: ProgressCallback | None
    ) -> SimplifyResult:
        return simplify_onnx(source, output, options, on_progress=on_progress)


class Quantize:
    name = "quantize"

    def run(
        self, source: Path, output: Path, options: QuantizeOptions, on_progress: ProgressCallback | None
    ) -> QuantizeResult:
        return quantize_onnx(source, output, options, on_progress=on_progress)


class Validate:
    """The models judged against the reference they came from: ``source`` is ``(models, reference)``."""

    name = "validate"

    def run(
        self,
        source: tuple[list[Path], Reference],
        output: None,
        options: ValidateOptions,
        on_progress: ProgressCallback | None,
    ) -> ValidateResult:
        models, reference = source
        return validate_models(models, reference, options, on_progress=on_progress)


class Benchmark:
    name = "benchmark"

    def run(
        self, source: list[Path], output: None, options: BenchmarkOptions, on_progress: ProgressCallback | None
    ) -> BenchmarkResult:
        return benchmark_models(source, options, on_progress=on_progress)


class Devices:
    """The models benchmarked on each --target device, in parallel."""

    name = "devices"

    def run(
        self,
        source: list[Path],
        output: None,
        options: OnTargets[BenchmarkOptions],
        on_progress: ProgressCallback | None,
    ) -> FleetBenchmarkResult:
        targets = parse_targets(list(options.targets))
        progress = _as_stage(self.name, on_progress)
        return benchmark_on_targets(source, targets, options.options, options.remote, on_progress=progress)


class Tune:
    """The deployment chosen by measurement, here, or on the one --target device ``options`` names."""

    name = "tune"

    def run(
        self,
        source: Path,
        output: Path,
        options: TuneOptions | OnTargets[TuneOptions],
        on_progress: ProgressCallback | None,
    ) -> TuneResult:
        if not isinstance(options, OnTargets):
            return tune_model(source, output, options, on_progress=on_progress)
        [target] = options.targets
        progress = _as_stage(self.name, on_progress)
        return tune_on_target(source, output, options.options, target, options.remote, on_progress=progress)


STAGES: tuple[Stage, ...] = (Export(), Simplify(), Quantize(), Validate(), Benchmark(), Devices(), Tune())
