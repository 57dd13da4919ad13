"""The whole flow in one call, and its report.

Public names, imported on first use (PEP 562) so that ``import resnet_edge.pipeline`` stays cheap:

- :func:`run_pipeline` (``pipeline.run``): every stage into OUTDIR, with the report;
- :class:`PipelineConfig`: every option of a run (the stages' options, and the run's own);
- :class:`PipelineResult` (``pipeline.result``): each stage's typed result, what the report renders;
- :class:`Stage` (``pipeline.stages``): the shape of a stage, and :data:`STAGES`, the pipeline's, in order;
- :func:`write_report` (``pipeline.report``): report.json, report.md, report.html and the plots for a result.
- :class:`ReportDocument` (``pipeline.document``): a report.json read back and checked, what the pages render.
"""

from __future__ import annotations

from resnet_edge._exports import lazy_exports

# Public names, by the submodule that defines them.
_EXPORTS = {
    **dict.fromkeys(("run_pipeline",), "run"),
    **dict.fromkeys(("PipelineConfig", "load_config"), "config"),
    **dict.fromkeys(("PipelineResult",), "result"),
    **dict.fromkeys(("Stage", "STAGES"), "stages"),
    **dict.fromkeys(("write_report",), "report"),
    **dict.fromkeys(("ReportDocument",), "document"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
