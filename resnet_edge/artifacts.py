"""Reading and writing files safely: checked inputs, atomic outputs, self-contained ONNX.

Every artifact is written beside its destination and moved into place with :func:`os.replace` once complete, so a
failed, interrupted or rejected run never leaves a half-written file, and an ONNX model never silently depends on a
stray ``.onnx.data`` sidecar.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

from resnet_edge.errors import InputFileError

# protobuf cannot serialise a single message of 2 GiB or more; ResNets up to resnet152 are ~240 MB.
_PROTOBUF_LIMIT = 2**31 - 1


def require_file(path: Path | str, *, what: str = "file") -> Path:
    """``path`` as a Path, after checking that it is an existing, non-empty regular file.

    Raises:
        InputFileError: missing, a directory, or empty.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{what} not found: {path}")
    if not path.is_file():
        raise InputFileError(f"{what} is not a file: {path}")
    if path.stat().st_size == 0:
        raise InputFileError(f"{what} is empty: {path}")
    return path


def require_writable_destination(path: Path | str) -> Path:
    """``path`` as a Path, after checking that its folder exists and can be written, before any work is done.

    Raises:
        InputFileError: the folder is missing or not writable, or ``path`` is a directory.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputFileError(f"output path is a directory: {path}")
    if not parent.is_dir():
        raise InputFileError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputFileError(f"output folder is not writable: {parent}")
    return path


def ensure_folder(path: Path | str) -> Path:
    """``path`` as an existing folder, created with its parents if need be (for ``-o DIR`` options).

    Raises:
        InputFileError: it is a file, or cannot be created.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputFileError(f"output folder is a file: {path}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFileError(f"cannot create output folder {path}: {exc.strerror}") from None
    return path


@contextlib.contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block completes.

    On any exception, KeyboardInterrupt included, the temporary file is removed and ``path`` is left as it was.
    """
    path = require_writable_destination(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # permission bits can say yes where the file system says no (read-only, /proc)
        raise InputFileError(f"output folder is not writable: {path.parent} ({exc.strerror})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600; give the artifact the permissions any other new file would get.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def write_text_atomic(path: Path | str, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: Path | str, data: object) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_onnx(path: Path | str) -> onnx.ModelProto:
    """Read an ONNX model with its weights, checked.

    Raises:
        InputFileError: missing, empty, truncated or not ONNX, or it fails ``onnx.checker``.
    """
    path = require_file(path, what="ONNX model")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError or ValueError depending on the damage
        raise InputFileError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    if not model.graph.node or not model.graph.input:
        raise InputFileError(f"{path}: not an ONNX model (no graph nodes or inputs)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputFileError(f"{path}: invalid ONNX model ({first[:200]})") from None
    return model


def save_onnx(model: onnx.ModelProto, path: Path | str) -> int:
    """Write ``model`` as one self-contained file, atomically, after a full ``onnx.checker`` pass.

    Returns:
        The file size in bytes.

    Raises:
        InputFileError: the destination is not writable, or the model is over protobuf's 2 GiB limit.
    """
    if model.ByteSize() >= _PROTOBUF_LIMIT:
        raise InputFileError(
            f"model is {model.ByteSize() / 2**30:.1f} GiB, over the 2 GiB limit of a self-contained ONNX file"
        )
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return len(data)
