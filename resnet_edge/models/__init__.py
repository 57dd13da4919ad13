"""The PyTorch side: the ResNet definition, its registry and data defaults, checkpoints, gradient flow.

Independent of the ONNX layer: nothing here imports :mod:`resnet_edge.onnx`, and the reverse. The public names below
are re-exported lazily: importing this package does not import torch.
"""

from __future__ import annotations

from resnet_edge._exports import lazy_exports

# Public name -> the submodule that defines it.
_EXPORTS = {
    "ResNet": "resnet",
    "create_model": "resnet",
    "ArchSpec": "registry",
    "Variant": "registry",
    "get_arch": "registry",
    "list_models": "registry",
    "default_preprocessing": "registry",
    "LoadedModel": "checkpoints",
    "build_model": "checkpoints",
    "GradFlowOptions": "options",
    "gradient_flow": "gradflow",
    "compare_gradient_flow": "gradflow",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
