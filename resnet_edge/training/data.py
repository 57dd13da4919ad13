"""The training images: opened through :mod:`resnet_edge.calibration` like every other stage's, decoded once into
tensors, checked, split, and augmented on whole batches.

Decoding is the slow part of a small model's training on a CPU (a JPEG takes longer to decode and resize than a
resnet20 takes to learn from it), so every image is decoded once, through the one preprocessing
(:func:`resnet_edge.calibration.preprocess.preprocess_image`), in parallel threads (Pillow releases the GIL while it
decodes), and kept as a float32 tensor. Augmentation then works on batches in PyTorch: a random crop (one gather for
the whole batch) and a random left-right flip.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from resnet_edge.calibration.labels import ModelClasses
from resnet_edge.calibration.preprocess import PreprocessSpec
from resnet_edge.calibration.sources import (
    IMAGE_SUFFIXES,
    FolderSource,
    ImageSource,
    Sample,
    dataset_name,
    open_source,
)
from resnet_edge.errors import InputFileError, OptionError, ResnetEdgeWarning
from resnet_edge.memory import MemoryEstimate, check_fits
from resnet_edge.progress import Progress, ProgressCallback

STAGE = "train"
_DECODE_REPORT_EVERY = 256  # images between two decode progress events
_FLOAT_BYTES = 4


@dataclass(frozen=True)
class LabelledTensors:
    """Preprocessed images (float32 NCHW) and their class indices (int64), ready for the loop."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> LabelledTensors:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return LabelledTensors(self.images[index], self.labels[index])


@dataclass(frozen=True)
class DecodedSource:
    """Every chosen image of a source, decoded, with what identifies it."""

    name: str
    dataset: str  # the data set's name, as checkpoints record it (``sklearn-digits``, or the source as given)
    class_names: list[str] | None  # by class index, where the source names its classes (sub-folders)
    tensors: LabelledTensors
    sha256: list[str]  # each image's raw content, in order


def open_labelled(spec: str, *, class_names: Sequence[str] | None = None) -> ImageSource:
    """The source of training or held-out images, opened as every stage opens its images, and labelled.

    This is the training stage's one call into the label mapping (sub-folders or a labels file to class indices):
    the mapping itself belongs to :mod:`resnet_edge.calibration`.

    Raises:
        InputFileError: missing, empty or unreadable data; data without labels; an empty class folder.
        OptionError: an unknown built-in name.
    """
    with warnings.catch_warnings():
        if class_names is None:
            # Training from scratch: the data's classes become the model's, in sorted order, and the checkpoint
            # records them as its labels, so the "model carries no labels" note would be about a model not yet made.
            warnings.filterwarnings("ignore", message=".*the model carries no labels", category=ResnetEdgeWarning)
        source = open_source(spec, classes=ModelClasses(labels=tuple(class_names) if class_names else None))
    if not source.labelled:
        raise InputFileError(
            f"{source.name} has no labels: put each class's images in a sub-folder named after the class"
            " (or give a labels.csv, or an .npz with 'labels')"
        )
    if isinstance(source, FolderSource) and source.label_names():
        # Labelled by sub-folders: one without images would silently be a class the model never hears of.
        classes = set(source.label_names() or ())
        empty = sorted(
            d.name for d in source.root.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in classes
        )
        if empty:
            raise InputFileError(
                f"{source.name}: class folder(s) {', '.join(empty)} hold no images ({', '.join(IMAGE_SUFFIXES)})"
            )
    return source


def decode(
    source: ImageSource,
    spec: PreprocessSpec,
    indices: Sequence[int],
    *,
    threads: int,
    what: str,
    on_progress: ProgressCallback | None = None,
) -> DecodedSource:
    """Decode ``indices`` of ``source`` through ``spec`` into one tensor, in ``threads`` threads, in order.

    Raises:
        OptionError: the tensors would not fit in the memory available.
        InputFileError: an image cannot be read or decoded (naming it).
    """
    per_image = _FLOAT_BYTES * int(np.prod(spec.input_shape))
    check_fits(
        f"keeping the {len(indices):,} {what} images decoded at {'x'.join(map(str, spec.input_shape))}",
        MemoryEstimate(per_image=per_image, fixed=0),
        len(indices),
        hint="use --limit or a smaller --input-size",
    )
    images = torch.empty((len(indices), *spec.input_shape), dtype=torch.float32)
    labels = torch.empty(len(indices), dtype=torch.long)
    hashes: list[str] = []
    report = on_progress or (lambda event: None)

    def load(index: int) -> Sample:
        return source.load(index, spec)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for position, sample in enumerate(pool.map(load, indices)):
            images[position] = torch.from_numpy(sample.tensor)
            labels[position] = -1 if sample.label is None else sample.label
            hashes.append(sample.sha256)
            if (position + 1) % _DECODE_REPORT_EVERY == 0 or position + 1 == len(indices):
                report(Progress(STAGE, f"decode {what}", position + 1, len(indices), unit="img"))
    names = source.label_names()
    return DecodedSource(
        name=source.name,
        dataset=dataset_name(source.name),
        class_names=list(names) if names else None,
        tensors=LabelledTensors(images, labels),
        sha256=hashes,
    )


