"""Train the built-in model: a resnet20 on scikit-learn's handwritten digits, seeded and reproducible.

Writes two files the package ships:

- ``calibration/digits/digits.npz``: the 1,797 8x8 digit images as uint8 (0..16 scaled to 0..255), their labels,
  and a fixed split: 1,200 train / 200 calibration / 397 test rows (``--rebuild-data``; needs scikit-learn).
- ``resnet_edge/data/digits_resnet20.safetensors``: the trained weights. The file's metadata records the arch,
  the preprocessing, the labels, the data set and the accuracy, so ``resnet-edge export --weights`` needs nothing else.

The images go through the package's one preprocessing implementation (8x8 -> 32x32 bilinear, gray to 3 channels,
normalised), so training, calibration and validation see the same tensors. Run from the repository root:

    pip install -e . scikit-learn   # scikit-learn only for --rebuild-data
    python scripts/train_digits.py [--rebuild-data]

About 1-2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from resnet_edge.calibration.preprocess import PreprocessSpec, preprocess_uint8
from resnet_edge.calibration.sources import DIGITS_FILE
from resnet_edge.models.checkpoints import BUILTIN_DIGITS_WEIGHTS
from resnet_edge.models.resnet import create_model

SEED = 0
SPLIT = {"train": 1200, "calib": 200, "test": 397}
ARCH = "resnet20"
DATASET = "sklearn-digits"
EPOCHS = 24
BATCH = 64
MAX_LR = 0.1
SHIFT = 2  # pixels of random translation, the only augmentation


def build_data(path: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 counts -> 0..255 gray
    order = np.random.default_rng(SEED).permutation(len(images))
    cut1, cut2 = SPLIT["train"], SPLIT["train"] + SPLIT["calib"]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        images=images,
        labels=digits.target.astype(np.int64),
        train_rows=np.sort(order[:cut1]),
        calib_rows=np.sort(order[cut1:cut2]),
        test_rows=np.sort(order[cut2:]),
    )


def tensors(images: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    return torch.from_numpy(np.stack([preprocess_uint8(image, spec) for image in images]))


def digits_spec(train_images: np.ndarray) -> PreprocessSpec:
    """32x32 RGB with the training set's own mean and std (gray, so the same on all three channels)."""
    raw = PreprocessSpec(resize=32, crop=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    pixels = tensors(train_images, raw)
    mean, std = float(pixels.mean()), float(pixels.std())
    return PreprocessSpec(resize=32, crop=32, mean=(round(mean, 4),) * 3, std=(round(std, 4),) * 3)


def shift(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to SHIFT pixels (pad with the background value, crop back)."""
    padded = nn.functional.pad(batch, (SHIFT,) * 4, mode="replicate")
    out = torch.empty_like(batch)
    offsets = torch.randint(0, 2 * SHIFT + 1, (len(batch), 2), generator=generator)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy : dy + batch.shape[2], dx : dx + batch.shape[3]]
    return out


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild-data", action="store_true", help="rebuild digits.npz from scikit-learn")
    args = parser.parse_args()
    if args.rebuild_data or not DIGITS_FILE.exists():
        build_data(DIGITS_FILE)

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    with np.load(DIGITS_FILE) as data:
        images, labels = data["images"], data["labels"]
        rows = {name: data[f"{name}_rows"] for name in SPLIT}
    spec = digits_spec(images[rows["train"]])
    x_train, y_train = tensors(images[rows["train"]], spec), torch.from_numpy(labels[rows["train"]])
    x_test, y_test = tensors(images[rows["test"]], spec), torch.from_numpy(labels[rows["test"]])

    model = create_model(ARCH, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=MAX_LR, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps_per_epoch = -(-len(x_train) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, MAX_LR, epochs=EPOCHS, steps_per_epoch=steps_per_epoch)
    generator = torch.Generator().manual_seed(SEED)
    loss_fn = nn.CrossEntropyLoss()
    started = time.perf_counter()
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for start in range(0, len(order), BATCH):
            index = order[start : start + BATCH]
            loss = loss_fn(model(shift(x_train[index], generator)), y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        print(f"epoch {epoch + 1:2d}  loss {total / len(x_train):.4f}  test {evaluate(model, x_test, y_test):.4f}")
    accuracy = evaluate(model, x_test, y_test)
    seconds = time.perf_counter() - started
    print(f"test accuracy {accuracy:.4f} on {len(x_test)} held-out images, {seconds:.0f} s")

    metadata = {
        "arch": ARCH,
        "variant": "residual",
        "dataset": DATASET,
        "preprocessing": spec.to_json(),
        "labels": json.dumps([str(i) for i in range(10)]),
        "test_accuracy": f"{accuracy:.4f}",
        "test_images": str(len(x_test)),
        "seed": str(SEED),
        "epochs": str(EPOCHS),
        "torch": torch.__version__,
        "trained_by": "scripts/train_digits.py",
    }
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    BUILTIN_DIGITS_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(BUILTIN_DIGITS_WEIGHTS), metadata=metadata)
    print(f"wrote {BUILTIN_DIGITS_WEIGHTS}")


if __name__ == "__main__":
    main()
