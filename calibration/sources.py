"""Where images come from: a folder of images, NumPy arrays, or a data set bundled with the package.

A source knows its items (cheap references: a file path or an array row) and loads one only when asked, so memory
does not grow with the number of images. Each loaded sample carries the SHA-256 of its raw content, which the
calibration record lists and which proves that calibration and evaluation images do not overlap.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import tokenize
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from resnet_edge.artifacts import read_user_text
from resnet_edge.calibration.arrays import READ_ERRORS, ArrayRows, open_npy, open_npz
from resnet_edge.calibration.labels import (
    ModelClasses,
    check_class_indices,
    class_index,
    label_map_rule,
    map_classes,
    read_label_map,
    remap_named_classes,
)
from resnet_edge.calibration.preprocess import PreprocessSpec, preprocess_image, preprocess_uint8
from resnet_edge.errors import InputFileError, OptionError, ResnetEdgeWarning

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LABEL_FILE_NAMES = ("labels.csv", "labels.txt")
BUILTIN_PREFIX = "builtin:"
_PACKAGE_DIR = Path(__file__).resolve().parent
PHOTOS_DIR = _PACKAGE_DIR / "photos"
DIGITS_FILE = _PACKAGE_DIR / "digits" / "digits.npz"
# Fashion-MNIST (Xiao et al. 2017, MIT licence) as Debian's `dataset-fashion-mnist` package installs it: not shipped
# with resnet-edge (30 MB), read in place when present. Class names are folder-friendly forms of the data set's own.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
_FASHION_MNIST_FILES = {"train": "train", "test": "t10k"}


@dataclass(frozen=True)
class Sample:
    """One preprocessed image: ``tensor`` is float32 CHW."""

    id: str
    sha256: str
    tensor: np.ndarray
    label: int | None


class ImageSource:
    """An ordered, indexable collection of images that loads one at a time."""

    name: str
    labelled: bool = False
    skipped: int = 0  # files passed over because they are not images
    label_rule: str | None = None  # how labels became the model's classes (calibration.labels), when labelled

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int, spec: PreprocessSpec) -> Sample:
        raise NotImplementedError

    def label_names(self) -> list[str] | None:
        """Class names by index, where the source defines them (sub-folder names)."""
        return None

    def indices(self, *, limit: int | None = None, seed: int = 0, exclude: Sequence[int] = ()) -> list[int]:
        """A deterministic subset: all indices, or ``limit`` of them drawn with ``seed``, in source order."""
        excluded = set(exclude)
        pool = [i for i in range(len(self)) if i not in excluded]
        if limit is not None:
            if limit < 1:
                raise OptionError(f"limit must be at least 1, got {limit}")
            if limit < len(pool):
                chosen = np.random.default_rng(seed).choice(len(pool), size=limit, replace=False)
                pool = [pool[i] for i in sorted(chosen)]
        return pool


class FolderSource(ImageSource):
    """Images found recursively under a folder, in sorted path order.

    Labels, for a model (``classes``), come from one sub-folder per class or from a ``labels.csv``/``labels.txt`` file
    (``relative/path,label`` per line, label a class index or a class name) in the folder or given explicitly; the
    model's class of each is decided by :func:`resnet_edge.calibration.labels.map_classes`. Without ``classes`` the
    images are not labelled.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        classes: ModelClasses | None = None,
        labels_file: Path | str | None = None,
    ) -> None:
        root = Path(root)
        if not root.exists():
            raise InputFileError(f"image folder not found: {root}")
        if not root.is_dir():
            raise InputFileError(f"not a folder: {root}")
        self.root = root
        self.name = str(root)
        files: list[Path] = []
        skipped = special = 0
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                path = Path(dirpath, filename)
                if filename.startswith("."):
                    continue
                if not path.is_file():  # a FIFO would block the read for ever; a broken symlink cannot be read
                    special += 1
                elif path.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(path)
                elif filename not in LABEL_FILE_NAMES:
                    skipped += 1
        files.sort(key=lambda p: p.relative_to(root).as_posix())
        if special:
            warnings.warn(
                f"{root}: skipped {special} entries that are not regular files (FIFO, socket, device or broken"
                " symlink)",
                ResnetEdgeWarning,
                stacklevel=2,
            )
            skipped += special
        if not files:
            detail = f" ({skipped} other files skipped)" if skipped else ""
            raise InputFileError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}{detail}")
        self.files = files
        self.skipped = skipped
        self._class_names: list[str] | None = None
        if labels_file is not None and classes is None:
            classes = ModelClasses()  # an explicit labels file asks for labels
        self._labels = self._read_labels(labels_file, classes) if classes is not None else None
        self.labelled = self._labels is not None

    def _read_labels(self, labels_file: Path | str | None, classes: ModelClasses) -> list[int] | None:
        if labels_file is None:
            labels_file = next((self.root / n for n in LABEL_FILE_NAMES if (self.root / n).is_file()), None)
        if labels_file is not None:
            return self._labels_from_file(Path(labels_file), classes)
        parents = [f.relative_to(self.root).parts for f in self.files]
        if any(len(parts) < 2 for parts in parents):
            return None
        mapping = map_classes([parts[0] for parts in parents], classes, what=f"class folders of {self.root}")
        self.label_rule = mapping.rule
        self._class_names = [""] * (max(mapping.index.values()) + 1)
        for folder, i in mapping.index.items():
            self._class_names[i] = folder
        return [mapping.index[parts[0]] for parts in parents]

    def _labels_from_file(self, path: Path, classes: ModelClasses) -> list[int]:
        if not path.exists():
            raise InputFileError(f"labels file not found: {path}")
        by_file: dict[str, str] = {}
        for number, line in enumerate(read_user_text(path, what="labels file").splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, label = line.rpartition(",")
            if not sep or not name.strip():
                raise InputFileError(f"{path}:{number}: expected 'relative/path,label', got {line!r}")
            by_file[name.strip()] = label.strip()
        labels = []
        for file in self.files:
            rel = file.relative_to(self.root).as_posix()
            if rel not in by_file:
                raise InputFileError(f"{path}: no label for {rel}")
            labels.append(class_index(by_file[rel], classes, what=f"{path}: label of {rel}"))
        self.label_rule = f"labels file {path}"
        return labels

    def __len__(self) -> int:
        return len(self.files)

    def label_names(self) -> list[str] | None:
        return self._class_names

    def load(self, index: int, spec: PreprocessSpec) -> Sample:
        path = self.files[index]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputFileError(f"cannot read image {path}: {exc.strerror}") from None
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()  # decode now: a truncated file fails here, not somewhere downstream
                tensor = preprocess_image(image, spec)
        except Image.DecompressionBombError as exc:  # Pillow's guard against a tiny file of billions of pixels
            raise InputFileError(f"refusing image {path}: {exc}") from None
        except UnidentifiedImageError:  # Pillow's message names the in-memory buffer (<_io.BytesIO ...>), not the file
            raise InputFileError(f"cannot decode image {path}: not an image format Pillow reads") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise InputFileError(f"cannot decode image {path}: {exc}") from None
        label = self._labels[index] if self._labels is not None else None
        return Sample(path.relative_to(self.root).as_posix(), hashlib.sha256(data).hexdigest(), tensor, label)


class ArraySource(ImageSource):
    """Images in a ``.npy`` or ``.npz`` file, read row by row (:mod:`resnet_edge.calibration.arrays`).

    uint8 arrays are raw images, NHWC or NHW, and go through the preprocessing; float arrays are already
    preprocessed NCHW tensors and must have the model's input shape. An ``.npz`` holds the images under ``images``
    (or ``x``, or its only array) and optionally labels under ``labels`` (or ``y``): class indices, labelled only for
    a model (``classes``), which they must fit.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        name: str | None = None,
        rows: Sequence[int] | None = None,
        classes: ModelClasses | None = None,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise InputFileError(f"array file not found: {path}")
        if path.stat().st_size == 0:
            raise InputFileError(f"array file is empty: {path}")
        try:
            if path.suffix == ".npz":
                arrays = open_npz(path)
                keys = list(arrays)
                images = arrays[_pick_key(keys, ("images", "x"), path)]
                label_key = next((k for k in ("labels", "y") if k in keys), None)
                labels = arrays[label_key] if label_key else None
            elif path.suffix == ".npy":
                images, labels = open_npy(path), None
            else:
                raise InputFileError(f"{path}: arrays must be .npy or .npz")
        except _NUMPY_READ_ERRORS as exc:
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise InputFileError(f"{path}: not a readable NumPy file ({first})") from None
        self._setup(images, labels, name=name or str(path), rows=rows, data_classes=None, classes=classes)

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray,
        labels: np.ndarray | None,
        *,
        name: str,
        class_names: Sequence[str] | None = None,
        classes: ModelClasses | None = None,
    ) -> ArraySource:
        """A source over arrays already in memory (a data set read from another format); ``class_names`` are the
        data's own names of its label indices, mapped to the model's classes when it carries labels."""
        source = cls.__new__(cls)
        source._setup(images, labels, name=name, rows=None, data_classes=class_names, classes=classes)
        return source

    def _setup(
        self,
        images: np.ndarray | ArrayRows,
        labels: np.ndarray | ArrayRows | None,
        *,
        name: str,
        rows: Sequence[int] | None,
        data_classes: Sequence[str] | None,
        classes: ModelClasses | None,
    ) -> None:
        _check_images(images, Path(name))
        if labels is not None and (labels.ndim != 1 or len(labels) != len(images)):
            raise InputFileError(f"{name}: labels must be one per image, got shape {labels.shape} for {len(images)}")
        if labels is not None and not np.issubdtype(labels.dtype, np.integer):
            raise InputFileError(f"{name}: labels must be non-negative class indices, got {labels.dtype} values")
        self.name, self.images = name, images
        self.rows = list(rows) if rows is not None else list(range(len(images)))
        self._class_names = list(data_classes) if data_classes else None
        self._labels, self._remap = None, None
        if labels is not None and classes is not None:
            what = f"labels of {name}"
            if data_classes:
                self._remap, mapping = remap_named_classes(list(data_classes), classes, what=f"classes of {name}")
                self.label_rule = mapping.rule
            else:
                self.label_rule = "the data's class indices"
            for chunk in _label_chunks(labels):
                if self._remap is not None:
                    unknown = sorted(set(chunk.tolist()) - set(self._remap))
                    if unknown:
                        raise InputFileError(f"{what}: class {unknown[0]} has no name among {len(self._remap)}")
                else:
                    check_class_indices(sorted(set(chunk.tolist())), classes, what=what)
            self._labels = labels
        self.labelled = self._labels is not None

    def __len__(self) -> int:
        return len(self.rows)

    def label_names(self) -> list[str] | None:
        return self._class_names

    def load(self, index: int, spec: PreprocessSpec) -> Sample:
        row = self.rows[index]
        raw = np.ascontiguousarray(self.images[row])
        if raw.dtype == np.uint8:
            tensor = preprocess_uint8(raw, spec)
        else:
            if tuple(raw.shape) != spec.input_shape:
                expected = ", ".join(map(str, spec.input_shape))
                raise InputFileError(
                    f"{self.name}: float arrays must be preprocessed NCHW of shape (N, {expected}),"
                    f" got (N, {', '.join(map(str, raw.shape))})"
                )
            # Each image is checked as it is read: a NaN in calibration data silently poisons every range.
            if not np.isfinite(raw).all():
                raise InputFileError(f"{self.name}: image {row} contains NaN or Inf")
            tensor = raw.astype(np.float32)
        label = None
        if self._labels is not None:
            label = int(self._labels[row])
            label = self._remap[label] if self._remap is not None else label
        return Sample(f"{Path(self.name).name}[{row}]", hashlib.sha256(raw.tobytes()).hexdigest(), tensor, label)


LABEL_SCAN_ROWS = 1 << 16  # labels are checked this many at a time, so a huge label array is never held whole


def _label_chunks(labels: np.ndarray | ArrayRows) -> Iterator[np.ndarray]:
    if isinstance(labels, ArrayRows):
        yield from labels.chunks(LABEL_SCAN_ROWS)
    else:
        for start in range(0, len(labels), LABEL_SCAN_ROWS):
            yield np.asarray(labels[start : start + LABEL_SCAN_ROWS])


# What numpy raises on a damaged or hostile .npy/.npz: its header is parsed with Python's tokenizer and
# ast.literal_eval (SyntaxError, TokenError, TypeError on a wrong dict), a shape can overflow or not fit in memory.
_NUMPY_READ_ERRORS = (
    ValueError,
    OSError,
    EOFError,
    zipfile.BadZipFile,
    SyntaxError,
    tokenize.TokenError,
    TypeError,
    KeyError,
    OverflowError,
    MemoryError,
    *READ_ERRORS,
)


def _pick_key(keys: list[str], preferred: tuple[str, ...], path: Path) -> str:
    for key in preferred:
        if key in keys:
            return key
    if len(keys) == 1:
        return keys[0]
    raise InputFileError(f"{path}: no 'images' array among {', '.join(keys) or 'no arrays'}")


def _check_images(images: np.ndarray | ArrayRows, path: Path) -> None:
    if images.ndim == 0 or len(images) == 0:
        raise InputFileError(f"{path}: holds no images")
    if images.ndim >= 3 and 0 in images.shape[1:]:
        raise InputFileError(f"{path}: images of shape {images.shape[1:]} have no pixels")
    if images.dtype == np.uint8:
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] in (1, 3, 4))):
            raise InputFileError(
                f"{path}: uint8 images must be NHW or NHWC with 1, 3 or 4 channels, got shape {images.shape}"
            )
    elif np.issubdtype(images.dtype, np.floating):
        if images.ndim != 4:
            raise InputFileError(f"{path}: float images must be preprocessed NCHW, got shape {images.shape}")
    else:
        raise InputFileError(f"{path}: images must be uint8 or float, got {images.dtype}")


def builtin_names() -> list[str]:
    names = ("photos", "digits-train", "digits-calib", "digits-test", "fashion-mnist-train", "fashion-mnist-test")
    return [f"{BUILTIN_PREFIX}{name}" for name in names]


def fashion_mnist(split: str, *, classes: ModelClasses | None = None) -> ArraySource:
    """Fashion-MNIST's ``train`` (60,000) or ``test`` (10,000) split: 28x28 grey uint8 images and their labels,
    mapped by class name to ``classes`` (the model's).

    Raises:
        InputFileError: the data set is not installed (with the command that installs it).
    """
    images, labels = _read_fashion_mnist(_FASHION_MNIST_FILES[split])
    return ArraySource.from_arrays(
        images,
        labels,
        name=f"{BUILTIN_PREFIX}fashion-mnist-{split}",
        class_names=FASHION_MNIST_CLASSES,
        classes=classes,
    )


@functools.cache
def _read_fashion_mnist(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    return _read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz", 3), _read_idx(
        FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz", 1
    ).astype(np.int64)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (the MNIST format: a 4-byte magic 0x0000 0x08 NDIM, NDIM big-endian sizes, uint8 data)."""
    if not path.is_file():
        raise InputFileError(
            f"Fashion-MNIST is not installed ({path} is missing): sudo apt-get install dataset-fashion-mnist"
        )
    try:
        with gzip.open(path) as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise InputFileError(f"cannot read {path}: {exc}") from None
    header = 4 + 4 * ndim
    if len(data) < header or data[:4] != bytes((0, 0, 8, ndim)):
        raise InputFileError(f"{path} is not an IDX file of {ndim} dimensions")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise InputFileError(f"{path}: {len(data) - header} bytes of data for shape {shape}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def open_source(
    spec: str | Path, *, classes: ModelClasses | None, labels_file: Path | str | None = None
) -> ImageSource:
    """Images for a model, with their labels in the model's classes: the one way every stage reads image data.

    ``spec`` is what a user typed: a folder, a ``.npy``/``.npz`` file, or ``builtin:NAME``. Labels (class folders,
    a labels file, an array's labels) are mapped to the model's classes by
    :func:`resnet_edge.calibration.labels.map_classes` (the model's labels, ``--label-map``, or a noted
    convention), so that one folder gives one figure in every command.

    Args:
        spec: the data.
        classes: the model's classes (:func:`resnet_edge.onnx.metadata.model_classes`), or None where labels are
            not used (timing, calibration images): the images then come unlabelled.
        labels_file: a ``relative/path,label`` file for a folder without class sub-folders.

    Raises:
        InputFileError: missing, empty or unreadable data; labels that do not fit the model's classes.
        OptionError: an unknown built-in name, a labels file for data that is not a folder, a label map that is
            malformed or that the data gives nothing to map (no class names).
    """
    label_map = classes.label_map if classes is not None else None
    if label_map is not None:
        read_label_map(label_map)  # a missing or malformed map is refused, whatever the data
    source = _open(str(spec), classes, labels_file)
    if label_map is not None and source.label_rule != label_map_rule(label_map):
        raise OptionError(
            f"--label-map {label_map}: {source.name} has no class names to map (class sub-folders, or a data set's"
            f" named classes){f'; its labels come from {source.label_rule}' if source.label_rule else ''}"
        )
    return source


def _open(text: str, classes: ModelClasses | None, labels_file: Path | str | None) -> ImageSource:
    if labels_file is not None and not Path(text).is_dir():
        raise OptionError(f"a labels file applies to a folder of images, not to {text} (its labels are its own)")
    if text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX) :]
        if name == "photos":
            source: ImageSource = FolderSource(PHOTOS_DIR)  # unlabelled: photographs of no model's classes
            source.name = text
            source.skipped = 0  # MANIFEST.json and README.md sit beside the photos: not worth a user's attention
            return source
        if name.removeprefix("fashion-mnist-") in _FASHION_MNIST_FILES and name.startswith("fashion-mnist-"):
            return fashion_mnist(name.removeprefix("fashion-mnist-"), classes=classes)
        if name.startswith("digits-"):
            split = name[len("digits-") :]
            with np.load(DIGITS_FILE) as archive:
                if f"{split}_rows" in archive:
                    return ArraySource(DIGITS_FILE, name=text, rows=archive[f"{split}_rows"].tolist(), classes=classes)
        raise OptionError(f"unknown built-in data set {text!r}; choose one of: {', '.join(builtin_names())}")
    path = Path(text)
    if path.is_dir():
        return FolderSource(path, classes=classes, labels_file=labels_file)
    if path.suffix in (".npy", ".npz"):
        return ArraySource(path, classes=classes)
    if not path.exists():
        raise InputFileError(f"data not found: {path}")
    raise InputFileError(f"{path}: data must be a folder of images, a .npy/.npz file, or builtin:NAME")


