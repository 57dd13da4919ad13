"""Train the built-in model: a resnet20 on scikit-learn's handwritten digits, seeded and reproducible.

Writes the files the package ships:

- ``calibration/digits/digits.npz``: the 1,797 8x8 digit images as uint8 (0..16 scaled to 0..255), their labels,
  and a fixed split: 1,200 train / 200 calibration / 397 test rows (``--rebuild-data``; needs scikit-learn).
- ``resnet_edge/data/digits_resnet20.safetensors``: the trained weights, made by one ``resnet-edge train`` call
  (:data:`TRAIN`), whose metadata records the arch, the preprocessing (the training digits' own mean and std), the
  labels, the data set, the held-out accuracy and that command, so ``resnet-edge export --weights`` needs nothing
  else; and ``digits_resnet20.metrics.json`` beside it, every epoch's figures.

The same command with the same thread count gives the same weights (``--threads 2``: PyTorch's reductions add in
another order with another thread count). Run from the repository root:

    pip install -e . scikit-learn   # scikit-learn only for --rebuild-data
    python scripts/train_digits.py [--rebuild-data]

About 1-2 minutes on 2 idle CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Before torch starts its threads: waiting ones sleep instead of spinning. Beside another job on a 2-core machine,
# spinning OpenMP threads made a two-thread training step 30-70x slower; the weights are the same either way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from resnet_edge.calibration.sources import DIGITS_FILE
from resnet_edge.models.checkpoints import BUILTIN_DIGITS_WEIGHTS

SEED = 0
SPLIT = {"train": 1200, "calib": 200, "test": 397}
# Random shifts of up to 2 pixels (edge pixels repeated) are the only augmentation: a mirrored digit is another
# symbol. The held-out split is judged after every epoch and never chosen from: the last epoch is kept.
TRAIN = [
    "train",
    *("--data", "builtin:digits-train", "--val", "builtin:digits-test"),
    *("--arch", "resnet20", "--epochs", "24", "--batch", "64", "--lr", "0.1"),
    *("--normalize", "data", "--augment", "crop", "--pad", "2"),
    *("--seed", str(SEED), "--threads", "2"),
    *("-o", "resnet_edge/data/digits_resnet20.safetensors"),  # relative: the checkpoint records this command
]
ROOT = Path(__file__).resolve().parents[1]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild-data", action="store_true", help="rebuild digits.npz from scikit-learn")
    args = parser.parse_args()
    if args.rebuild_data or not DIGITS_FILE.exists():
        build_data(DIGITS_FILE)
    os.chdir(ROOT)
    if (ROOT / TRAIN[-1]).resolve() != BUILTIN_DIGITS_WEIGHTS:
        sys.exit(f"resnet_edge is not imported from {ROOT}: pip install -e . there first")
    from resnet_edge.cli.entry import main as resnet_edge

    # The installed script's own entry: Ctrl-C, kill and a closed terminal keep the last complete epoch and exit
    # with the usual status, as `resnet-edge train` does.
    sys.argv = ["resnet-edge", *TRAIN]
    sys.exit(resnet_edge())


if __name__ == "__main__":
    main()
