"""Quantization-aware training (QAT): fine-tune a trained network with the INT8 recipe's rounding in its forward pass.

Jacob et al. 2018 ("Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference")
and Krishnamoorthi 2018 ("Quantizing deep convolutional networks for efficient inference: A whitepaper", sec. 3):
the forward pass rounds weights and activations to the grids the deployed model uses, the backward pass lets the
gradient through the rounding (the straight-through estimator) and stops it where a value is clipped.

The grids are the ones ``quantize`` writes for the same recipe (:mod:`resnet_edge.quantization.configs`), so that the
exported model is the one that trained:

- **BatchNorm folded first.** The deployed convolutions carry their BatchNorm (the export folds it), so QAT folds
  each BatchNorm into the convolution before it and rounds the folded weights; the statistics stay frozen (the
  whitepaper's "freeze BN" for short fine-tuning).
- **Weights** per tensor or per output channel (or in blocks), symmetric, 8 or 4 bits, with the scale rule of the
  file's writer: onnxruntime's ``max|w| / 127`` (``/ 64`` with ``reduce_range``) where onnxruntime writes the 8-bit
  weights, :func:`resnet_edge.quantization.weights.grid_scales` (least squared error among clipped scales, powers of
  two if asked) where resnet-edge writes them. Rounded values stay within ``[-qmax, qmax]``, so a trained tensor's
  largest weight sits at ``±qmax``: quantizing the trained (already rounded) weights again gives back the same scale
  and the same integers (:func:`weight_grid_mismatches` checks it on the written file).
- **Activations** per tensor where onnxruntime's QDQ places them: the model's input, every Conv/Gemm output (after
  its ReLU when one follows), every residual Add's output (after its ReLU), the average pool's output; uint8 or int8,
  asymmetric or symmetric as the recipe says. Their ranges are min/max over the calibration images, observed with the
  rounded weights and unrounded activations, as ``quantize``'s min/max calibration observes the exported model:
  before training and after every epoch.

The fine-tuned network is saved as an ordinary checkpoint of its architecture, each BatchNorm an identity that keeps
the folded bias, so :mod:`resnet_edge.conversion` exports it as any other and ``quantize`` writes the QDQ file.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import operator
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize

from resnet_edge.errors import OptionError
from resnet_edge.models.resnet import ResNet
from resnet_edge.progress import Progress, ProgressCallback
from resnet_edge.quantization.configs import Int8Recipe
from resnet_edge.quantization.record import QatRecord
from resnet_edge.quantization.weights import WeightGrid, expand_scale, grid_scales, recipe_grid
from resnet_edge.training.data import STAGE, LabelledTensors, centre_crop
from resnet_edge.training.loop import EVAL_BATCH, EpochMetrics, SGDStep, fit
from resnet_edge.training.options import TrainOptions
from resnet_edge.training.train import (
    TrainResult,
    _augmentation,
    _build,
    _check_memory,
    _check_output,
    _Data,
    _initial_result,
    _load_data,
    _Plan,
    _plan,
    _save_checkpoint,
    _sgd_step,
    _summary,
    _torch_settings,
    metrics_path,
)

logger = logging.getLogger("resnet_edge")

REFERENCE = "Jacob et al. 2018; Krishnamoorthi 2018, sec. 3 (fake quantization, straight-through estimator, BN folded)"

__all__ = ["QatNetwork", "QatResult", "prepare_qat", "train_qat", "weight_grid_mismatches"]

# onnxruntime's symmetric int8 weight range is [-127, 127], [-64, 64] with reduce_range (quant_utils'
# ONNX_INT_TYPE_SYMMETRIC_RANGE and ONNX_INT_TYPE_REDUCED_RANGE).
ORT_INT8_QMAX = 127
ORT_REDUCED_QMAX = 64
# Activation grids: (qmin, qmax) by type, and onnxruntime's symmetric int8 range.
ACTIVATION_RANGES = {"uint8": (0, 255), "int8": (-128, 127)}
SYMMETRIC_INT8 = (-127, 127)
_RELUS = (nn.ReLU,)


@dataclass(frozen=True)
class WeightRule:
    """How a weight tensor's scale is chosen: onnxruntime's max-abs (``grid`` None) or resnet-edge's search."""

    per_channel: bool
    qmax: int
    grid: WeightGrid | None

    @classmethod
    def of(cls, recipe: Int8Recipe) -> WeightRule:
        if recipe.rewrites_weights:
            grid = recipe_grid(recipe)
            return cls(per_channel=grid.per_channel, qmax=grid.qmax, grid=grid)
        return cls(recipe.per_channel, ORT_REDUCED_QMAX if recipe.reduce_range else ORT_INT8_QMAX, None)

    def scale(self, weight: Tensor) -> Tensor:
        """The scale of ``weight`` spread over its shape (no gradient flows through it)."""
        with torch.no_grad():
            if self.grid is not None:
                array = weight.detach().cpu().numpy()
                stored = grid_scales(array, self.grid)
                return torch.from_numpy(expand_scale(stored, array.shape, self.grid)).to(weight.dtype)
            absmax = weight.abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True)
            if not self.per_channel:
                absmax = weight.abs().max().expand_as(absmax)
            scale = torch.where(absmax > 0, absmax / self.qmax, torch.ones_like(absmax))
            return scale.expand_as(weight)


