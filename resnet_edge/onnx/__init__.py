"""The ONNX layer: what a model file is and how it runs, without torch.

:mod:`.graph` reads a graph (the one :class:`GraphIndex` of who makes and reads each tensor, op counts, MACs),
:mod:`.op_types` names the op types it sorts nodes by, :mod:`.io` reads and writes model files, :mod:`.metadata` the
self-description a file carries, :mod:`.runtime` opens every onnxruntime session (providers, placement audit),
:mod:`.parity` compares outputs, :mod:`.inspection` describes a file. Imports nothing above it; :mod:`.runtime` and
:mod:`.op_types` ship to devices.

The public names below are re-exported lazily: importing this package imports neither onnx nor onnxruntime.
"""

from __future__ import annotations

from resnet_edge._exports import lazy_exports

# Public name -> the submodule that defines it.
_EXPORTS = {
    "COMPUTE_OPS": "op_types",
    "INTEGER_COMPUTE_OPS": "op_types",
    "QUANTIZED_OPS": "op_types",
    "GraphIndex": "graph",
    "QuantParams": "graph",
    "is_quantized": "graph",
    "module_path": "graph",
    "load_onnx": "io",
    "save_onnx": "io",
    "read_metadata": "metadata",
    "Parity": "parity",
    "Accuracy": "parity",
    "compare_outputs": "parity",
    "Provider": "runtime",
    "open_session": "runtime",
    "inspect_onnx": "inspection",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
