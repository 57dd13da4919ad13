"""Training and fine-tuning on the PyTorch side: the data (decoded once, augmented in batches), the loop, the stage.

Above :mod:`resnet_edge.models`, :mod:`resnet_edge.calibration` and :mod:`resnet_edge.quantization`, below
:mod:`resnet_edge.conversion`; imports torch, never onnx or onnxruntime. The public names below are re-exported lazily:
importing this package does not import torch.
"""

from __future__ import annotations

from resnet_edge._exports import lazy_exports

# Public names, by the submodule that defines them.
_EXPORTS = {
    **dict.fromkeys(("TrainOptions", "Schedule", "Augment", "Normalize"), "options"),
    **dict.fromkeys(("TrainResult", "train_model", "initial_model", "metrics_path", "resume_path"), "train"),
    **dict.fromkeys(("EpochMetrics", "SGDStep", "Step", "fit", "evaluate"), "loop"),
    **dict.fromkeys(("LabelledTensors", "BatchAugment"), "data"),
    **dict.fromkeys(("QatResult", "train_qat", "prepare_qat"), "qat"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
