"""Gradient flow through skip connections, measured block by block at initialisation.

With ``y_l = F_l(x_l) + x_l`` the chain rule gives ``dL/dx_l = dL/dy_l (dF_l/dx_l + I)`` (He et al.,
"Identity Mappings in Deep Residual Networks", 2016, eq. 5): the identity term hands the upstream gradient
to ``x_l`` whatever ``F_l`` does, so the gradient at the first block is not a product of one Jacobian per
block. A plain stack, ``y_l = F_l(x_l)``, has only that product, and its scale is exponential in depth.

:func:`gradient_flow` runs one backward pass on real images through a freshly initialised network and takes
each block's input gradient apart with autograd into the branch term (the vector-Jacobian product of ``F_l``)
and the shortcut term. :func:`compare_gradient_flow` does it for the residual network and for the same weights with the
skips switched off; :func:`plot_gradient_flow` draws the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from resnet_edge.artifacts import atomic_output, refuse_overwriting_inputs, require_writable_destination
from resnet_edge.calibration.labels import ModelClasses
from resnet_edge.calibration.preprocess import PreprocessSpec
from resnet_edge.calibration.sources import iter_batches, open_source
from resnet_edge.errors import OptionError
from resnet_edge.models.checkpoints import read_checkpoint_metadata
from resnet_edge.models.options import GradFlowOptions
from resnet_edge.models.registry import Stem, Variant, default_preprocessing, get_arch
from resnet_edge.models.resnet import ResNet, create_model
from resnet_edge.progress import Progress, ProgressCallback

DIGITS_DATA = "builtin:digits-train"
PHOTOS_DATA = "builtin:photos"
STAGE = "gradflow"
# Branch term + shortcut term must give back autograd's dL/dx_l. Where they are added in another order than
# autograd adds them, float32 rounding (1e-7 relative per operation, some hundred deep) is all that differs.
DECOMPOSITION_RTOL = 1e-4


@dataclass(frozen=True)
class BlockGradient:
    """One block's input gradient, and the two terms it is the sum of.

    Attributes:
        path: module path, ``layer1.0``.
        shortcut: ``identity``, ``projection`` (a 1x1 conv where the shape changes) or ``none`` (plain).
        activation_norm: ``||x_l||``, the block input, over the whole batch.
        grad_norm: ``||dL/dx_l||``, the gradient at the block input.
        branch_term_norm: ``||(dF_l/dx_l)^T g_l||``, with ``g_l`` the gradient at the addition: ``dL/dy_l``,
            or for a post-activation block ``dL/dy_l`` masked by the derivative of the ReLU after the sum.
        shortcut_term_norm: ``||(dS_l/dx_l)^T g_l||``, which is ``||g_l||`` for an identity shortcut; None
            where the skip is off.
    """

    path: str
    shortcut: str
    activation_norm: float
    grad_norm: float
    branch_term_norm: float
    shortcut_term_norm: float | None


@dataclass(frozen=True)
class GradFlowResult:
    """One network's gradient flow: one backward pass of a cross-entropy loss at initialisation."""

    arch: str
    variant: str
    batch: int
    seed: int
    data: str
    labels: str  # where the labels of the loss came from
    loss: float
    blocks: list[BlockGradient]
    decomposition_error: float  # max over blocks of ||branch + shortcut - dL/dx|| / ||dL/dx||
    plot: Path | None = None

    @property
    def first_to_last(self) -> float:
        """``||dL/dx||`` at the first block over the last: how much the gradient grows toward the input."""
        return self.blocks[0].grad_norm / self.blocks[-1].grad_norm

    @property
    def per_block_growth(self) -> float:
        """The geometric mean of the block-to-block factors that make up :attr:`first_to_last`."""
        return self.first_to_last ** (1 / max(1, len(self.blocks) - 1))


@dataclass(frozen=True)
class GradFlowComparison:
    """The residual network and the same weights with the skips switched off, on the same images."""

    residual: GradFlowResult
    plain: GradFlowResult
    plot: Path | None = None

    @property
    def first_block_ratio(self) -> float:
        """Plain over residual ``||dL/dx||`` at the first block."""
        return self.plain.blocks[0].grad_norm / self.residual.blocks[0].grad_norm

    @property
    def spread_ratio(self) -> float:
        """Plain over residual :attr:`GradFlowResult.first_to_last`."""
        return self.plain.first_to_last / self.residual.first_to_last


