"""The degradation problem (He et al., "Deep Residual Learning for Image Recognition", 2016, Fig. 1 and Fig. 6),
reproduced on this project's own models.

A deeper *plain* network trains worse than a shallower one (plain-56 above plain-20 in training error, not only in
test error: an optimisation problem, not overfitting), while with identity shortcuts depth helps (ResNet-56 at or
below ResNet-20). This script trains the four networks the same way (same data, schedule, seed and thread count)
with resnet-edge's own train function, on Fashion-MNIST (Debian's ``dataset-fashion-mnist``, read as
``builtin:fashion-mnist-train`` / ``-test``), and measures each one's per-block gradient norms at initialisation and
after training with :mod:`resnet_edge.models.gradflow`. It writes:

- ``degradation.png``: top, training error (dashed) and test error (bold) per iteration, plain networks left and
  ResNets right, as the paper's Fig. 6 draws them; bottom, ``||dL/dx_l||`` at every block's input for the four
  networks, at initialisation and after training.
- ``degradation.json``: every epoch's metrics, the gradient norms, the setup, and the comparisons the paper makes.

Run from the repository root (57 minutes on this project's 2 shared cores at load 6 to 8, at the defaults: 6,000
training and 1,000 test images, 8 epochs; ``--short`` is the test suite's seconds-long check of the same code)::

    nice -n 10 python benchmarks/degradation.py -o docs/
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from resnet_edge.artifacts import atomic_output, output_folder, write_json_atomic
from resnet_edge.jsonable import to_jsonable
from resnet_edge.models.checkpoints import build_model
from resnet_edge.models.gradflow import GradFlowResult, gradient_flow
from resnet_edge.models.options import GradFlowOptions
from resnet_edge.training.options import TrainOptions
from resnet_edge.training.train import TrainResult, initial_model, train_model

TRAIN = "builtin:fashion-mnist-train"
TEST = "builtin:fashion-mnist-test"
# (label, arch, variant), drawn in this order; the paper's names.
NETWORKS = (
    ("plain-20", "resnet20", "plain"),
    ("plain-56", "resnet56", "plain"),
    ("ResNet-20", "resnet20", "residual"),
    ("ResNet-56", "resnet56", "residual"),
)


@dataclass(frozen=True)
class Setup:
    """One schedule for all four networks."""

    train_images: int
    test_images: int
    epochs: int
    batch: int
    lr: float
    schedule: str
    weight_decay: float
    seed: int
    threads: int
    gradflow_batch: int  # images in gradflow's one backward pass (BatchNorm in training mode, as a training step)


# One thread: on a shared 2-core machine two processes of two spinning OpenMP threads each slow each other down
# several-fold (resnet20 trained at 16 img/s with two threads beside another job, 124 img/s with one).
FULL = Setup(
    train_images=6_000, test_images=1_000, epochs=8, batch=64, lr=0.05, schedule="cosine", weight_decay=1e-4,
    seed=0, threads=1, gradflow_batch=64,
)  # fmt: skip
SHORT = Setup(
    train_images=128, test_images=64, epochs=1, batch=64, lr=0.05, schedule="cosine", weight_decay=1e-4,
    seed=0, threads=1, gradflow_batch=8,
)  # fmt: skip


def run(setup: Setup, output_dir: Path, *, log=print) -> dict:
    """Train the four networks and measure their gradients; write the figure and the JSON; return the JSON's data."""
    networks: dict[str, dict] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(setup.threads)  # gradflow's passes too, not only the training (which sets its own)
    with output_folder(output_dir) as output_dir:
        try:
            data = _run(setup, output_dir, networks, log)
        finally:
            torch.set_num_threads(threads)
        plot(data, output_dir / "degradation.png")
    return data


