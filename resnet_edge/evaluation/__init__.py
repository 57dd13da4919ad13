"""Judging models: validate (parity and accuracy), benchmark (latency), tune (the fastest candidate that passes).

Their options (:mod:`.options`) import no heavy library, so the CLI makes its flags from them at start-up.
"""

from __future__ import annotations

from resnet_edge._exports import lazy_exports

# Public name -> the submodule that defines it.
_EXPORTS = {
    "ValidateOptions": "options",
    "BenchmarkOptions": "options",
    "TuneOptions": "options",
    "ValidateResult": "validate",
    "validate_models": "validate",
    "BenchmarkResult": "benchmark",
    "benchmark_models": "benchmark",
    "TuneResult": "tune",
    "tune_model": "tune",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
