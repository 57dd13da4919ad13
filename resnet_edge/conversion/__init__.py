"""PyTorch to ONNX and ONNX to its simplified form: the export and simplify stages.

Their options (:mod:`.options`) import no heavy library, so the CLI makes its flags from them at start-up.
"""

from __future__ import annotations

from resnet_edge._exports import lazy_exports

# Public names, by the submodule that defines them.
_EXPORTS = {
    **dict.fromkeys(("ExportOptions", "SimplifyOptions", "Exporter"), "options"),
    **dict.fromkeys(("ExportResult", "export_onnx"), "export"),
    **dict.fromkeys(("SimplifyResult", "simplify_onnx"), "simplify"),
    **dict.fromkeys(("QatExport", "qat_onnx"), "qat"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