def _round_ste(values: Tensor, lowest: float, highest: float) -> Tensor:
    """``values`` rounded (half to even, as QuantizeLinear) and clipped; the gradient passes where not clipped."""
    clipped = torch.clamp(values, lowest, highest)
    return clipped + (torch.round(clipped) - clipped).detach()


class WeightFakeQuant(nn.Module):
    """A parametrization: the layer's weight as the deployed integers times their scale."""

    def __init__(self, rule: WeightRule) -> None:
        super().__init__()
        self.rule = rule

    def forward(self, weight: Tensor) -> Tensor:
        scale = self.rule.scale(weight)
        return _round_ste(weight / scale, -self.rule.qmax, self.rule.qmax) * scale


class ActivationFakeQuant(nn.Module):
    """One activation tensor's grid: observes min/max while ``observing``, rounds to the grid once it has a range."""

    def __init__(self, recipe: Int8Recipe) -> None:
        super().__init__()
        self.symmetric = recipe.symmetric_activations
        qmin, qmax = SYMMETRIC_INT8 if self.symmetric else ACTIVATION_RANGES[recipe.activation_type]
        self.qmin, self.qmax = qmin, qmax
        self.power_of_two = recipe.power_of_two
        self.observing = False
        self.register_buffer("low", torch.tensor(math.inf))
        self.register_buffer("high", torch.tensor(-math.inf))

    def forward(self, x: Tensor) -> Tensor:
        if self.observing:
            self.low = torch.minimum(self.low, x.detach().min())
            self.high = torch.maximum(self.high, x.detach().max())
            return x
        if not torch.isfinite(self.low):
            return x  # no range yet
        scale, zero = self.grid()
        return (_round_ste(x / scale + zero, self.qmin, self.qmax) - zero) * scale

    def grid(self) -> tuple[float, float]:
        """Scale and zero point from the observed range, as onnxruntime's ``compute_scale_zp`` makes them."""
        low, high = min(float(self.low), 0.0), max(float(self.high), 0.0)
        if self.symmetric:
            high = max(abs(low), high)
            low = -high
        scale = (high - low) / (self.qmax - self.qmin)
        if scale <= 0:
            return 1.0, 0.0
        if self.power_of_two:
            scale = 2.0 ** math.ceil(math.log2(scale))  # rounded up: the range is kept (qdq.power_of_two_activations)
        zero = 0.0 if self.symmetric else float(np.clip(round(self.qmin - low / scale), self.qmin, self.qmax))
        return scale, zero


