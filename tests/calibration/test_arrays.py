"""Array files are read row by row, never whole, and a header that declares more than the file holds is refused
(issue 21: a 42 MB .npz declaring 9.6 GB grew quantize, validate and gradflow past 9 GB)."""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from resnet_edge.calibration.arrays import open_npy, open_npz
from resnet_edge.calibration.labels import ModelClasses
from resnet_edge.calibration.preprocess import PreprocessSpec
from resnet_edge.calibration.sources import ArraySource, iter_batches
from resnet_edge.errors import InputFileError

SPEC = PreprocessSpec.small(32)


def _npy_bytes(array: np.ndarray, *, declared: tuple[int, ...] | None = None) -> bytes:
    """An .npy file's bytes whose header may declare another shape than the data it holds."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer,
        {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False, "shape": declared or array.shape},
    )
    return buffer.getvalue() + array.tobytes()


def _npz_with(member: bytes, path: Path, *, compression: int) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.writestr("images.npy", member)
    return path


LIE = (40_000_000, 28, 28)  # 31 GB of images declared, a few kB present


def test_a_npy_declaring_more_than_it_holds_is_refused_from_its_header(tmp_path: Path) -> None:
    (tmp_path / "lie.npy").write_bytes(_npy_bytes(np.zeros((4, 28, 28), np.uint8), declared=LIE))
    with pytest.raises(
        InputFileError, match=r"declares 40000000x28x28 uint8 \(29.21 GiB\), but the file holds only 3.1 KiB"
    ):
        ArraySource(tmp_path / "lie.npy")


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_a_npz_member_declaring_more_than_it_holds_is_refused_from_its_header(tmp_path: Path, compression: int):
    member = _npy_bytes(np.zeros((4, 28, 28), np.uint8), declared=LIE)
    path = _npz_with(member, tmp_path / "lie.npz", compression=compression)
    tracemalloc.start()
    try:
        with pytest.raises(InputFileError, match=r"member images.npy: its header declares 40000000x28x28"):
            ArraySource(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000  # refused from the header: nothing near the declared size was allocated


def test_a_compressed_npz_is_streamed_in_bounded_memory(tmp_path: Path) -> None:
    """32 MB of images in a deflated .npz (a few kB on disk): reading batches of it stays far below the array."""
    images = np.zeros((40_000, 28, 28), np.uint8)
    images[:, 0, 0] = np.arange(40_000) % 251  # each row tells which it is
    labels = (np.arange(40_000) % 10).astype(np.int64)
    np.savez_compressed(tmp_path / "big.npz", images=images, labels=labels)
    del images
    tracemalloc.start()
    try:
        source = ArraySource(tmp_path / "big.npz", classes=ModelClasses(num_classes=10))
        indices = source.indices(limit=64, seed=0)
        seen = [s for _, samples in iter_batches(source, SPEC, indices, 16) for s in samples]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8_000_000, f"peak {peak / 1e6:.1f} MB for a 31 MB array"
    assert [s.label for s in seen] == [i % 10 for i in indices]


def test_streamed_rows_read_in_any_order_equal_the_array(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    np.savez_compressed(tmp_path / "c.npz", images=images)
    np.savez(tmp_path / "s.npz", images=images)
    np.save(tmp_path / "a.npy", images)
    for rows in (
        open_npz(tmp_path / "c.npz")["images"],
        open_npz(tmp_path / "s.npz")["images"],
        open_npy(tmp_path / "a.npy"),
    ):
        assert rows.shape == images.shape and rows.dtype == images.dtype
        for row in (7, 3, 49, 0, 7):  # backwards too: a deflated stream restarts
            np.testing.assert_array_equal(rows[row], images[row])
        np.testing.assert_array_equal(np.concatenate(list(rows.chunks(16))), images)


def test_a_truncated_compressed_member_is_an_error_naming_the_file(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "ok.npz", images=np.random.default_rng(1).integers(0, 256, (64, 16, 16), np.uint8))
    info = zipfile.ZipFile(tmp_path / "ok.npz").infolist()[0]
    data = bytearray((tmp_path / "ok.npz").read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + info.compress_size // 2 : start + info.compress_size] = bytes(
        info.compress_size - info.compress_size // 2
    )
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    source = ArraySource(tmp_path / "bad.npz")
    with pytest.raises(InputFileError, match="bad.npz"):
        for i in range(len(source)):
            source.load(i, SPEC)


def test_an_object_array_is_refused_without_unpickling(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(InputFileError, match="Python objects"):
        ArraySource(tmp_path / "o.npy")
