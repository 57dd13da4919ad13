"""NumPy array files read row by row, never whole, whatever their header declares.

``np.load`` reads an ``.npz`` member whole, and trusts the shape in its header: a 42 MB ``.npz`` declaring 9.6 GB of
images grew ``quantize``, ``validate`` and ``gradflow`` past 9 GB (issue 21). Here the header is read first and a
declared size beyond what the file can hold is refused; then rows are read when asked for:

- a ``.npy`` file, and an ``.npz`` member stored uncompressed (``np.savez``), are memory-mapped: the operating system
  pages rows in and out;
- an ``.npz`` member compressed with deflate (``np.savez_compressed``) cannot be mapped: it is decompressed as a
  stream, and a row is read by skipping forward to it (a row before the last one read restarts the stream, so
  callers read in index order, as :func:`resnet_edge.calibration.sources.iter_batches` does).

Memory stays bounded by the rows in use. The ``.npy`` format is numpy's (``np.lib.format``); the zip member's data
offset is read from its local file header (PKWARE's APPNOTE, section 4.3.7).
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from resnet_edge.errors import InputFileError
from resnet_edge.formatting import size

# What a damaged array file raises while it is read: truncated zip members, bad deflate data, a CRC mismatch.
READ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, ValueError)
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then (after 22 bytes) the name and extra field lengths
_LOCAL_SIGNATURE = b"PK\x03\x04"
_SKIP_CHUNK = 1 << 20  # bytes decompressed and dropped at a time when skipping forward in a stream


class ArrayRows:
    """The rows of one array (its first axis), read on demand. Looks enough like an ndarray for a source: ``len``,
    ``shape``, ``ndim``, ``dtype``, indexing by one row."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, row: int) -> np.ndarray:
        raise NotImplementedError

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        """The array in order, ``rows`` rows at a time (to scan labels without holding them all)."""
        for start in range(0, len(self), rows):
            yield np.stack([self[i] for i in range(start, min(start + rows, len(self)))])


class _Mapped(ArrayRows):
    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype, fortran: bool) -> None:
        self.shape, self.dtype = shape, dtype
        if math.prod(shape) == 0:
            self._array = np.empty(shape, dtype)
        else:
            order = "F" if fortran else "C"
            self._array = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)

    def __getitem__(self, row: int) -> np.ndarray:
        return np.asarray(self._array[row])

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self), rows):
            yield np.asarray(self._array[start : start + rows])


class _Streamed(ArrayRows):
    """A deflated ``.npz`` member, decompressed as a stream; one open stream, moved forward to the row asked for."""

    def __init__(self, path: Path, info: zipfile.ZipInfo, header_bytes: int, shape: tuple[int, ...], dtype: np.dtype):
        self.shape, self.dtype = shape, dtype
        self._path, self._info, self._header_bytes = path, info, header_bytes
        self._row_shape = shape[1:]
        self._row_bytes = math.prod(self._row_shape) * dtype.itemsize
        self._zip: zipfile.ZipFile | None = None
        self._stream = None
        self._position = 0  # bytes of array data already read from the stream

    def __getitem__(self, row: int) -> np.ndarray:
        if not 0 <= row < len(self):
            raise IndexError(row)
        data = self._read_at(row * self._row_bytes, self._row_bytes)
        return np.frombuffer(data, self.dtype).reshape(self._row_shape).copy()

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self), rows):
            count = min(rows, len(self) - start)
            data = self._read_at(start * self._row_bytes, count * self._row_bytes)
            yield np.frombuffer(data, self.dtype).reshape((count, *self._row_shape))

    def _read_at(self, offset: int, size: int) -> bytes:
        try:
            if self._stream is None or offset < self._position:
                self._restart()
            while self._position < offset:
                self._position += len(self._read(min(_SKIP_CHUNK, offset - self._position)))
            data = self._read(size)
        except READ_ERRORS as exc:
            self._stream = None
            raise InputFileError(f"{self._path}: cannot read {self._info.filename} ({exc})") from None
        self._position += len(data)
        return data

    def _restart(self) -> None:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self._path)
        self._stream = self._zip.open(self._info)
        self._stream.read(self._header_bytes)
        self._position = 0

    def _read(self, size: int) -> bytes:
        assert self._stream is not None
        parts, left = [], size
        while left:
            part = self._stream.read(left)
            if not part:
                raise EOFError(f"the data ends {left} bytes early")
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def __del__(self) -> None:
        if self._zip is not None:
            self._zip.close()


def open_npy(path: Path) -> ArrayRows:
    """A ``.npy`` file's rows, memory-mapped, after checking its header against its size.

    Raises:
        InputFileError: a header numpy cannot read, an object array, or data shorter than the header declares.
    """
    with open(path, "rb") as f:
        shape, fortran, dtype = _read_header(f, path)
        offset = f.tell()
    _check_declared(path, shape, dtype, path.stat().st_size - offset, what=str(path))
    return _Mapped(path, offset, shape, dtype, fortran)


def open_npz(path: Path) -> dict[str, ArrayRows]:
    """An ``.npz`` file's arrays by name (the member name without ``.npy``), none of them read yet.

    Raises:
        InputFileError: not a zip archive, an encrypted or unsupported member, a bad header, an object array, or a
            member whose data is shorter than its header declares.
    """
    arrays: dict[str, ArrayRows] = {}
    size = path.stat().st_size
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename.removesuffix(".npy")
            what = f"{path} member {info.filename}"
            if info.flag_bits & 0x1:
                raise InputFileError(f"{what} is encrypted")
            if info.compress_type == zipfile.ZIP_STORED:
                raw.seek(info.header_offset)
                signature, name_length, extra_length = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
                if signature != _LOCAL_SIGNATURE:
                    raise InputFileError(f"{what}: damaged zip entry")
                start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
                raw.seek(start)
                shape, fortran, dtype = _read_header(raw, what)
                header = raw.tell() - start
                available = min(info.file_size, size - start) - header
                _check_declared(path, shape, dtype, available, what=what)
                arrays[name] = _Mapped(path, start + header, shape, dtype, fortran)
            elif info.compress_type == zipfile.ZIP_DEFLATED:
                with archive.open(info) as stream:
                    shape, fortran, dtype = _read_header(stream, what)
                    header = stream.tell()
                _check_declared(path, shape, dtype, info.file_size - header, what=what)
                if fortran and len(shape) > 1:
                    raise InputFileError(
                        f"{what} is compressed in Fortran order, which cannot be read row by row; save it with"
                        " np.savez (uncompressed) or in C order"
                    )
                arrays[name] = _Streamed(path, info, header, shape, dtype)
            else:
                raise InputFileError(f"{what}: unsupported zip compression {info.compress_type}; use np.savez")
    return arrays


def _read_header(f, what: object) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(f)
    else:
        raise InputFileError(f"{what}: .npy format version {version[0]}.{version[1]} is not supported (1.0 or 2.0)")
    if dtype.hasobject:
        raise InputFileError(f"{what} holds Python objects, which are read only with pickles (refused)")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _check_declared(path: Path, shape: tuple[int, ...], dtype: np.dtype, available: int, *, what: str) -> None:
    """Refuse a header that declares more data than the file can hold (the size is Python's, so it cannot overflow)."""
    declared = math.prod(shape) * dtype.itemsize
    if declared > max(available, 0):
        raise InputFileError(
            f"{what}: its header declares {'x'.join(map(str, shape)) or 'a scalar'} {dtype} ({size(declared)}), but"
            f" the file holds only {size(max(available, 0))} of data"
        )
