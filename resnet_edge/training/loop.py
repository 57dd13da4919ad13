"""The training loop: epochs of shuffled, augmented batches through a pluggable step, then a held-out evaluation.

:func:`fit` knows nothing of checkpoints, options or files. The model, the step (forward, loss, backward, optimiser
and scheduler) and what happens after each epoch are the caller's, so that quantization-aware training can reuse the
loop with a fake-quantized model and its own step, and :func:`resnet_edge.training.train.train_model` adds the
checkpoints, the metrics file and resuming around it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from resnet_edge import formatting as fmt
from resnet_edge.progress import Progress, ProgressCallback
from resnet_edge.training.data import STAGE, LabelledTensors

EVAL_BATCH = 256  # images per forward pass when judging: no gradients are kept, so larger than a training batch


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch, as the loop saw it.

    Attributes:
        epoch: 1-based.
        lr: the learning rate of the epoch's last step.
        train_loss, train_error: mean loss and top-1 error on the epoch's training batches, augmented, with the
            weights as they were at each step and BatchNorm in training mode (what He et al. 2016 plot as
            training error).
        val_loss, val_error: on the held-out images after the epoch, in eval mode; None without held-out images.
        seconds: the epoch's training steps, evaluation excluded.
        images_per_second: training images per second over those steps.
    """

    epoch: int
    lr: float
    train_loss: float
    train_error: float
    val_loss: float | None
    val_error: float | None
    seconds: float
    images_per_second: float

    @property
    def train_accuracy(self) -> float:
        return 1.0 - self.train_error

    @property
    def val_accuracy(self) -> float | None:
        return None if self.val_error is None else 1.0 - self.val_error


class Step(Protocol):
    """One optimisation step on a batch: returns the batch's mean loss and its logits (both detached)."""

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]: ...

    def learning_rate(self) -> float: ...


class Augmentation(Protocol):
    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor: ...


@dataclass
class SGDStep:
    """The default step: cross-entropy, backward, the optimiser's step, then the scheduler's (per batch)."""

    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(images)
        loss = self.loss_fn(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach(), logits.detach()

    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def fit(
    model: nn.Module,
    train: LabelledTensors,
    *,
    epochs: int,
    batch: int,
    step: Step,
    generator: torch.Generator,
    augment: Augmentation | None = None,
    val: LabelledTensors | None = None,
    start_epoch: int = 0,
    frozen: Sequence[nn.Module] = (),
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> list[EpochMetrics]:
    """Train ``model`` from epoch ``start_epoch`` to ``epochs``: each epoch a permutation of ``train`` drawn from
    ``generator``, in batches of ``batch``, each augmented with ``generator`` and passed to ``step``.

    Args:
        model: any module mapping a batch of images to logits.
        train, val: the images and labels; ``val`` is judged after every epoch (eval mode, no gradients).
        step: the optimisation step (:class:`SGDStep`, or a QAT step).
        generator: the one source of the loop's randomness (order and augmentation), so a seed fixes the run and
            a saved generator state resumes it.
        frozen: modules kept in eval mode during training (their BatchNorm statistics do not move).
        on_epoch: called after each epoch with its metrics (a checkpoint is written there).
        on_progress: told after each batch (``epoch E/N``: images done of the epoch, with the running loss and
            accuracy).

    Returns:
        The metrics of the epochs run here.
    """
    report = on_progress or (lambda event: None)
    history: list[EpochMetrics] = []
    for epoch in range(start_epoch, epochs):
        model.train()
        for module in frozen:
            module.eval()
        started = time.perf_counter()
        loss_sum, correct = _train_epoch(
            model, train, batch, step, generator, augment, f"epoch {epoch + 1}/{epochs}", report
        )
        seconds = time.perf_counter() - started
        val_loss, val_error = evaluate(model, val) if val is not None and len(val) else (None, None)
        count = len(train)
        metrics = EpochMetrics(
            epoch=epoch + 1,
            lr=step.learning_rate(),
            train_loss=loss_sum / count,
            train_error=1.0 - correct / count,
            val_loss=val_loss,
            val_error=val_error,
            seconds=seconds,
            images_per_second=count / seconds if seconds > 0 else float("inf"),
        )
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    return history


def _train_epoch(
    model: nn.Module,
    train: LabelledTensors,
    batch: int,
    step: Step,
    generator: torch.Generator,
    augment: Augmentation | None,
    name: str,
    report: ProgressCallback,
) -> tuple[float, int]:
    """One pass over ``train`` in an order drawn from ``generator``; returns the summed loss and the images right."""
    count = len(train)
    order = torch.randperm(count, generator=generator)
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.long)
    for begin in range(0, count, batch):
        index = order[begin : begin + batch]
        images, labels = train.images[index], train.labels[index]
        if augment is not None:
            images = augment(images, generator)
        loss, logits = step(model, images, labels)
        loss_sum += loss.double() * len(index)
        correct += (logits.argmax(1) == labels).sum()
        done = min(begin + batch, count)
        report(
            Progress(
                STAGE,
                name,
                done,
                count,
                unit="img",
                detail=f"loss {float(loss_sum) / done:.4f}, accuracy {fmt.percent(int(correct) / done)}",
            )
        )
    return float(loss_sum), int(correct)


def evaluate(model: nn.Module, data: LabelledTensors, *, batch: int = EVAL_BATCH) -> tuple[float, float]:
    """Mean cross-entropy and top-1 error of ``model`` on ``data``, in eval mode.

    The model is left in eval mode.
    """
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for begin in range(0, len(data), batch):
            images, labels = data.images[begin : begin + batch], data.labels[begin : begin + batch]
            logits = model(images)
            loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
    return loss_sum / len(data), 1.0 - correct / len(data)