def class_names_of(train: DecodedSource) -> list[str]:
    """The classes by index: the source's names, else the indices as text (``"0"``, ``"1"``, ...).

    Raises:
        InputFileError: fewer than two classes, or a class index without a training image.
    """
    labels = train.tensors.labels
    count = int(labels.max()) + 1
    names = list(train.class_names) if train.class_names else [str(i) for i in range(count)]
    present = torch.bincount(labels, minlength=len(names))
    missing = [names[i] or str(i) for i in range(len(names)) if present[i] == 0]
    if missing:
        raise InputFileError(
            f"{train.name}: class(es) {', '.join(missing)} have no training images (classes are numbered"
            f" 0 to {len(names) - 1}; folders named by numbers are taken as class indices)"
        )
    if len(names) < 2:
        raise InputFileError(
            f"{train.name} has one class ({names[0]}): a classifier needs at least two, one sub-folder each"
        )
    return names


def check_val_classes(val: DecodedSource, class_names: Sequence[str]) -> None:
    """Held-out images must use the training classes (named classes were mapped by name when the source opened, by
    :func:`open_labelled`; this catches indices beyond them).

    Raises:
        InputFileError: a held-out class the training data does not have.
    """
    top = int(val.tensors.labels.max())
    if top >= len(class_names):
        raise InputFileError(f"{val.name}: label {top} is outside the {len(class_names)} training classes")


def stratified_split(labels: Tensor, fraction: float, *, seed: int) -> tuple[list[int], list[int]]:
    """Training and held-out positions: ``fraction`` of each class (rounded; at least one image where a class
    has two or more and ``fraction`` > 0) held out, drawn with ``seed``. Both lists in source order."""
    if fraction <= 0:
        return list(range(len(labels))), []
    rng = np.random.default_rng(seed)
    held: list[int] = []
    values = labels.numpy()
    for label in np.unique(values):
        members = np.flatnonzero(values == label)
        count = min(len(members) - 1, max(1, round(fraction * len(members))))
        if count > 0:
            held.extend(rng.choice(members, size=count, replace=False).tolist())
    chosen = set(held)
    return [i for i in range(len(labels)) if i not in chosen], sorted(held)


def dataset_sha256(class_names: Sequence[str], parts: Sequence[tuple[str, Sequence[str], Tensor]]) -> str:
    """One hash of what was trained and judged on: the class names, and each image's content hash and label."""
    digest = hashlib.sha256(json.dumps(list(class_names)).encode())
    for split, hashes, labels in parts:
        for sha, label in zip(hashes, labels.tolist(), strict=True):
            digest.update(f"{split}\t{label}\t{sha}\n".encode())
    return digest.hexdigest()


def data_statistics(train: LabelledTensors) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of images preprocessed without normalisation, rounded to 4
    decimals as a recorded preprocessing keeps them."""
    pixels = train.images.double()
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.std(dim=(0, 2, 3))
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def unnormalised(spec: PreprocessSpec) -> PreprocessSpec:
    """``spec`` without its normalisation (mean 0, std 1): pixels scaled to [0, 1]."""
    return replace(spec, mean=(0.0,) * spec.channels, std=(1.0,) * spec.channels)


def training_spec(spec: PreprocessSpec) -> PreprocessSpec:
    """The spec training images are kept at: the resized image's centre square before the centre crop, so that a
    random crop can take the model's input from anywhere in it (for ``resize == crop``, the input itself)."""
    return replace(spec, crop=spec.resize)


@dataclass(frozen=True)
class BatchAugment:
    """A random crop of ``size`` from each image padded by ``pad`` pixels, and a random left-right flip.

    Padding repeats the border pixels rather than adding a black frame: the background continues, as the built-in
    digits model was trained. The offsets are drawn from ``generator`` once per batch (``(n, 2)`` integers, rows
    then columns), then the flips (``n`` uniforms), so a seed fixes every batch.
    """

    size: int
    pad: int
    crop: bool = True
    flip: bool = True

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if self.crop:
            images = _random_crop(images, self.size, self.pad, generator)
        elif images.shape[-1] != self.size:
            images = centre_crop(images, self.size)
        if self.flip:
            flipped = torch.rand(len(images), generator=generator) < 0.5
            images = torch.where(flipped[:, None, None, None], images.flip(-1), images)
        return images


def _random_crop(images: Tensor, size: int, pad: int, generator: torch.Generator) -> Tensor:
    if pad:
        images = nn.functional.pad(images, (pad,) * 4, mode="replicate")
    n, channels, height, width = images.shape
    if height < size or width < size:
        raise OptionError(f"cannot crop {size}x{size} from training images of {height}x{width}")
    span = min(height, width) - size + 1
    offsets = torch.randint(0, span, (n, 2), generator=generator)
    # One gather for the whole batch: rows dy..dy+size and columns dx..dx+size of each image.
    steps = torch.arange(size)
    rows = (offsets[:, 0, None] + steps)[:, None, :, None]
    cols = (offsets[:, 1, None] + steps)[:, None, None, :]
    return images[torch.arange(n)[:, None, None, None], torch.arange(channels)[None, :, None, None], rows, cols]


def centre_crop(images: Tensor, size: int) -> Tensor:
    """The centre ``size`` x ``size`` of each image, as the preprocessing's centre crop places it."""
    top = (images.shape[-2] - size) // 2
    left = (images.shape[-1] - size) // 2
    return images[..., top : top + size, left : left + size].contiguous()