@dataclass
class QatNetwork:
    """A network prepared for QAT.

    Attributes:
        module: the BatchNorm-folded network with fake quantization (a ``torch.fx.GraphModule``).
        folded: each convolution's name -> the BatchNorm folded into it.
        weights: the names of the layers whose weights are rounded.
        activations: the fake-quantization modules of the activations, in graph order.
    """

    module: fx.GraphModule
    folded: dict[str, str]
    weights: list[str]
    activations: list[ActivationFakeQuant]

    @contextlib.contextmanager
    def observing(self) -> Iterator[None]:
        """Activations observed (ranges reset) and not rounded; weights still rounded."""
        for fq in self.activations:
            fq.low.fill_(math.inf)
            fq.high.fill_(-math.inf)
            fq.observing = True
        try:
            yield
        finally:
            for fq in self.activations:
                fq.observing = False

    def observe(self, images: Tensor, *, batch: int = EVAL_BATCH) -> None:
        """Set every activation range to min/max over ``images`` (eval mode, no gradients)."""
        self.module.eval()
        with self.observing(), torch.no_grad():
            for begin in range(0, len(images), batch):
                self.module(images[begin : begin + batch])

    def deployable_state(self, original: nn.Module) -> dict[str, Tensor]:
        """``original``'s state dict holding the trained network: every weight on its grid, every folded BatchNorm an
        identity (weight 1, mean 0, variance 1 - eps so that ``var + eps`` is exactly 1) whose bias is the folded
        convolution's; exported with its BatchNorms folded, it computes what QAT trained (activations unrounded)."""
        state = {k: v.detach().clone() for k, v in original.state_dict().items()}
        modules = dict(self.module.named_modules())
        for name in self.weights:
            layer = modules[name]
            state[f"{name}.weight"] = layer.weight.detach().clone()  # the parametrized (rounded) weight
            bn = self.folded.get(name)
            if bn is None:
                if layer.bias is not None:
                    state[f"{name}.bias"] = layer.bias.detach().clone()
                continue
            norm = dict(original.named_modules())[bn]
            eps = torch.tensor(norm.eps, dtype=torch.float32)
            variance = torch.tensor(1.0, dtype=torch.float32) - eps
            if variance + eps != 1.0:  # float32 rounding: nudge by an ulp so that var + eps is 1
                variance = torch.nextafter(variance, torch.tensor(2.0))
            channels = layer.weight.shape[0]
            state[f"{bn}.weight"] = torch.ones(channels)
            state[f"{bn}.bias"] = layer.bias.detach().clone()
            state[f"{bn}.running_mean"] = torch.zeros(channels)
            state[f"{bn}.running_var"] = variance.expand(channels).clone()
        return state


def prepare_qat(model: nn.Module, recipe: Int8Recipe) -> QatNetwork:
    """``model`` (left unchanged) with its BatchNorms folded and fake quantization where ``recipe`` puts it.

    Raises:
        OptionError: a network torch.fx cannot trace, or a BatchNorm that does not follow a convolution.
    """
    model = copy.deepcopy(model).eval()  # the caller's network keeps its BatchNorms
    try:
        traced = fx.symbolic_trace(model)
    except Exception as exc:  # torch.fx raises many types for untraceable code
        raise OptionError(f"--qat cannot trace {type(model).__name__} with torch.fx ({exc})") from None
    modules = dict(traced.named_modules())
    graph = traced.graph
    folded: dict[str, str] = {}
    for node in list(graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        producer = node.args[0]
        if not (
            isinstance(producer, fx.Node)
            and producer.op == "call_module"
            and isinstance(modules[producer.target], nn.Conv2d)
            and len(producer.users) == 1
        ):
            raise OptionError(f"--qat folds BatchNorms into convolutions, and {node.target} follows no convolution")
        conv, norm = modules[producer.target], modules[node.target]
        fused = nn.utils.fusion.fuse_conv_bn_eval(conv, norm)
        _set_module(traced, producer.target, fused)
        folded[producer.target] = node.target
        node.replace_all_uses_with(producer)
        graph.erase_node(node)
    modules = dict(traced.named_modules())
    rule = WeightRule.of(recipe)
    weights = []
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d | nn.Linear):
            parametrize.register_parametrization(modules[node.target], "weight", WeightFakeQuant(rule))
            weights.append(node.target)
    activations = []
    for node in list(graph.nodes):
        if not _output_quantized(node, modules):
            continue
        fq = ActivationFakeQuant(recipe)
        name = f"activation_quant_{len(activations)}"
        traced.add_submodule(name, fq)
        with graph.inserting_after(node):
            quantized = graph.call_module(name, (node,))
        node.replace_all_uses_with(quantized, delete_user_cb=lambda user, q=quantized: user is not q)
        activations.append(fq)
    graph.lint()
    traced.recompile()
    return QatNetwork(traced, folded, weights, activations)


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _RELUS)
    return node.op in ("call_function", "call_method") and node.target in (torch.relu, nn.functional.relu, "relu")


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add)) or (
        node.op == "call_method" and node.target in ("add", "add_")
    )


