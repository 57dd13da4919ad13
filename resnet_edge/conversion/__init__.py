"""PyTorch to ONNX and ONNX to its simplified form: the export and simplify stages.

Their options (:mod:`.options`) import no heavy library, so the CLI makes its flags from them at start-up.
"""

from __future__ import annotations

from resnet_edge._exports import lazy_exports

# Public name -> the submodule that defines it.
_EXPORTS = {
    "ExportOptions": "options",
    "SimplifyOptions": "options",
    "Exporter": "options",
    "ExportResult": "export",
    "export_onnx": "export",
    "SimplifyResult": "simplify",
    "simplify_onnx": "simplify",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
