"""Image sources, the one preprocessing, and the streaming calibration reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_edge.calibration.arrays import ArrayRows
from resnet_edge.calibration.calibration_reader import ImageCalibrationReader
from resnet_edge.calibration.labels import ModelClasses
from resnet_edge.calibration.preprocess import ChannelOrder, PreprocessSpec, preprocess_image
from resnet_edge.calibration.sources import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    PHOTOS_DIR,
    ArraySource,
    FolderSource,
    open_source,
)
from resnet_edge.errors import InputFileError, OptionError, ResnetEdgeWarning

SPEC = PreprocessSpec.imagenet(32)


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (40, 30), value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new(mode, size, value if mode in ("L", "P") else (value,) * len(mode))
    image.save(path)
    return path


def test_bundled_photos_are_real_licensed_and_listed() -> None:
    manifest = json.loads((PHOTOS_DIR / "MANIFEST.json").read_text())
    files = sorted(p.name for p in PHOTOS_DIR.iterdir() if p.suffix in (".jpg", ".png"))
    assert len(files) >= 40 and files == sorted(entry["file"] for entry in manifest["images"])
    assert {entry["licence"] for entry in manifest["images"]} <= {"public domain", "CC0-1.0"}
    source = open_source("builtin:photos", classes=None)
    assert len(source) == len(files) and source.name == "builtin:photos"


def test_preprocessing_resizes_crops_and_normalises() -> None:
    image = Image.new("RGB", (64, 48), (255, 0, 0))
    spec = PreprocessSpec(resize=32, crop=24, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    tensor = preprocess_image(image, spec)
    assert tensor.shape == (3, 24, 24) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[0], 1.0, atol=1e-6)  # (1 - 0.5) / 0.5
    np.testing.assert_allclose(tensor[1], -1.0, atol=1e-6)
    bgr = PreprocessSpec(resize=32, crop=24, mean=(0.5,) * 3, std=(0.5,) * 3, channel_order=ChannelOrder.BGR)
    np.testing.assert_allclose(preprocess_image(image, bgr)[2], 1.0, atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_any_image_mode_becomes_the_spec_channels(mode: str) -> None:
    image = Image.new(mode, (20, 20))
    assert preprocess_image(image, SPEC).shape == (3, 32, 32)
    assert preprocess_image(image, PreprocessSpec.imagenet(32, channels=1)).shape == (1, 32, 32)


def test_spec_round_trips_through_json() -> None:
    spec = PreprocessSpec.small(32, channels=1)
    assert PreprocessSpec.from_json(spec.to_json()) == spec
    with pytest.raises(OptionError):
        PreprocessSpec(resize=16, crop=32, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_folder_is_recursive_sorted_skips_non_images_and_reads_class_folders(tmp_path: Path) -> None:
    for name in ("b/2.png", "a/1.jpg", "a/sub/3.bmp", "b/0.webp"):
        write_image(tmp_path / name)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    with pytest.warns(ResnetEdgeWarning, match="sorted names"):
        source = FolderSource(tmp_path, classes=ModelClasses(num_classes=2))
    assert [f.relative_to(tmp_path).as_posix() for f in source.files] == [
        "a/1.jpg",
        "a/sub/3.bmp",
        "b/0.webp",
        "b/2.png",
    ]
    assert source.skipped == 1 and source.labelled and source.label_names() == ["a", "b"]
    assert [source.load(i, SPEC).label for i in range(4)] == [0, 0, 1, 1]


def test_class_folders_follow_the_model_labels(tmp_path: Path) -> None:
    write_image(tmp_path / "cat" / "x.png")
    write_image(tmp_path / "dog" / "y.png")
    source = FolderSource(tmp_path, classes=ModelClasses(labels=("dog", "bird", "cat")))
    assert [source.load(i, SPEC).label for i in range(2)] == [2, 0]


def test_labels_file(tmp_path: Path) -> None:
    write_image(tmp_path / "x.png")
    write_image(tmp_path / "y.png")
    (tmp_path / "labels.csv").write_text("x.png,3\ny.png,cat\n")
    source = FolderSource(tmp_path, classes=ModelClasses(labels=("a", "b", "cat", "d")))
    assert [source.load(i, SPEC).label for i in range(2)] == [3, 2]
    (tmp_path / "labels.csv").write_text("x.png,3\n")
    with pytest.raises(InputFileError, match="no label for y.png"):
        FolderSource(tmp_path, classes=ModelClasses())


def test_empty_and_imageless_folders(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no images"):
        FolderSource(tmp_path)
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(InputFileError, match=r"no images .* \(1 other files skipped\)"):
        FolderSource(tmp_path)
    with pytest.raises(InputFileError, match="not found"):
        open_source(tmp_path / "missing", classes=None)


def test_truncated_and_undecodable_images_name_the_file(tmp_path: Path) -> None:
    good = write_image(tmp_path / "good.jpg", size=(200, 200))
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:300])
    (tmp_path / "fake.png").write_bytes(b"this is not a png")
    source = FolderSource(tmp_path)
    with pytest.raises(InputFileError, match="cannot decode image .*cut.jpg"):
        source.load(0, SPEC)
    with pytest.raises(InputFileError, match="cannot decode image .*fake.png"):
        source.load(1, SPEC)


def test_uint8_nhwc_and_float_nchw_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "raw.npz", images=rng.integers(0, 255, (6, 40, 40, 3), dtype=np.uint8), labels=np.arange(6))
    raw = ArraySource(tmp_path / "raw.npz", classes=ModelClasses(num_classes=10))
    sample = raw.load(2, SPEC)
    assert sample.tensor.shape == (3, 32, 32) and sample.label == 2 and raw.labelled
    np.save(tmp_path / "pre.npy", rng.standard_normal((4, 3, 32, 32)).astype(np.float32))
    pre = ArraySource(tmp_path / "pre.npy")
    assert isinstance(pre.images, ArrayRows) and not isinstance(pre.images, np.ndarray)  # read row by row
    np.testing.assert_array_equal(pre.load(1, SPEC).tensor, np.load(tmp_path / "pre.npy")[1])


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((4, 3, 16, 16), np.float32), r"must be preprocessed NCHW of shape \(N, 3, 32, 32\)"),
        (np.zeros((4, 1, 32, 32), np.float32), r"\(N, 1, 32, 32\)"),
    ],
)
def test_arrays_of_the_wrong_shape_or_channels(tmp_path: Path, array: np.ndarray, match: str) -> None:
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(InputFileError, match=match):
        ArraySource(tmp_path / "bad.npy").load(0, SPEC)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((2, 32, 32, 5), np.uint8), "1, 3 or 4 channels"),
        (np.zeros((0, 3, 32, 32), np.float32), "holds no images"),
        (np.zeros((2, 3), np.int32), "must be uint8 or float"),
    ],
)
def test_bad_arrays_fail_when_opened(tmp_path: Path, array: np.ndarray, match: str) -> None:
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(InputFileError, match=match):
        ArraySource(tmp_path / "bad.npy")


def test_a_nan_image_is_refused_when_read(tmp_path: Path) -> None:
    """Each image is checked as it is read (the file is never read whole), so NaN cannot reach a range."""
    array = np.zeros((3, 3, 32, 32), np.float32)
    array[1, 0, 5, 5] = np.nan
    np.save(tmp_path / "nan.npy", array)
    source = ArraySource(tmp_path / "nan.npy")
    source.load(0, SPEC)
    with pytest.raises(InputFileError, match=r"image 1 contains NaN or Inf"):
        source.load(1, SPEC)


def test_limit_draws_a_seeded_deterministic_subset() -> None:
    source = open_source("builtin:digits-calib", classes=None)
    a = source.indices(limit=20, seed=1)
    assert a == source.indices(limit=20, seed=1) and a != source.indices(limit=20, seed=2)
    assert len(a) == 20 and a == sorted(a)
    assert source.indices(limit=10_000) == list(range(len(source)))


def test_builtin_digits_splits_are_disjoint() -> None:
    rows = {name: set(open_source(f"builtin:digits-{name}", classes=None).rows) for name in ("train", "calib", "test")}
    assert [len(r) for r in rows.values()] == [1200, 200, 397]
    assert not (rows["train"] & rows["calib"] or rows["train"] & rows["test"] or rows["calib"] & rows["test"])
    with pytest.raises(OptionError, match="unknown built-in data set"):
        open_source("builtin:digits-nope", classes=None)


def test_reader_streams_batches_and_rewinds() -> None:
    source = open_source("builtin:photos", classes=None)
    seen_batches: list[int] = []
    reader = ImageCalibrationReader(
        source, SPEC, list(range(10)), input_name="input", batch_size=4, on_batch=seen_batches.append
    )
    shapes = []
    while (feed := reader.get_next()) is not None:
        shapes.append(feed["input"].shape)
    assert shapes == [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)] and seen_batches == [4, 4, 2]
    assert len(reader) == 3 and len(reader.seen) == 10
    reader.rewind()
    assert reader.get_next()["input"].shape == (4, 3, 32, 32)


def test_numeric_class_folders_keep_their_numbers(tmp_path: Path) -> None:
    write_image(tmp_path / "00" / "a.png")
    write_image(tmp_path / "07" / "b.png")
    with pytest.warns(ResnetEdgeWarning, match="integer names"):
        source = FolderSource(tmp_path, classes=ModelClasses(num_classes=10))
    assert [source.load(i, SPEC).label for i in range(2)] == [0, 7]


def test_corrupt_npz_and_bad_labels(tmp_path: Path) -> None:
    np.savez(tmp_path / "ok.npz", images=np.zeros((2, 8, 8), np.uint8))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:100])
    with pytest.raises(InputFileError, match="cut.npz: not a readable NumPy file"):
        ArraySource(tmp_path / "cut.npz")
    np.savez(tmp_path / "float_labels.npz", images=np.zeros((2, 8, 8), np.uint8), labels=np.array([0.5, 1.0]))
    with pytest.raises(InputFileError, match="non-negative class indices"):
        ArraySource(tmp_path / "float_labels.npz")


def test_a_labels_file_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="labels file applies to a folder"):
        open_source("builtin:photos", classes=None, labels_file=tmp_path / "labels.csv")


@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="Debian's dataset-fashion-mnist missing"
)
def test_fashion_mnist_reads_from_debians_package_with_its_class_names():
    source = open_source("builtin:fashion-mnist-test", classes=ModelClasses(labels=FASHION_MNIST_CLASSES))
    assert len(source) == 10_000 and source.labelled
    assert source.label_names() == list(FASHION_MNIST_CLASSES)
    sample = source.load(0, PreprocessSpec.small(28, channels=1))
    assert sample.tensor.shape == (1, 28, 28) and sample.label == 9  # the test split opens with an ankle boot


def test_an_idx_file_that_is_not_one_is_refused(tmp_path):
    import gzip

    from resnet_edge.calibration.sources import _read_idx

    path = tmp_path / "x-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") * 3 + b"\x00" * 7)
    with pytest.raises(InputFileError, match="7 bytes of data for shape"):
        _read_idx(path, 3)
    with pytest.raises(InputFileError, match="apt-get install dataset-fashion-mnist"):
        _read_idx(tmp_path / "missing.gz", 3)


def test_a_label_map_says_which_class_each_folder_is(tmp_path: Path) -> None:
    for name in ("kitty", "puppy"):
        write_image(tmp_path / "data" / name / "x.png")
    (tmp_path / "map.txt").write_text("# folder,class\nkitty,cat\npuppy,1\n")
    classes = ModelClasses(labels=("bird", "dog", "cat"), num_classes=3, label_map=tmp_path / "map.txt")
    source = open_source(tmp_path / "data", classes=classes)
    assert [source.load(i, SPEC).label for i in range(2)] == [2, 1] and source.label_rule.startswith("--label-map")
    (tmp_path / "map.txt").write_text("kitty,cat\n")
    with pytest.raises(InputFileError, match=r"'puppy' not in --label-map .* \(it maps 'kitty'\)"):
        open_source(tmp_path / "data", classes=classes)
    (tmp_path / "map.txt").write_text("kitty,lion\npuppy,dog\n")
    with pytest.raises(InputFileError, match=r"class 'lion' is neither a model label nor a class index"):
        open_source(tmp_path / "data", classes=classes)
    digits = ModelClasses(labels=tuple("0123456789"), num_classes=10, label_map=tmp_path / "map.txt")
    with pytest.raises(OptionError, match="has no class names to map"):  # the digits are labelled by index
        open_source("builtin:digits-test", classes=digits)


def test_a_data_sets_named_classes_follow_a_model_labelled_in_another_order() -> None:
    images, labels = np.zeros((3, 8, 8), np.uint8), np.array([0, 1, 2])
    model = ModelClasses(labels=("c", "a", "b"), num_classes=3)
    source = ArraySource.from_arrays(images, labels, name="set", class_names=("a", "b", "c"), classes=model)
    assert [source.load(i, SPEC).label for i in range(3)] == [1, 2, 0]  # by name, never by position
    with pytest.raises(InputFileError, match=r"'d' are not among the model's labels \('c', 'a', 'b'\)"):
        ArraySource.from_arrays(images, labels, name="set", class_names=("a", "b", "d"), classes=model)


def test_sorted_numbering_needs_every_class(tmp_path: Path) -> None:
    """Without labels, sorted folder names match the model only if no class is missing; else refused."""
    for name in ("ant", "bee"):
        write_image(tmp_path / name / "x.png")
    with pytest.raises(InputFileError, match="2 classes .* for a model of 3 classes that carries no labels"):
        FolderSource(tmp_path, classes=ModelClasses(num_classes=3))