def _output_quantized(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether onnxruntime's QDQ quantizer puts a QuantizeLinear on this node's output (a ReLU that follows a Conv,
    Gemm or Add is fused into it: its output is quantized instead)."""
    if node.op == "placeholder":
        return True
    if node.op == "call_module" and isinstance(modules[node.target], nn.AdaptiveAvgPool2d):
        return True
    if _is_relu(node, modules):
        return True
    produces = (node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d | nn.Linear)) or _is_add(node)
    if not produces:
        return False
    users = list(node.users)
    return not (len(users) == 1 and _is_relu(users[0], modules))


def weight_grid_mismatches(network: QatNetwork, recipe: Int8Recipe) -> int:
    """How many trained weights a second rounding on the recipe's grid would move (0: ``quantize`` writes exactly the
    integers QAT trained)."""
    rule = WeightRule.of(recipe)
    moved = 0
    modules = dict(network.module.named_modules())
    with torch.no_grad():
        for name in network.weights:
            weight = modules[name].weight
            again = _round_ste(weight / rule.scale(weight), -rule.qmax, rule.qmax) * rule.scale(weight)
            moved += int((~torch.isclose(again, weight, rtol=1e-5, atol=0.0)).sum())
    return moved


@dataclass(frozen=True)
class QatResult:
    """A QAT run: the training run's record and what QAT adds.

    Attributes:
        train: the run (checkpoint, labels, per-epoch metrics of the fake-quantized network).
        recipe: the INT8 recipe trained for.
        fp32_val_accuracy: the checkpoint's held-out accuracy before QAT, in FP32; None without held-out images.
        before_val_accuracy: the same, fake-quantized with the recipe before any training step.
        folded_batchnorms, quantized_layers, quantized_activations: what was instrumented.
        calibration_images: images the activation ranges were observed on.
        grid_mismatches: trained weights a second rounding would move (0 means the exported integers are the trained).
    """

    train: TrainResult
    recipe: Int8Recipe
    fp32_val_accuracy: float | None
    before_val_accuracy: float | None
    folded_batchnorms: int
    quantized_layers: int
    quantized_activations: int
    calibration_images: int
    grid_mismatches: int

    def record(self) -> QatRecord:
        """What the calibration record keeps of the run (``quantization_aware_training``)."""
        run = self.train
        return QatRecord(
            reference=REFERENCE,
            fine_tuned_from=run.fine_tuned_from,
            weight_type=self.recipe.weight_type,
            per_channel=self.recipe.per_channel,
            activation_type=self.recipe.activation_type,
            epochs=run.epochs,
            train_images=run.train_images,
            seconds=round(sum(m.seconds for m in run.history), 3),
            folded_batchnorms=self.folded_batchnorms,
            quantized_layers=self.quantized_layers,
            quantized_activations=self.quantized_activations,
            range_images=self.calibration_images,
            weights_moved_by_export=self.grid_mismatches,
            val_data=run.val_data,
            val_images=run.val_images,
            fp32_top1=self.fp32_val_accuracy,
            before_top1=self.before_val_accuracy,
            after_top1_per_epoch=tuple(m.val_accuracy for m in run.history),
        )


def train_qat(
    source: str | Path,
    output: Path | str,
    options: TrainOptions,
    *,
    on_progress: ProgressCallback | None = None,
) -> QatResult:
    """Fine-tune ``options.weights`` on ``source`` with fake quantization, and write the checkpoint ``output``.

    Args:
        source: the training images (as :func:`~resnet_edge.training.train.train_model` takes them).
        output: the fine-tuned checkpoint (``.safetensors``), weights on the recipe's grid, BatchNorms folded.
        options: with ``qat`` set; the recipe from ``target``, ``weight_bits`` and ``per_channel``.
        on_progress: as for ``train_model``; also ``observing ranges`` after each epoch.

    Returns:
        The run.

    Raises:
        OptionError, InputFileError, CheckpointError: as ``train_model``.
    """
    if not options.qat or options.weights is None:
        raise OptionError("train_qat needs TrainOptions(qat=True, weights=...)")
    started = time.perf_counter()
    report = on_progress or (lambda event: None)
    output = _check_output(output)
    recipe = options.qat_recipe()
    threads = options.threads or torch.get_num_threads()
    with _torch_settings(threads):
        plan = _plan(options)
        _check_memory(plan, options.batch)
        data = _load_data(str(source), options, plan, threads=threads, on_progress=report)
        model, fine_tuned_from = _pretrained(plan, data, options)
        fp32_accuracy = _accuracy(model, data.val)
        network = prepare_qat(model, recipe)
        generator = torch.Generator().manual_seed(options.seed)
        calibration = _calibration_images(data.train, plan.spec.crop, options.calib_limit, options.seed)
        network.observe(calibration)
        before_accuracy = _accuracy(network.module, data.val)
        step = _sgd_step(network.module, options, steps_per_epoch=math.ceil(len(data.train) / options.batch))
        result = _initial_result(
            output,
            options,
            plan,
            data,
            metrics=metrics_path(output),
            fine_tuned_from=fine_tuned_from,
            new_head=False,
            frozen=[],
            history=[],
            threads=threads,
            command=options.command or f"train_qat({str(source)!r}, {str(output)!r}, ...)",
        )
        history = _fine_tune(network, data, plan, options, step, generator, calibration, report)
        network.module.eval()
        model.load_state_dict(network.deployable_state(model))
        result = replace(result, history=history, seconds=time.perf_counter() - started)
        _save_checkpoint(result, model, options)
    return QatResult(
        train=result,
        recipe=recipe,
        fp32_val_accuracy=fp32_accuracy,
        before_val_accuracy=before_accuracy,
        folded_batchnorms=len(network.folded),
        quantized_layers=len(network.weights),
        quantized_activations=len(network.activations),
        calibration_images=len(calibration),
        grid_mismatches=weight_grid_mismatches(network, recipe),
    )


def _pretrained(plan: _Plan, data: _Data, options: TrainOptions) -> tuple[ResNet, str | None]:
    """The checkpoint QAT fine-tunes, in eval mode, and where it came from.

    Raises:
        OptionError: its classifier does not fit the data's classes (QAT does not train a new head).
    """
    model, fine_tuned_from, new_head = _build(plan, data.class_names, options)
    if new_head:
        raise OptionError(
            "--qat fine-tunes a network that already classifies these images; its checkpoint has other classes"
            " (train a new classifier first, without --qat)"
        )
    model.eval()
    return model, fine_tuned_from


def _fine_tune(
    network: QatNetwork,
    data: _Data,
    plan: _Plan,
    options: TrainOptions,
    step: SGDStep,
    generator: torch.Generator,
    calibration: Tensor,
    report: ProgressCallback,
) -> list[EpochMetrics]:
    """Train the fake-quantized network for ``options.epochs``, observing the activation ranges again after each
    epoch; returns every epoch's metrics."""
    history: list[EpochMetrics] = []

    def on_epoch(metrics: EpochMetrics) -> None:
        # The ranges follow the weights: observed again as quantize will observe the exported model.
        network.observe(calibration)
        history.append(metrics)
        report(Progress(STAGE, "epochs", metrics.epoch, options.epochs, unit="epoch", detail=_summary(metrics)))

    fit(
        network.module,
        data.train,
        epochs=options.epochs,
        batch=options.batch,
        step=step,
        generator=generator,
        augment=_augmentation(plan, options),
        val=data.val,
        on_epoch=on_epoch,
        on_progress=report,
    )
    return history


def _calibration_images(train: LabelledTensors, crop: int, limit: int, seed: int) -> Tensor:
    """Up to ``limit`` training images drawn with ``seed``, centre-cropped as the model sees them."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:limit]
    return centre_crop(train.images[order], crop)


def _accuracy(model: nn.Module, data: LabelledTensors | None) -> float | None:
    if data is None or not len(data):
        return None
    from resnet_edge.training.loop import evaluate

    return 1.0 - evaluate(model, data)[1]
