"""Property-based tests of the parsers that take user text or files: whatever comes in, the answer is a value or a
ResnetEdgeError (one ``error:`` line), never another exception, and never a hang."""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path

import click
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from resnet_edge.calibration.labels import ModelClasses, map_classes
from resnet_edge.calibration.preprocess import PreprocessSpec
from resnet_edge.calibration.sources import ArraySource, FolderSource
from resnet_edge.cli.options import parse_batches
from resnet_edge.conversion.export import read_labels_file
from resnet_edge.errors import ResnetEdgeError
from resnet_edge.onnx.providers import parse_providers
from resnet_edge.pipeline.config import PipelineConfig, load_config, make_config, option_keys

FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SPEC = PreprocessSpec.small(16)


@FEW
@given(st.text(max_size=30))
def test_batch_lists_parse_or_refuse(text: str) -> None:
    try:
        batches = parse_batches(text)
    except click.BadParameter:
        return
    assert all(isinstance(b, int) for b in batches) and len(batches) == len(text.split(","))


@FEW
@given(st.one_of(st.text(max_size=30), st.lists(st.text(max_size=12), max_size=4)))
def test_provider_names_parse_or_refuse(value: str | list[str]) -> None:
    try:
        providers = parse_providers(value)
    except ResnetEdgeError:
        return
    assert providers and all(hasattr(p, "value") for p in providers)


TOML_VALUES = st.one_of(
    st.integers(-(2**40), 2**40),
    st.booleans(),
    st.text(max_size=12),
    st.lists(st.integers(-5, 50), max_size=3),
    st.lists(st.text(max_size=6), max_size=3),
    st.floats(allow_nan=True),
)
KEYS = st.sampled_from([*option_keys(), "pipeline", "unknown_key"])


@FEW
@given(st.dictionaries(KEYS, TOML_VALUES, max_size=4))
def test_config_values_make_a_config_or_refuse(values: dict) -> None:
    try:
        config = make_config(values)
    except ResnetEdgeError:
        return
    assert isinstance(config, PipelineConfig)


@FEW
@given(st.binary(max_size=200))
def test_config_files_of_any_bytes_load_or_refuse(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "config.toml")
        path.write_bytes(data)
        with contextlib.suppress(ResnetEdgeError):
            load_config(path)


@FEW
@given(st.binary(max_size=200))
def test_labels_files_of_any_bytes_read_or_refuse(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "labels.txt")
        path.write_bytes(data)
        try:
            labels = read_labels_file(path)
        except ResnetEdgeError:
            return
        assert labels and all(label == label.strip() and label for label in labels)


@FEW
@given(st.text(max_size=200))
def test_folder_labels_csv_of_any_text_reads_or_refuses(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        Image.new("RGB", (4, 4)).save(Path(folder, "a.png"))
        Path(folder, "labels.csv").write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            source = FolderSource(folder, classes=ModelClasses())
        except (ResnetEdgeError, UnicodeEncodeError):
            return
        assert source.labelled


NPY_MAGIC = b"\x93NUMPY\x01\x00"


@FEW
@given(st.text(max_size=120), st.binary(max_size=64))
def test_npy_headers_load_or_refuse(header: str, body: bytes) -> None:
    encoded = header.encode("latin-1", errors="replace")
    data = NPY_MAGIC + len(encoded).to_bytes(2, "little") + encoded + body
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "x.npy")
        path.write_bytes(data)
        try:
            source = ArraySource(path)
            for i in range(min(len(source), 2)):
                source.load(i, SPEC)
        except ResnetEdgeError:
            pass


@FEW
@given(st.binary(max_size=300))
def test_npz_of_any_bytes_loads_or_refuses(data: bytes) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, images=np.zeros((2, 4, 4, 3), np.uint8))
    real = buffer.getvalue()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "x.npz")
        path.write_bytes(real[: len(data) % len(real)] + data)  # truncated archives and garbage appended
        with contextlib.suppress(ResnetEdgeError):
            ArraySource(path)


IMAGE_HEADERS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"BM", b"RIFF\x00\x00\x00\x00WEBP", b""]


