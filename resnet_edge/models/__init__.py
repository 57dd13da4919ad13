"""The PyTorch side: the ResNet definition, its registry and data defaults, checkpoints, gradient flow.

Independent of the ONNX layer: nothing here imports :mod:`resnet_edge.onnx`, and the reverse. The public names below
are re-exported lazily: importing this package does not import torch.
"""

from __future__ import annotations

from resnet_edge._exports import lazy_exports

# Public names, by the submodule that defines them.
_EXPORTS = {
    **dict.fromkeys(("ResNet", "create_model"), "resnet"),
    **dict.fromkeys(("ArchSpec", "Variant", "get_arch", "list_models", "default_preprocessing"), "registry"),
    **dict.fromkeys(("LoadedModel", "build_model"), "checkpoints"),
    **dict.fromkeys(("GradFlowOptions",), "options"),
    **dict.fromkeys(("gradient_flow", "compare_gradient_flow"), "gradflow"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