def gradient_flow(
    source: str | Path | None,
    output: Path | str | None,
    options: GradFlowOptions,
    *,
    model: ResNet | None = None,
    on_progress: ProgressCallback | None = None,
) -> GradFlowResult:
    """Measure ``dL/dx_l`` at every block of a freshly initialised network (or of ``model``), and its branch and
    shortcut terms.

    Args:
        source: the images, a folder, ``.npy``/``.npz`` or ``builtin:NAME``. None: the built-in digits for the 32x32
            archs (resnet20 to resnet110), the built-in photos for the ImageNet-stem ones.
        output: where to write a PNG of the gradient norms; none if None.
        options: the arch, variant, batch and seed (:class:`GradFlowOptions`).
        model: measure this network, with its weights as they are (a trained one, say), instead of a fresh one;
            it must be ``options.arch`` and ``options.variant``. It is not changed: a copy is measured.
        on_progress: told of each step (``data``, ``measure``, ``plot``) as it starts.

    Returns:
        Per-block norms in execution order.

    Raises:
        OptionError: unknown arch; batch above the number of images; a bad label.
        InputFileError: unreadable data, or ``output`` cannot be written.
    """
    report = on_progress or (lambda progress: None)
    arch, variant, batch, seed = options.arch, Variant(options.variant), options.batch, options.seed
    if output is not None:
        output = require_writable_destination(output)  # before the work, not after it
        refuse_overwriting_inputs([output], [source], command="gradflow plot")
    report(Progress(STAGE, "data"))
    images, labels, label_source, data_name = _load_batch(
        arch, batch=batch, seed=seed, data=source, label_map=options.label_map
    )
    report(Progress(STAGE, "measure"))
    measured = fresh_model(arch, variant, seed) if model is None else _measurable(model, arch, variant)
    blocks, loss, error = _measure(measured, images, labels)
    if not error <= DECOMPOSITION_RTOL:  # a bug in the measurement, not in the user's input: a traceback
        raise RuntimeError(f"branch + shortcut terms differ from dL/dx by {error:.2g} (relative) in {arch}")
    result = GradFlowResult(
        arch=arch,
        variant=variant.value,
        batch=batch,
        seed=seed,
        data=data_name,
        labels=label_source,
        loss=loss,
        blocks=blocks,
        decomposition_error=error,
    )
    if output is not None:
        report(Progress(STAGE, "plot"))
        result = replace(result, plot=plot_gradient_flow([result], output))
    return result


def compare_gradient_flow(
    source: str | Path | None,
    output: Path | str | None,
    options: GradFlowOptions,
    *,
    on_progress: ProgressCallback | None = None,
) -> GradFlowComparison:
    """:func:`gradient_flow` for the residual network and for the same weights with the skips switched off.

    Args, Raises: as :func:`gradient_flow` (``options.variant`` is not read: both are run); ``output`` draws both
    networks in one figure.
    """
    if output is not None:
        output = require_writable_destination(output)
        refuse_overwriting_inputs([output], [source], command="gradflow plot")
    residual = gradient_flow(source, None, replace(options, variant=Variant.RESIDUAL), on_progress=on_progress)
    plain = gradient_flow(source, None, replace(options, variant=Variant.PLAIN), on_progress=on_progress)
    return GradFlowComparison(residual, plain, plot_gradient_flow([residual, plain], output) if output else None)


def fresh_model(arch: str, variant: Variant, seed: int) -> ResNet:
    with torch.random.fork_rng(devices=[]):  # seeding must not disturb the caller's random state
        torch.manual_seed(seed)
        model = create_model(arch, variant=Variant.RESIDUAL if variant is Variant.PLAIN else variant)
    if variant is Variant.PLAIN:
        # The residual network's weights with the skips switched off, so that a comparison differs in the
        # skips alone. The projection shortcuts are the only weights the plain network has no place for.
        state = {k: v for k, v in model.state_dict().items() if ".downsample." not in k}
        model = create_model(arch, variant=Variant.PLAIN)
        model.load_state_dict(state)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False  # an in-place ReLU after the addition would overwrite the sum measured
    # Training mode: BatchNorm normalises with the batch's own statistics, as on the first SGD step, so this
    # is the gradient training starts from. In eval mode a fresh BatchNorm (running mean 0, variance 1) is the
    # identity, and this would measure a network without normalisation, which nobody trains. The running
    # statistics this pass updates belong to a model that is thrown away.
    return model.train()