@FEW
@given(st.sampled_from(IMAGE_HEADERS), st.binary(max_size=400), st.sampled_from([".png", ".jpg", ".bmp", ".webp"]))
def test_image_decoding_of_random_bytes_gives_a_tensor_or_refuses(header: bytes, body: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, f"x{suffix}").write_bytes(header + body)
        source = FolderSource(folder)
        try:
            sample = source.load(0, SPEC)
        except ResnetEdgeError:
            return
        assert sample.tensor.shape == SPEC.input_shape and np.isfinite(sample.tensor).all()


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I", "I;16", "F", "YCbCr"])
def test_every_pillow_mode_decodes_to_the_input_shape(mode: str) -> None:
    from resnet_edge.calibration.preprocess import preprocess_image

    tensor = preprocess_image(Image.new(mode, (20, 12)), SPEC)
    assert tensor.shape == SPEC.input_shape and np.isfinite(tensor).all()


# --- the label mapping (issue 21): any folder names x any model labels: refused, or mapped, never silently permuted ---

# Names from a small pool, so that folder names and model labels often overlap, differ by case, or are integers.
CLASS_NAMES = st.sampled_from(["cat", "dog", "Cat", "bird", "0", "1", "7", "10", "02", "tshirt", "bag", "boot"])


def _expected_index(names: list[str], classes: ModelClasses, label_map: dict[str, str] | None) -> dict[str, int]:
    """The one rule, restated independently: what each name must map to when the mapping is accepted."""
    if label_map is not None:
        labels = list(classes.labels or ())
        return {n: labels.index(label_map[n]) if label_map[n] in labels else int(label_map[n]) for n in names}
    if classes.labels is not None:
        return {n: list(classes.labels).index(n) for n in names}
    if all(n.isdigit() for n in names):
        return {n: int(n) for n in names}
    return {n: i for i, n in enumerate(sorted(set(names)))}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(CLASS_NAMES, min_size=1, max_size=6),
    st.one_of(st.none(), st.lists(CLASS_NAMES, min_size=1, max_size=8)),
    st.one_of(st.none(), st.integers(1, 12)),
    st.one_of(st.none(), st.dictionaries(CLASS_NAMES, st.one_of(CLASS_NAMES, st.integers(0, 14).map(str)))),
)
def test_class_names_are_mapped_by_the_one_rule_or_refused(
    names: list[str], labels: list[str] | None, num_classes: int | None, label_map: dict[str, str] | None
) -> None:
    if labels is not None:
        num_classes = len(labels)  # a model's labels name each of its classes
    with tempfile.TemporaryDirectory() as folder:
        map_file = None
        if label_map is not None:
            map_file = Path(folder, "map.txt")
            map_file.write_text("".join(f"{k},{v}\n" for k, v in label_map.items()))
        classes = ModelClasses(labels=tuple(labels) if labels else None, num_classes=num_classes, label_map=map_file)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mapping = map_classes(names, classes, what="data")
        except ResnetEdgeError:
            return
    expected = _expected_index(sorted(set(names)), classes, label_map)
    assert mapping.index == expected
    if labels is not None and label_map is None:
        assert all(labels[i] == n for n, i in mapping.index.items())  # a folder is the class its name is
    assert all(0 <= i < (num_classes or 10**9) for i in mapping.index.values())
    if labels is None and label_map is None and not all(n.isdigit() for n in names):
        assert len(set(names)) == num_classes or num_classes is None  # sorted numbering only with every class


@settings(max_examples=25, deadline=None)
@given(st.lists(CLASS_NAMES, min_size=1, max_size=4, unique=True), st.permutations(["cat", "dog", "bird", "0", "7"]))
def test_class_folders_are_labelled_by_name_or_refused(folders: list[str], labels: list[str]) -> None:
    """Through the real folder reader: every image's label is the model class its folder names."""
    with tempfile.TemporaryDirectory() as root:
        for name in folders:
            Path(root, name).mkdir()
            Image.new("RGB", (4, 4)).save(Path(root, name, "x.png"))
        try:
            source = FolderSource(root, classes=ModelClasses(labels=tuple(labels), num_classes=len(labels)))
        except ResnetEdgeError as exc:
            assert str(exc).count("\n") == 0 and any(f not in labels for f in folders)
            return
        assert all(f in labels for f in folders)
        for i, file in enumerate(source.files):
            assert labels[source.load(i, SPEC).label] == file.parent.name