def iter_batches(
    source: ImageSource, spec: PreprocessSpec, indices: Sequence[int], batch_size: int
) -> Iterator[tuple[np.ndarray, list[Sample]]]:
    """Stacked NCHW batches of the given items, each with its samples (ids, hashes, labels)."""
    if batch_size < 1:
        raise OptionError(f"batch size must be at least 1, got {batch_size}")
    for start in range(0, len(indices), batch_size):
        samples = [source.load(i, spec) for i in indices[start : start + batch_size]]
        yield np.stack([s.tensor for s in samples]), samples


# Built-in data sets a model can be trained on, with the splits later stages default to.
_BUILTIN_SPLITS = {"sklearn-digits": {"calibration": "builtin:digits-calib", "evaluation": "builtin:digits-test"}}
# The data set each built-in source is a split of, by name prefix.
_BUILTIN_DATASETS = {f"{BUILTIN_PREFIX}digits-": "sklearn-digits", f"{BUILTIN_PREFIX}fashion-mnist-": "fashion-mnist"}


def dataset_name(source: str) -> str:
    """The data set a source belongs to, as a checkpoint trained on it records it (``dataset``): the built-in
    splits' own (``builtin:digits-train`` -> ``sklearn-digits``, whose calibration and held-out splits later stages
    then default to), else the source as given."""
    return next((name for prefix, name in _BUILTIN_DATASETS.items() if source.startswith(prefix)), source)


def default_calibration_data(dataset: str | None) -> str:
    """Calibration images for a model trained on ``dataset``: its calibration split, else the bundled photos."""
    return _BUILTIN_SPLITS.get(dataset or "", {}).get("calibration", "builtin:photos")


def default_evaluation_data(dataset: str | None) -> str | None:
    """The held-out split of a built-in data set, or None when the model was not trained on one."""
    return _BUILTIN_SPLITS.get(dataset or "", {}).get("evaluation")


def default_test_images(dataset: str | None) -> str:
    """Images to run a model on when the user names none: its built-in held-out split, else the bundled photos."""
    return default_evaluation_data(dataset) or "builtin:photos"