def _run(setup: Setup, output_dir: Path, networks: dict[str, dict], log) -> dict:
    data: dict = {}
    with tempfile.TemporaryDirectory(prefix="degradation-") as scratch:
        for label, arch, variant in NETWORKS:
            options = TrainOptions(
                arch=arch,
                variant=variant,
                limit=setup.train_images,
                val=TEST,
                val_limit=setup.test_images,
                epochs=setup.epochs,
                batch=setup.batch,
                lr=setup.lr,
                schedule=setup.schedule,
                weight_decay=setup.weight_decay,
                seed=setup.seed,
                threads=setup.threads,
                augment="crop",  # pad-and-crop; no flip (the paper's CIFAR recipe flips; garments are symmetric)
            )

            def progress(event, label=label):
                if event.step == "epochs":
                    log(f"{label}: {event.detail}")

            result = train_model(TRAIN, Path(scratch) / f"{label}.safetensors", options, on_progress=progress)
            flow = GradFlowOptions(arch, variant=variant, batch=setup.gradflow_batch, seed=setup.seed)
            at_init = gradient_flow(
                TRAIN, None, flow, model=initial_model(arch, variant=variant, num_classes=10, seed=setup.seed)
            )
            trained = build_model(arch, weights=result.output, variant=variant).model
            after = gradient_flow(TRAIN, None, flow, model=trained)
            networks[label] = {**_record(arch, variant, setup.batch, result, at_init, after), "load_after": _load()}
            log(
                f"{label}: final training error {100 * result.history[-1].train_error:.2f}%, test error"
                f" {100 * result.history[-1].val_error:.2f}%, {result.seconds:.0f} s"
            )
            data = {
                "what": "He et al. 2016 Fig. 6 on Fashion-MNIST: plain vs residual, 20 vs 56 layers, trained alike",
                "setup": to_jsonable(setup),
                "data": {
                    "train": f"{setup.train_images:,} images of {TRAIN} (seed {setup.seed})",
                    "test": result.val_data,
                },
                "machine": {"python": platform.python_version(), "torch": torch.__version__, "load": _load()},
                "networks": networks,
            }
            if len(networks) == len(NETWORKS):
                data["comparisons"] = _comparisons(networks)
            write_json_atomic(output_dir / "degradation.json", data)  # after each network: a long run shows itself
    return data


def _load() -> str:
    """The machine's load averages (1, 5, 15 minutes): other jobs slow a shared machine down."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _record(
    arch: str, variant: str, batch: int, result: TrainResult, at_init: GradFlowResult, after: GradFlowResult
) -> dict:
    steps_per_epoch = -(-result.train_images // batch)
    return {
        "arch": arch,
        "variant": variant,
        "test_data": result.val_data,
        "seconds": result.seconds,
        "iterations_per_epoch": steps_per_epoch,
        "epochs": [
            {
                "epoch": m.epoch,
                "iteration": m.epoch * steps_per_epoch,
                "train_error": m.train_error,
                "test_error": m.val_error,
                "train_loss": m.train_loss,
                "test_loss": m.val_loss,
                "lr": m.lr,
                "images_per_second": m.images_per_second,
            }
            for m in result.history
        ],
        "gradflow": {
            moment: {
                "loss": flow.loss,
                "first_to_last": flow.first_to_last,
                "per_block_growth": flow.per_block_growth,
                "blocks": [{"path": b.path, "grad_norm": b.grad_norm} for b in flow.blocks],
            }
            for moment, flow in (("init", at_init), ("trained", after))
        },
    }


def _comparisons(networks: dict[str, dict]) -> dict[str, object]:
    """The paper's two claims, on the final epoch and on every epoch."""

    def final(label: str, key: str) -> float:
        return networks[label]["epochs"][-1][key]

    def every(deeper: str, shallower: str, key: str) -> list[bool]:
        pairs = zip(networks[deeper]["epochs"], networks[shallower]["epochs"], strict=True)
        return [d[key] > s[key] for d, s in pairs]

    def gap(deeper: str, shallower: str, key: str) -> float:
        return 100 * (final(deeper, key) - final(shallower, key))

    return {
        "plain-56 minus plain-20, final training error (points)": gap("plain-56", "plain-20", "train_error"),
        "plain-56 minus plain-20, final test error (points)": gap("plain-56", "plain-20", "test_error"),
        "ResNet-56 minus ResNet-20, final training error (points)": gap("ResNet-56", "ResNet-20", "train_error"),
        "ResNet-56 minus ResNet-20, final test error (points)": gap("ResNet-56", "ResNet-20", "test_error"),
        "epochs where plain-56 trains worse than plain-20": sum(every("plain-56", "plain-20", "train_error")),
        "epochs where ResNet-56 trains worse than ResNet-20": sum(every("ResNet-56", "ResNet-20", "train_error")),
        "epochs": len(networks["plain-20"]["epochs"]),
    }


