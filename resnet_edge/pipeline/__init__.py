"""The whole flow in one call, and its report.

Public names, imported on first use (PEP 562) so that ``import resnet_edge.pipeline`` stays cheap:

- :func:`run_pipeline` (``pipeline.run``): every stage into OUTDIR, with the report;
- :class:`PipelineConfig`: every option of a run;
- :class:`PipelineResult` (``pipeline.result``): each stage's typed result, what the report renders;
- :func:`write_report` (``pipeline.report``): report.json, report.md, report.html and the plots for a result.
"""

from __future__ import annotations

import importlib

# Public name -> the module (in this package) that defines it. PipelineConfig is looked for in ``config`` first.
_EXPORTS = {
    "run_pipeline": ("run",),
    "PipelineConfig": ("config", "run"),
    "PipelineResult": ("result",),
    "StageEvent": ("result",),
    "write_report": ("report",),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module in _EXPORTS[name]:
        try:
            found = importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{module}":
                raise
            continue
        if hasattr(found, name):
            value = getattr(found, name)
            globals()[name] = value
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
