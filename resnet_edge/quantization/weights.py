"""Weight grids: how many bits, which weights share a scale, how the scale is chosen, and rounding to nearest.

Used whenever resnet-edge writes the weights itself instead of keeping onnxruntime's (4-bit weights, power-of-two
scales, AdaRound): :func:`grid_scales` picks each group's scale, :func:`round_to_nearest` rounds on it, and
:func:`resnet_edge.quantization.qdq.write_weights` stores the result. Weights are symmetric (zero point 0) and
signed, ``[-2^(b-1), 2^(b-1) - 1]``, as NPUs and onnxruntime's integer kernels take them.

The scale of each group (the tensor, an output channel, or a block of input channels) is the one that minimises the
squared rounding error among ``absmax / qmax`` shrunk by the factors in :data:`CLIP_RATIOS` (clipping the few largest
weights buys finer steps for all others). Measured on the two trained resnet20s of
``benchmarks/accuracy_recovery.py`` (digits, Fashion-MNIST), the squared weight error against plain max-abs scales:
x0.66-0.67 at 4 bits per channel (17.8 -> 19.6 dB SQNR), x0.90-0.91 at 8 bits per tensor, x1.00 at 8 bits per
channel. With power-of-two scales the two powers of two around that scale are tried, and the better kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from resnet_edge.quantization.configs import Int8Recipe

__all__ = ["CLIP_RATIOS", "WeightGrid", "expand_scale", "grid_scales", "recipe_grid", "round_to_nearest"]

# Scales tried for each group, as fractions of absmax / qmax; 1.0 (no clipping) is always among them.
CLIP_RATIOS = tuple(float(r) for r in np.linspace(1.0, 0.5, 11))


@dataclass(frozen=True)
class WeightGrid:
    """The integers weights are stored as.

    Attributes:
        bits: 8 or 4.
        per_channel: one scale per output channel (else one per tensor); ignored when ``block`` is set.
        block: one scale per block of this many input channels (and per output channel and kernel position).
        power_of_two: scales are powers of two.
    """

    bits: int
    per_channel: bool
    block: int | None = None
    power_of_two: bool = False

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1))

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def describe(self) -> str:
        """``int4, blocks of 32 input channels`` and the like."""
        group = (
            f"blocks of {self.block} input channels"
            if self.block
            else ("per channel" if self.per_channel else "per tensor")
        )
        return f"int{self.bits} symmetric, {group}{', power-of-two scales' if self.power_of_two else ''}"


def recipe_grid(config: Int8Recipe) -> WeightGrid:
    """The weight grid of a recipe (what recovery writes, and what quantization-aware training rounds to)."""
    return WeightGrid(
        bits=config.weight_bits,
        per_channel=config.per_channel,
        block=config.weight_block,
        power_of_two=config.power_of_two,
    )


def _groups(weight: np.ndarray, grid: WeightGrid) -> tuple[np.ndarray, tuple[int, ...]]:
    """The weights as rows of one scale group each, and the shape of the stored scale."""
    out = weight.shape[0]
    if grid.block:
        cin = weight.shape[1]
        blocks = -(-cin // grid.block)
        padded = np.zeros((out, blocks * grid.block, *weight.shape[2:]), weight.dtype)
        padded[:, :cin] = weight
        shaped = padded.reshape(out, blocks, grid.block, *weight.shape[2:])
        rows = np.moveaxis(shaped, 2, -1)  # (out, blocks, kh, kw, block)
        return rows.reshape(-1, grid.block), (out, blocks, *weight.shape[2:])
    if grid.per_channel:
        return weight.reshape(out, -1), (out,)
    return weight.reshape(1, -1), ()


def grid_scales(weight: np.ndarray, grid: WeightGrid) -> np.ndarray:
    """The scale of each group of ``weight`` (output channel first) on ``grid``, chosen by least squared error.

    Returns:
        A scalar (per tensor), shape (out,) per channel, or (out, ceil(in / block), ...) with blocks.
    """
    rows, shape = _groups(weight.astype(np.float32), grid)
    absmax = np.abs(rows).max(axis=1)
    base = np.where(absmax > 0, absmax / grid.qmax, 1.0)
    candidates = [base * ratio for ratio in CLIP_RATIOS]
    if grid.power_of_two:
        chosen = _least_error(rows, candidates, grid)
        exponent = np.log2(chosen)
        candidates = [np.exp2(np.floor(exponent)), np.exp2(np.ceil(exponent))]
    return _least_error(rows, candidates, grid).astype(np.float32).reshape(shape)


def _least_error(rows: np.ndarray, candidates: list[np.ndarray], grid: WeightGrid) -> np.ndarray:
    best, best_error = candidates[0], None
    for scale in candidates:
        q = np.clip(np.rint(rows / scale[:, None]), grid.qmin, grid.qmax)
        error = np.square(rows - q * scale[:, None]).sum(axis=1)
        if best_error is None:
            best, best_error = scale.copy(), error
            continue
        better = error < best_error
        best = np.where(better, scale, best)
        best_error = np.where(better, error, best_error)
    return best


def expand_scale(scale: np.ndarray, shape: tuple[int, ...], grid: WeightGrid) -> np.ndarray:
    """A stored scale spread over the weight's (output channel first) ``shape``."""
    if scale.ndim == 0:
        return np.full(shape, scale, np.float32)
    if grid.block:
        return np.repeat(scale, grid.block, axis=1)[:, : shape[1]].astype(np.float32)
    return np.broadcast_to(scale.reshape(-1, *([1] * (len(shape) - 1))), shape).astype(np.float32)


def round_to_nearest(weight: np.ndarray, scale: np.ndarray, grid: WeightGrid) -> np.ndarray:
    """The integer weights nearest to ``weight`` on ``scale`` (stored shape), saturated to the grid's range."""
    full = expand_scale(scale, weight.shape, grid)
    return np.clip(np.rint(weight / full), grid.qmin, grid.qmax).astype(np.int8)
