"""What a pipeline run gives back: its events as it goes, and the typed result the report renders.

The one place the pipeline's file names live (:data:`FILES`); where a configuration value came from is
:mod:`resnet_edge.pipeline.config`'s. Imports no stage's code at run time: the report reads this, not the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resnet_edge.conversion.export import ExportResult
    from resnet_edge.conversion.simplify import SimplifyResult
    from resnet_edge.device.fleet import FleetBenchmarkResult
    from resnet_edge.evaluation.benchmark import BenchmarkResult
    from resnet_edge.evaluation.tune import TuneResult
    from resnet_edge.evaluation.validate import ValidateResult
    from resnet_edge.pipeline.config import PipelineConfig
    from resnet_edge.quantization.quantize import QuantizeResult

# The model file each stage writes into OUTDIR, in the order the stages run.
FILES = {
    "export": "model.onnx",
    "simplify": "model.sim.onnx",
    "quantize": "model.int8.onnx",
    "tune": "model.tuned.onnx",  # + model.tuned.onnx.json, every candidate tune tried
}


def tuned_file(target: str | None, several: bool) -> str:
    """The deployment's file: ``model.tuned.onnx``, or with several ``--target`` devices one per device, named after
    it (``ssh://pi@10.0.0.7:2222`` -> ``model.tuned.pi-10.0.0.7-2222.onnx``; a long exec: prefix shortened, with a
    hash of the whole so that two stay apart)."""
    import hashlib
    import re

    if target is None or not several:
        return FILES["tune"]
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", target.split("://", 1)[-1]).strip("-.") or "device"
    if len(slug) > 40:
        slug = f"{slug[:31]}-{hashlib.sha256(target.encode()).hexdigest()[:8]}"
    return FILES["tune"].replace(".onnx", f".{slug}.onnx")


# The report's files beside them (the plots' are in pipeline/plots.py).
REPORT_JSON, REPORT_MARKDOWN, REPORT_HTML = "report.json", "report.md", "report.html"

# The stages whose results the report records, in order.
STAGES = ("export", "simplify", "quantize", "validate", "benchmark", "devices", "tune")


@dataclass
class PipelineResult:
    """Every stage's typed result (None for a stage that did not run), and where the run stopped if it did."""

    outdir: Path
    config: PipelineConfig
    export: ExportResult | None = None
    simplify: SimplifyResult | None = None
    quantize: QuantizeResult | None = None
    validate: ValidateResult | None = None
    benchmark: BenchmarkResult | None = None
    devices: FleetBenchmarkResult | None = None  # the models benchmarked on the --target devices
    tune: TuneResult | None = None  # the deployment chosen by measurement (the first target's, with --target)
    # One per --target device, chosen there (issue 22), in the order given; without targets, the one chosen here.
    tunes: list[TuneResult] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    failed_stage: str | None = None
    error: str | None = None
    artifacts: list[str] = field(default_factory=list)
    random_weights: Path | None = None  # the temporary checkpoint of fresh weights, when no weights were given

    @property
    def completed(self) -> bool:
        return self.failed_stage is None

    def file_sizes(self) -> dict[str, int]:
        """Model file name -> its size in bytes, as the stage that wrote it recorded it (stages that ran only)."""
        sizes = {
            FILES["export"]: self.export.file_bytes if self.export else None,
            FILES["simplify"]: self.simplify.bytes_after if self.simplify else None,
            FILES["quantize"]: self.quantize.bytes_after if self.quantize else None,
        }
        return {name: size for name, size in sizes.items() if size is not None}
