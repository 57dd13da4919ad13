"""AdaRound: learn whether each weight rounds up or down, layer by layer, from calibration data.

Nagel, Amjad, van Baalen, Louizos and Blankevoort, "Up or Down? Adaptive Rounding for Post-Training
Quantization", ICML 2020. Rounding each weight to its nearest grid point minimises the weight error, not the
layer's output error; choosing up or down per weight to minimise ``|| f(W x) - f(W~ x~) ||^2`` on data does better,
most at 4 bits (the paper: ResNet-18/50 with 4-bit weights within 1% of FP32 on ImageNet). The choice is relaxed to
a continuous one, ``W~ = s * clip(floor(W / s) + h(V), qmin, qmax)`` with the rectified sigmoid
``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)`` (zeta 1.1, gamma -0.1), and optimised with Adam on

    || f(W x) - f(W~ x~) ||^2 + lambda * sum(1 - |2 h(V) - 1|^beta)

where the regulariser, off for the first 20% of the steps, then with ``beta`` annealed from 20 to 2 (cosine, as
AIMET does), pushes every ``h`` to 0 or 1; the final rounding is ``h >= 0.5``. Defaults are the paper's and AIMET's
(lambda 0.01, Adam at 1e-3, batches of 256 rows) except the step count (``ADAROUND_ITERATIONS``, measured).

How it is applied here, on the ONNX graph: ``x`` is the layer's input in the FP32 model and ``x~`` the same input on
the layer's activation grid (QuantizeLinear/DequantizeLinear with its calibrated scale), so the loss sees the input
quantization the deployed model has; ``f`` is the Relu where the FP32 model applies one to this layer alone, else the
identity (the paper's "asymmetric reconstruction" with the activation in the loss). Rows are im2col patches at random
output positions of every calibration image, at most :data:`ADAROUND_SAMPLES` per layer and
:data:`ADAROUND_MEMORY` bytes for all layers together, read in one pass of the FP32 model
(:mod:`resnet_edge.quantization.layer_data`). Each layer is optimised with torch on the host, then compared with
round-to-nearest on all its rows: the rounding with the lower loss is kept, so a layer never ends worse than nearest
rounding on the loss AdaRound minimises. Layers are independent of each other (FP32 inputs), in graph order, with a
progress event per layer; a time budget shares the seconds among the layers by their size.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from resnet_edge.progress import Progress, ProgressCallback
from resnet_edge.quantization.layer_data import output_positions, patches
from resnet_edge.quantization.options import ADAROUND_ITERATIONS
from resnet_edge.quantization.qdq import QuantizedLayer
from resnet_edge.quantization.weights import WeightGrid, expand_scale, round_to_nearest

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "ADAROUND_MEMORY",
    "ADAROUND_SAMPLES",
    "AdaRoundParameters",
    "AdaRoundRecord",
    "LayerRounding",
    "LayerSamples",
    "adaround_layer",
    "adaround_layers",
    "adaround_record",
]

ADAROUND_SAMPLES = 4096  # rows (output positions) kept per layer: 16 x the batch, enough for the small layers
ADAROUND_MEMORY = 512 * 2**20  # bytes for the rows of all layers together (ResNet-50: ~1,600 rows a layer)
ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (the paper's values)
PROBE_STEPS = 5  # steps timed before a layer's share of the time budget sets its step count
MIN_STEPS = 20  # a layer whose budget allows fewer steps still gets these (the budget is then overrun, and said)
# Below this many weights a step is a few hundred microseconds of small kernels that a second thread does not speed
# up (measured: the same CPU time per step with 1 and 2 threads on a 64x576 layer, and 2.4x the wall time with 2 on a
# busy machine); larger layers keep torch's threads.
SMALL_LAYER = 2**17


@dataclass(frozen=True)
class AdaRoundParameters:
    """The optimisation's settings (the paper's and AIMET's defaults).

    Attributes:
        iterations: Adam steps per layer (fewer when the time budget runs short).
        batch: rows per step.
        learning_rate: Adam's.
        regularization: lambda, the rounding regulariser's weight.
        beta: the regulariser's exponent, annealed from the first value to the second.
        warm_up: fraction of the steps before the regulariser starts.
        seconds: time budget for all layers together; None for none.
        seed: for the rows drawn and the batches.
    """

    iterations: int = ADAROUND_ITERATIONS
    batch: int = 256
    learning_rate: float = 1e-3
    regularization: float = 0.01
    beta: tuple[float, float] = (20.0, 2.0)
    warm_up: float = 0.2
    seconds: float | None = None
    seed: int = 0


@dataclass(frozen=True)
class LayerRounding:
    """What AdaRound did to one layer.

    Attributes:
        node: the Conv/Gemm.
        rows: samples (output positions) it learned from.
        steps: Adam steps taken.
        seconds: time spent.
        nearest_loss, adaround_loss: the reconstruction loss (mean over rows of the squared output error summed
            over channels) of round-to-nearest and of the learned rounding, on all rows.
        kept: "adaround" or "nearest", whichever loss is lower.
        flipped: fraction of weights rounded the other way than nearest.
    """

    node: str
    rows: int
    steps: int
    seconds: float
    nearest_loss: float
    adaround_loss: float
    kept: str
    flipped: float


class LayerSamples:
    """A :class:`~resnet_edge.quantization.layer_data.LayerConsumer` keeping, for each layer, input patches at
    random output positions (on the layer's input grid) and the FP32 output there, within a memory budget."""

    def __init__(self, layers: Sequence[QuantizedLayer], images: int, *, seed: int = 0) -> None:
        width = sum(layer.fan_in + layer.weight.shape[0] for layer in layers)
        self.rows = max(1, min(ADAROUND_SAMPLES, ADAROUND_MEMORY // (4 * max(width, 1))))
        self.nbytes = 4 * width * self.rows  # what the rows of all layers take, at most
        self.per_image = -(-self.rows // max(images, 1))
        self._rng = np.random.default_rng(seed)
        self._inputs: dict[str, list[np.ndarray]] = {}
        self._targets: dict[str, list[np.ndarray]] = {}

    def add(self, layer: QuantizedLayer, x: np.ndarray) -> None:
        if layer.op_type == "Conv":
            height, width = output_positions(layer, x.shape[2], x.shape[3])
            count = min(self.per_image, height * width)
            flat = np.concatenate([self._rng.choice(height * width, count, replace=False) for _ in range(len(x))])
            image = np.repeat(np.arange(len(x)), count)
            where = (image, flat // width, flat % width)
        else:
            where = None
        rows = patches(layer, x, where)
        target = rows @ layer.weight.reshape(layer.weight.shape[0], -1).T
        if layer.bias is not None:
            target += layer.bias
        quantized = patches(layer, layer.quantize_input(x), where)
        self._inputs.setdefault(layer.name, []).append(quantized)
        self._targets.setdefault(layer.name, []).append(np.maximum(target, 0) if layer.relu else target)

    def of(self, layer: QuantizedLayer) -> tuple[np.ndarray, np.ndarray]:
        """The quantized input rows and FP32 output rows of ``layer``, at most ``self.rows`` of each."""
        x = np.concatenate(self._inputs.pop(layer.name))[: self.rows]
        y = np.concatenate(self._targets.pop(layer.name))[: self.rows]
        return x, y


def adaround_layer(
    weight: np.ndarray,
    scale: np.ndarray,
    grid: WeightGrid,
    inputs: np.ndarray,
    targets: np.ndarray,
    *,
    bias: np.ndarray | None = None,
    relu: bool = False,
    parameters: AdaRoundParameters = AdaRoundParameters(),
    seconds: float | None = None,
    name: str = "layer",
) -> tuple[np.ndarray, LayerRounding]:
    """Learn the rounding of one layer's weights.

    Args:
        weight: FP32 weights, output channel first.
        scale: their scale on ``grid`` (stored shape, see :func:`~resnet_edge.quantization.weights.grid_scales`).
        grid: the integer grid.
        inputs: rows of the layer's (quantized) input, (rows, fan_in).
        targets: the FP32 layer's output for those rows, after the Relu when ``relu``, (rows, out).
        bias: the layer's bias, added to the quantized layer's output.
        relu: apply a Relu to the quantized layer's output in the loss.
        parameters: the optimisation's settings.
        seconds: this layer's time budget; None for none.
        name: the layer's name, for the result.

    Returns:
        The integer weights (output channel first) and what was done.
    """
    import torch

    threads = torch.get_num_threads()
    if weight.size < SMALL_LAYER:
        torch.set_num_threads(1)
    try:
        return _adaround(weight, scale, grid, inputs, targets, bias, relu, parameters, seconds, name)
    finally:
        torch.set_num_threads(threads)


def _adaround(
    weight: np.ndarray,
    scale: np.ndarray,
    grid: WeightGrid,
    inputs: np.ndarray,
    targets: np.ndarray,
    bias: np.ndarray | None,
    relu: bool,
    parameters: AdaRoundParameters,
    seconds: float | None,
    name: str,
) -> tuple[np.ndarray, LayerRounding]:
    import torch

    started = time.perf_counter()
    out = weight.shape[0]
    full_scale = torch.from_numpy(expand_scale(scale, weight.shape, grid).reshape(out, -1))
    w = torch.from_numpy(weight.reshape(out, -1).astype(np.float32))
    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
    b = torch.from_numpy(bias.astype(np.float32)) if bias is not None else torch.zeros(out)
    relaxed = _Relaxed(full_scale, torch.floor(w / full_scale), b, relu, grid)
    rest = (w / full_scale - relaxed.floor).clamp(1e-4, 1 - 1e-4)
    # h(V) starts at the fractional part, so the relaxed weights start at W itself (AIMET's initialisation).
    v = torch.nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
    step = _optimise(relaxed, v, x, y, parameters, seconds, started)

    with torch.no_grad():
        learned = (v >= 0).float()  # h(V) >= 0.5 exactly where V >= 0
        nearest = torch.from_numpy(round_to_nearest(weight, scale, grid).reshape(out, -1).astype(np.float32))
        adaround_loss = _chunked_loss(relaxed.loss, relaxed.weights(learned), x, y)
        nearest_loss = _chunked_loss(relaxed.loss, full_scale * nearest, x, y)
        learned_int = torch.clamp(relaxed.floor + learned, grid.qmin, grid.qmax)
        flipped = float((learned_int != nearest).float().mean())
    kept = "adaround" if adaround_loss <= nearest_loss else "nearest"
    chosen = learned_int if kept == "adaround" else nearest
    return chosen.numpy().astype(np.int8).reshape(weight.shape), LayerRounding(
        node=name,
        rows=len(x),
        steps=step,
        seconds=time.perf_counter() - started,
        nearest_loss=nearest_loss,
        adaround_loss=adaround_loss,
        kept=kept,
        flipped=flipped,
    )


@dataclass(frozen=True)
class _Relaxed:
    """A layer's weights on the relaxed grid, ``s * clip(floor(W / s) + h(V), qmin, qmax)``, and the loss they give
    (tensors, all (out, fan_in) but ``bias``)."""

    full_scale: Tensor
    floor: Tensor
    bias: Tensor
    relu: bool
    grid: WeightGrid

    def soft(self, values: Tensor) -> Tensor:
        """The rectified sigmoid h(V)."""
        return (values.sigmoid() * (ZETA - GAMMA) + GAMMA).clamp(0, 1)

    def weights(self, rounding: Tensor) -> Tensor:
        return self.full_scale * (self.floor + rounding).clamp(self.grid.qmin, self.grid.qmax)

    def loss(self, quantized: Tensor, rows: Tensor, wanted: Tensor) -> Tensor:
        """Mean squared error of the layer's output (after the Relu where it has one) over the rows."""
        output = self.bias.addmm(rows, quantized.T)
        if self.relu:
            output = output.relu()
        return (output - wanted).square().sum(dim=1).mean()


def _optimise(
    relaxed: _Relaxed,
    v: Tensor,
    x: Tensor,
    y: Tensor,
    parameters: AdaRoundParameters,
    seconds: float | None,
    started: float,
) -> int:
    """Adam on ``v`` in batches of rows, the rounding regulariser annealed in after the warm-up; returns the steps
    taken (``parameters.iterations``, fewer when ``seconds`` allow fewer)."""
    import torch

    generator = torch.Generator().manual_seed(parameters.seed)
    optimizer = torch.optim.Adam([v], lr=parameters.learning_rate, fused=True)  # ~25% faster per step on CPU
    total = parameters.iterations
    step = 0
    batch = min(parameters.batch, len(x))
    order_x, order_y, at = x, y, len(x)  # rows in a shuffled order, taken a batch at a time (no gather per step)
    while step < total:
        if step == PROBE_STEPS and seconds is not None:
            per_step = (time.perf_counter() - started) / PROBE_STEPS
            total = min(total, max(MIN_STEPS, int(seconds / max(per_step, 1e-9))))
        if at + batch > len(x):
            order = torch.randperm(len(x), generator=generator)
            order_x, order_y, at = x[order], y[order], 0
        rows, wanted = order_x[at : at + batch], order_y[at : at + batch]
        at += batch
        h = relaxed.soft(v)
        loss = relaxed.loss(relaxed.weights(h), rows, wanted)
        warm = parameters.warm_up * total
        if step >= warm:
            progress = (step - warm) / max(total - warm, 1)
            start, end = parameters.beta
            beta = end + 0.5 * (start - end) * (1 + np.cos(progress * np.pi))
            loss = loss + parameters.regularization * (1 - (2 * h - 1).abs().pow(beta)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
    return step


def _chunked_loss(loss_of, weights, x, y, chunk: int = 4096) -> float:
    total = 0.0
    for start in range(0, len(x), chunk):
        part = slice(start, start + chunk)
        total += float(loss_of(weights, x[part], y[part])) * len(x[part])
    return total / max(len(x), 1)


def adaround_layers(
    layers: Sequence[QuantizedLayer],
    scales: dict[str, np.ndarray],
    grid: WeightGrid,
    samples: LayerSamples,
    parameters: AdaRoundParameters = AdaRoundParameters(),
    *,
    on_progress: ProgressCallback | None = None,
) -> tuple[dict[str, np.ndarray], list[LayerRounding]]:
    """AdaRound every layer, in order, sharing the time budget among them by their size.

    Args:
        layers: the quantized layers.
        scales: each layer's weight scale (stored shape), by node name.
        grid: the integer grid.
        samples: the rows read for each layer.
        parameters: the optimisation's settings, the time budget included.
        on_progress: ``Progress("quantize", "AdaRound", layers done, layers, unit="layer")`` after each layer.

    Returns:
        The integer weights by node name, and what was done to each layer.
    """
    costs = [layer.fan_in * layer.weight.shape[0] for layer in layers]
    started = time.perf_counter()
    found: dict[str, np.ndarray] = {}
    report = []
    for k, layer in enumerate(layers):
        share = None
        if parameters.seconds is not None:
            left = max(parameters.seconds - (time.perf_counter() - started), 0.0)
            share = left * costs[k] / max(sum(costs[k:]), 1)
        x, y = samples.of(layer)
        integers, rounding = adaround_layer(
            layer.weight,
            scales[layer.name],
            grid,
            x,
            y,
            bias=layer.bias,
            relu=layer.relu,
            parameters=parameters,
            seconds=share,
            name=layer.name,
        )
        found[layer.name] = integers
        report.append(rounding)
        if on_progress is not None:
            on_progress(Progress("quantize", "AdaRound", k + 1, len(layers), unit="layer"))
    return found, report


@dataclass(frozen=True)
class AdaRoundRecord:
    """What the calibration record keeps of an AdaRound run (the step's ``details``)."""

    iterations: int
    time_budget_s: float | None
    rows_per_layer: int
    rows_bytes: int  # the memory the sampled rows took
    steps_min: int  # the fewest steps a layer got (the time budget cuts them)
    layers_kept_nearest: tuple[str, ...]
    steps_total: int
    loss_ratio_mean: float | None  # learned over nearest reconstruction loss, mean over layers
    layers: tuple[LayerRounding, ...]  # seconds to the millisecond
    grouped_layers_skipped: tuple[str, ...]  # layers it cannot read (grouped convolutions)


def adaround_record(
    report: Sequence[LayerRounding],
    parameters: AdaRoundParameters,
    samples: LayerSamples,
    *,
    grouped_layers_skipped: Sequence[str] = (),
) -> AdaRoundRecord:
    """What the calibration record keeps of an AdaRound run; ``grouped_layers_skipped``: the layers it was not
    given."""
    ratios = [r.adaround_loss / r.nearest_loss for r in report if r.nearest_loss > 0]
    return AdaRoundRecord(
        iterations=parameters.iterations,
        time_budget_s=parameters.seconds,
        rows_per_layer=samples.rows,
        rows_bytes=samples.nbytes,
        steps_min=min((r.steps for r in report), default=0),
        layers_kept_nearest=tuple(r.node for r in report if r.kept == "nearest"),
        steps_total=sum(r.steps for r in report),
        loss_ratio_mean=float(np.mean(ratios)) if report else None,
        layers=tuple(replace(r, seconds=round(r.seconds, 3)) for r in report),
        grouped_layers_skipped=tuple(grouped_layers_skipped),
    )