_COLOURS = {"20": "tab:orange", "56": "tab:red"}


def plot(data: dict, path: Path) -> Path:
    """Fig. 6's layout (dashed: training error, bold: test error) over the gradient norms per block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    networks = data["networks"]
    figure, axes = plt.subplots(2, 2, figsize=(12, 9), layout="constrained")
    for ax, family in zip(axes[0], ("plain", "ResNet"), strict=True):
        for label, record in networks.items():
            if not label.startswith(family):
                continue
            depth = label.split("-")[1]
            x = [0] + [e["iteration"] for e in record["epochs"]]
            train = [None] + [100 * e["train_error"] for e in record["epochs"]]
            test = [None] + [100 * e["test_error"] for e in record["epochs"]]
            colour = _COLOURS[depth]
            ax.plot(x, train, "--", marker=".", linewidth=1, color=colour, label=f"{label} training error")
            ax.plot(x, test, marker="o", markersize=3, linewidth=2.2, color=colour, label=f"{label} test error")
        ax.set_title(f"{family} networks")
        ax.set_xlabel("iterations")
        ax.set_xlim(left=0)
        ax.set_ylabel("error (%)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    top = max(max(line.get_ydata()[1:], default=0) for ax in axes[0] for line in ax.get_lines())
    for ax in axes[0]:
        ax.set_ylim(0, min(100, top * 1.1))
    for ax, moment, title in zip(axes[1], ("init", "trained"), ("at initialisation", "after training"), strict=True):
        for label, record in networks.items():
            norms = [b["grad_norm"] for b in record["gradflow"][moment]["blocks"]]
            depth = label.split("-")[1]
            ax.plot(
                range(1, len(norms) + 1),
                norms,
                marker="o" if label.startswith("ResNet") else "x",
                markersize=3,
                linestyle="-" if label.startswith("ResNet") else ":",
                color=_COLOURS[depth],
                label=f"{label}: ×{record['gradflow'][moment]['first_to_last']:.3g} first/last",
            )
        ax.set_yscale("log")
        ax.set_title(f"$\\|\\partial L/\\partial x_l\\|$ at each block's input, {title}")
        ax.set_xlabel("block l (1 = next to the input)")
        ax.set_ylabel("gradient norm (log scale)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    setup = data["setup"]
    figure.suptitle(
        f"Degradation on Fashion-MNIST: {setup['train_images']:,} training images, {setup['epochs']} epochs,"
        f" batch {setup['batch']}, SGD lr {setup['lr']} {setup['schedule']}, seed {setup['seed']};"
        f" test error on {setup['test_images']:,} test images",
        fontsize=10,
    )
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output-dir", type=Path, default=Path("docs"))
    parser.add_argument("--short", action="store_true", help="a seconds-long run of the same code (the test suite's)")
    parser.add_argument("--train-images", type=int)
    parser.add_argument("--test-images", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    setup = SHORT if args.short else FULL
    changes = {k: v for k, v in vars(args).items() if k in Setup.__dataclass_fields__ and v is not None}
    setup = Setup(**{**to_jsonable(setup), **changes})
    started = time.perf_counter()
    data = run(setup, args.output_dir)
    for name, value in data["comparisons"].items():
        print(f"{name}: {value:.2f}" if isinstance(value, float) else f"{name}: {value}")
    print(f"wrote {args.output_dir / 'degradation.png'} and degradation.json in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
