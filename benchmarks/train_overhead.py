"""What resnet-edge's training loop costs over a bare PyTorch loop on the same data.

The same decoded Fashion-MNIST tensors, the same model (a resnet20 at 32x32), batch size, optimiser and one-cycle
schedule; epochs of each variant interleaved round by round, so that the machine's load falls on all alike, and the
median epoch compared:

- ``bare``: ``randperm``, index, forward, cross-entropy, ``zero_grad``, backward, ``step``, scheduler ``step``: the
  loop every PyTorch tutorial writes.
- ``fit``: :func:`resnet_edge.training.loop.fit` with its :class:`SGDStep`: the running loss and accuracy, a
  ``Progress`` event per batch drawn by the CLI's progress bars (to /dev/null), no augmentation.
- ``fit + augment``: the same with ``resnet-edge train``'s default augmentation (pad 4, random crop, flip), as the
  command runs it.

Also printed: how fast the images decode (once, before training) against how fast they train.

    nice -n 10 python benchmarks/train_overhead.py [--images 4096] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch
from torch import nn

from resnet_edge.calibration.preprocess import PreprocessSpec
from resnet_edge.cli.options import progress_bars
from resnet_edge.models.resnet import create_model
from resnet_edge.training.data import BatchAugment, LabelledTensors, decode, open_labelled
from resnet_edge.training.loop import SGDStep, fit

DATA = "builtin:fashion-mnist-train"


def _optimiser(model: nn.Module, steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.1, total_steps=steps)


def bare_epoch(model, optimizer, scheduler, data: LabelledTensors, batch: int, generator) -> None:
    model.train()
    order = torch.randperm(len(data), generator=generator)
    for begin in range(0, len(data), batch):
        index = order[begin : begin + batch]
        loss = nn.functional.cross_entropy(model(data.images[index]), data.labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = PreprocessSpec.small(32)
    source = open_labelled(DATA)
    indices = source.indices(limit=args.images, seed=0)
    started = time.perf_counter()
    data = decode(source, spec, indices, threads=args.threads, what="train").tensors
    decode_rate = len(indices) / (time.perf_counter() - started)

    steps = args.rounds * -(-len(data) // args.batch) + 1
    variants = {}
    for name in ("bare", "fit", "fit + augment"):
        torch.manual_seed(0)
        model = create_model("resnet20")
        optimizer, scheduler = _optimiser(model, steps)
        variants[name] = (model, optimizer, scheduler, torch.Generator().manual_seed(0))
    augment = BatchAugment(32, 4)
    times: dict[str, list[float]] = {name: [] for name in variants}
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull), progress_bars(True) as bars:
        for _ in range(args.rounds):
            for name, (model, optimizer, scheduler, generator) in variants.items():
                started = time.perf_counter()
                if name == "bare":
                    bare_epoch(model, optimizer, scheduler, data, args.batch, generator)
                else:
                    step = SGDStep(optimizer, nn.CrossEntropyLoss(), scheduler)
                    fit(
                        model,
                        data,
                        epochs=1,
                        batch=args.batch,
                        step=step,
                        generator=generator,
                        augment=augment if name == "fit + augment" else None,
                        on_progress=bars,
                    )
                times[name].append(time.perf_counter() - started)
    bare = statistics.median(times["bare"])
    print(f"{len(data):,} images, resnet20 at 32x32, batch {args.batch}, {args.threads} threads, {args.rounds} rounds")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:>14}: median epoch {median:.2f} s ({len(data) / median:,.0f} img/s),"
            f" {100 * (median / bare - 1):+.1f}% vs bare; epochs {', '.join(f'{v:.2f}' for v in values)}"
        )
    print(f"decoding: {decode_rate:,.0f} img/s, once, against {len(data) / bare:,.0f} img/s of training")
    with open("/proc/loadavg") as f:
        print(f"load average: {f.read().split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
