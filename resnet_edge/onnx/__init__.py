"""The ONNX layer: what a model file is and how it runs, without torch.

:mod:`.graph` reads a graph (the one :class:`GraphIndex` of who makes and reads each tensor, op counts, MACs),
:mod:`.op_types` names the op types it sorts nodes by, :mod:`.io` reads and writes model files, :mod:`.metadata` the
self-description a file carries, :mod:`.providers` names the execution providers (no onnxruntime), :mod:`.plugins`
says which of them load here, :mod:`.runtime` opens every onnxruntime session, :mod:`.placement` audits where its
nodes ran, :mod:`.parity` compares outputs, :mod:`.inspection` describes a file. Imports nothing above it;
:mod:`.runtime` (with :mod:`.providers`, :mod:`.plugins`, :mod:`.placement`) and :mod:`.op_types` ship to devices.

The public names below are re-exported lazily: importing this package imports neither onnx nor onnxruntime.
"""

from __future__ import annotations

from resnet_edge._exports import lazy_exports

# Public names, by the submodule that defines them.
_EXPORTS = {
    **dict.fromkeys(("COMPUTE_OPS", "INTEGER_COMPUTE_OPS", "QUANTIZED_OPS"), "op_types"),
    **dict.fromkeys(("GraphIndex", "QuantParams", "is_quantized", "module_path"), "graph"),
    **dict.fromkeys(("load_onnx", "save_onnx"), "io"),
    **dict.fromkeys(("read_metadata",), "metadata"),
    **dict.fromkeys(("Parity", "Accuracy", "compare_outputs"), "parity"),
    **dict.fromkeys(("Provider",), "providers"),
    **dict.fromkeys(("open_session",), "runtime"),
    **dict.fromkeys(("inspect_onnx",), "inspection"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