def _measurable(model: ResNet, arch: str, variant: Variant) -> ResNet:
    """A copy of ``model`` set up as :func:`fresh_model` sets up a fresh one (training mode, no in-place ReLU).

    Raises:
        OptionError: the model is not ``arch`` in ``variant``.
    """
    blocks = sum(get_arch(arch).layers)
    if Variant(model.variant) is not variant or len(model.blocks()) != blocks or model.stem is not get_arch(arch).stem:
        raise OptionError(f"the model given is not {arch} ({variant.value}): {len(model.blocks())} blocks")
    copy = deepcopy(model)
    for module in copy.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return copy.train()  # BatchNorm on the batch's statistics, as a training step sees it


def _load_batch(
    arch: str, *, batch: int, seed: int, data: str | Path | None, label_map: Path | None = None
) -> tuple[Tensor, Tensor, str, str]:
    """One batch of real images with labels (in the fresh model's classes), and where images and labels came from."""
    spec = get_arch(arch)
    data = str(data) if data is not None else (DIGITS_DATA if spec.stem is Stem.SMALL else PHOTOS_DATA)
    num_classes = spec.default_num_classes
    source = open_source(data, classes=ModelClasses(num_classes=num_classes, label_map=label_map))
    if batch > len(source):
        raise OptionError(f"batch {batch} is more than the {len(source)} images in {data}")
    indices = source.indices(limit=batch, seed=seed)
    images, samples = next(iter_batches(source, _preprocessing(arch, data), indices, batch))
    if source.labelled:
        labels = [s.label for s in samples]
        label_source = f"labels of {source.name}"
    else:
        # The built-in photos carry no ImageNet labels. At initialisation the logits are unrelated to any
        # labelling, so any fixed one gives a representative cross-entropy gradient: each image gets one from
        # its content hash, the same in every run and every batch.
        labels = [int(s.sha256[:8], 16) % num_classes for s in samples]
        label_source = f"pseudo-labels (SHA-256 of each image mod {num_classes})"
    return torch.from_numpy(images), torch.tensor(labels), label_source, source.name


def _preprocessing(arch: str, data: str) -> PreprocessSpec:
    if data.startswith("builtin:digits-"):
        # The digits' own statistics at 32x32 RGB, as the built-in digits model was trained with.
        return PreprocessSpec.from_json(read_checkpoint_metadata("builtin:digits-resnet20")["preprocessing"])
    return default_preprocessing(arch)


def _measure(model: ResNet, images: Tensor, labels: Tensor) -> tuple[list[BlockGradient], float, float]:
    """Per-block gradients, the loss and the decomposition error, from a forward pass block by block."""
    x = model.forward_stem(images)
    steps = []
    for path, block in model.blocks():
        branch = block.branch(x)
        shortcut = block.shortcut(x) if block.skip else None
        added = branch if shortcut is None else branch + shortcut
        steps.append((path, block, x, branch, shortcut, added))
        x = block.finish(added)
    loss = nn.functional.cross_entropy(model.forward_head(x), labels)

    # All the gradients in one call; .backward() with retain_grad() would not do: each autograd.grad call
    # below would add into the retained .grad again.
    grads = torch.autograd.grad(loss, [s[2] for s in steps] + [s[5] for s in steps], retain_graph=True)
    blocks: list[BlockGradient] = []
    error = 0.0
    for (path, block, x_l, branch, shortcut, _), grad_x, grad_added in zip(
        steps, grads[: len(steps)], grads[len(steps) :], strict=True
    ):
        branch_term = torch.autograd.grad(branch, x_l, grad_added, retain_graph=True)[0]
        if shortcut is None:
            kind, shortcut_term = "none", None
        elif block.downsample is None:
            kind, shortcut_term = "identity", grad_added  # the "+ I": the gradient at the addition, unchanged
        else:
            kind = "projection"
            shortcut_term = torch.autograd.grad(shortcut, x_l, grad_added, retain_graph=True)[0]
        rebuilt = branch_term if shortcut_term is None else branch_term + shortcut_term
        error = max(error, float((rebuilt - grad_x).norm() / grad_x.norm()))
        blocks.append(
            BlockGradient(
                path=path,
                shortcut=kind,
                activation_norm=float(x_l.detach().norm()),
                grad_norm=float(grad_x.norm()),
                branch_term_norm=float(branch_term.norm()),
                shortcut_term_norm=None if shortcut_term is None else float(shortcut_term.norm()),
            )
        )
    return blocks, loss.item(), error


