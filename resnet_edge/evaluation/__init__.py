"""Judging models: validate (parity and accuracy), benchmark (latency), tune (the fastest candidate that passes).

Their options (:mod:`.options`) import no heavy library, so the CLI makes its flags from them at start-up.
"""

from __future__ import annotations

from resnet_edge._exports import lazy_exports

# Public names, by the submodule that defines them.
_EXPORTS = {
    **dict.fromkeys(("ValidateOptions", "BenchmarkOptions", "TuneOptions"), "options"),
    **dict.fromkeys(("ValidateResult", "validate_models"), "validate"),
    **dict.fromkeys(("BenchmarkResult", "benchmark_models"), "benchmark"),
    **dict.fromkeys(("TuneResult", "tune_model"), "tune"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
