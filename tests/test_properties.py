"""Property-based tests of the parsers that take user text or files: whatever comes in, the answer is a value or a
ResnetEdgeError (one ``error:`` line), never another exception, and never a hang."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import click
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from resnet_edge.calibration.preprocess import PreprocessSpec
from resnet_edge.calibration.sources import ArraySource, FolderSource
from resnet_edge.cli.options import parse_batches
from resnet_edge.conversion.export import read_labels_file
from resnet_edge.errors import ResnetEdgeError
from resnet_edge.onnx.runtime import parse_providers
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
            source = FolderSource(folder)
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