_COLOURS = {Variant.RESIDUAL.value: "tab:blue", Variant.PLAIN.value: "tab:red", Variant.PREACT.value: "tab:green"}


def plot_gradient_flow(results: Sequence[GradFlowResult], path: Path | str) -> Path:
    """Draw ``||dL/dx_l||`` against block depth, log scale, for each result, and a skip network's two terms.

    The left panel compares the networks. The right one, drawn when a network has skips, splits the first such
    network's gradient into its branch and shortcut terms.

    Returns:
        ``path``, written atomically.

    Raises:
        OptionError: no results, or results for different architectures.
        InputFileError: ``path`` cannot be written.
    """
    if not results:
        raise OptionError("nothing to plot: no gradient-flow results")
    if len({r.arch for r in results}) != 1:
        archs = ", ".join(r.arch for r in results)
        raise OptionError(f"cannot plot different architectures together: {archs}")
    path = require_writable_destination(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = results[0]
    skips = next((r for r in results if r.variant != Variant.PLAIN.value), None)
    figure, axes = plt.subplots(
        1, 2 if skips else 1, figsize=(13 if skips else 7, 5.2), squeeze=False, sharey=True, layout="constrained"
    )
    left = axes[0][0]
    for result in results:
        left.plot(
            _depths(result),
            [b.grad_norm for b in result.blocks],
            marker="o",
            markersize=3,
            color=_COLOURS[result.variant],
            label=f"{result.variant}: {_factor(result.per_block_growth)} per block,"
            f" {_factor(result.first_to_last)} first/last",
        )
    left.set_title("Gradient at each block's input, $\\|\\partial L/\\partial x_l\\|$")
    left.set_ylabel("gradient norm (log scale)")
    if skips:
        _plot_two_terms(axes[0][1], skips)
    for ax in axes[0]:
        ax.set_yscale("log")
        ax.set_xlabel("block depth l (1 = next to the input)")
        for start in _stage_starts(first.blocks)[1:]:
            ax.axvline(start - 0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(
        f"{first.arch} at initialisation: one backward pass on {first.batch} images of"
        f" {first.data}, BatchNorm in training mode; dotted lines: stage boundaries",
        fontsize=10,
    )
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return path


def _plot_two_terms(right: Any, skips: GradFlowResult) -> None:
    """A skip network's gradient split into its branch and shortcut terms, on the axes ``right``."""
    right.plot(
        _depths(skips),
        [b.grad_norm for b in skips.blocks],
        marker="o",
        markersize=3,
        color=_COLOURS[skips.variant],
        label="total $\\|\\partial L/\\partial x_l\\|$",
    )
    right.plot(
        _depths(skips),
        [b.branch_term_norm for b in skips.blocks],
        color="tab:orange",
        linestyle="--",
        label="branch term $\\|(\\partial F_l/\\partial x_l)^\\top g_l\\|$",
    )
    identity = [b.shortcut_term_norm if b.shortcut == "identity" else math.nan for b in skips.blocks]
    right.plot(
        _depths(skips), identity, color="tab:purple", linestyle=":", marker=".", label="identity term $\\|g_l\\|$"
    )
    projections = [
        (d, b.shortcut_term_norm)
        for d, b in zip(_depths(skips), skips.blocks, strict=True)
        if b.shortcut == "projection"
    ]
    if projections:
        right.scatter(
            *zip(*projections, strict=True),
            marker="s",
            color="tab:purple",
            zorder=3,
            label="shortcut term through a projection (1x1 conv)",
        )
    right.set_title(f"{skips.variant}: the two terms of $\\partial L/\\partial x_l$ ($g_l$: gradient at the addition)")


def _depths(result: GradFlowResult) -> list[int]:
    return list(range(1, len(result.blocks) + 1))


def _stage_starts(blocks: Sequence[BlockGradient]) -> list[int]:
    """1-based depths at which a new stage (``layerN``) begins."""
    stages = [b.path.split(".")[0] for b in blocks]
    return [d for d, stage in enumerate(stages, 1) if d == 1 or stage != stages[d - 2]]


def _factor(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"×{value:.3g}" if value < 1e4 else f"×{value:.1e}"
