"""What exporting a model will take in memory, measured on PyTorch's meta device before any real allocation."""

from __future__ import annotations

from resnet_edge.memory import _FLOAT_BYTES, LIVE_ACTIVATIONS, WEIGHT_COPIES, MemoryEstimate

# Training keeps every module's output for the backward pass, and the backward pass adds a gradient of each.
TRAINING_ACTIVATION_COPIES = 2
# Training holds the weights, their gradients, SGD's momentum and the checkpoint being written.
TRAINING_WEIGHT_COPIES = 4


def torch_estimate(
    arch: str, *, num_classes: int | None, in_chans: int, variant: str, input_size: int, training: bool = False
) -> MemoryEstimate:
    """Memory of exporting and checking ``arch`` (or, with ``training``, of training it), measured on PyTorch's meta
    device (shapes only, no memory).

    Raises:
        OptionError: as :func:`resnet_edge.models.resnet.create_model`.
    """
    import torch

    from resnet_edge.models.resnet import create_model

    with torch.device("meta"):
        model = create_model(arch, num_classes=num_classes, in_chans=in_chans, variant=variant).eval()
    largest = total = 0

    def record(module: object, inputs: object, output: object) -> None:
        nonlocal largest, total
        if isinstance(output, torch.Tensor):
            largest = max(largest, output[0].numel() * _FLOAT_BYTES)
            total += output[0].numel() * _FLOAT_BYTES

    handles = [m.register_forward_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            logits = model(torch.empty(1, in_chans, input_size, input_size, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    ends = (in_chans * input_size * input_size + logits.numel()) * _FLOAT_BYTES
    weights = sum(p.numel() for p in model.state_dict().values()) * _FLOAT_BYTES
    if training:
        return MemoryEstimate(
            per_image=TRAINING_ACTIVATION_COPIES * total + ends, fixed=TRAINING_WEIGHT_COPIES * weights
        )
    return MemoryEstimate(per_image=LIVE_ACTIVATIONS * largest + ends, fixed=WEIGHT_COPIES * weights)
