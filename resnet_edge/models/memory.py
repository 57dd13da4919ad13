"""What exporting a model will take in memory, measured on PyTorch's meta device before any real allocation."""

from __future__ import annotations

from resnet_edge.memory import _FLOAT_BYTES, LIVE_ACTIVATIONS, WEIGHT_COPIES, MemoryEstimate


def torch_estimate(
    arch: str, *, num_classes: int | None, in_chans: int, variant: str, input_size: int
) -> MemoryEstimate:
    """Memory of exporting and checking ``arch``, measured on PyTorch's meta device (shapes only, no memory).

    Raises:
        OptionError: as :func:`resnet_edge.models.resnet.create_model`.
    """
    import torch

    from resnet_edge.models.resnet import create_model

    with torch.device("meta"):
        model = create_model(arch, num_classes=num_classes, in_chans=in_chans, variant=variant).eval()
    largest = 0

    def record(module: object, inputs: object, output: object) -> None:
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output[0].numel() * _FLOAT_BYTES)

    handles = [m.register_forward_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            logits = model(torch.empty(1, in_chans, input_size, input_size, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    ends = (in_chans * input_size * input_size + logits.numel()) * _FLOAT_BYTES
    weights = sum(p.numel() for p in model.state_dict().values()) * _FLOAT_BYTES
    return MemoryEstimate(per_image=LIVE_ACTIVATIONS * largest + ends, fixed=WEIGHT_COPIES * weights)
