"""Reading and writing files safely: checked inputs, atomic outputs, hashes.

Every artifact is written beside its destination and moved into place with :func:`os.replace` once complete, so a
failed, interrupted or rejected run never leaves a half-written file. ONNX files are read and written by
:mod:`resnet_edge.onnx.io`, on top of these.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from resnet_edge.errors import InputFileError, OutputWriteError

# What a write fails with when the file system, not the program, says no: a full disk or quota, a file over the size
# limit, a read-only or failing file system. Each is one error line naming the file and the free space (issue 21).
WRITE_FAILURES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


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


def read_user_text(path: Path | str, *, what: str = "file") -> str:
    """The UTF-8 text of a file a user gave (labels, config), after :func:`require_file`.

    Raises:
        InputFileError: missing, empty, not a regular file, or not UTF-8 (naming the first bad byte's offset).
    """
    path = require_file(path, what=what)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{what} {path} is not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise InputFileError(f"cannot read {what} {path}: {exc.strerror}") from None


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


def refuse_overwriting_inputs(
    outputs: Iterable[Path | str | None], inputs: Iterable[Path | str | None], *, command: str = "output"
) -> None:
    """Refuse, before any work, an output that would replace one of the command's inputs.

    An output is refused when it is an input (same resolved path, or the same file through a symlink or a hard
    link: same device and inode), or when it already exists inside an input folder (an image or a labels file that
    the run reads). Inputs that are not paths (``builtin:NAME``) or do not exist are passed over; None entries are
    ignored on both sides.

    Raises:
        InputFileError: an output is an input, naming both.
    """
    checked: list[tuple[Path, Path, tuple[int, int] | None, bool]] = []
    for item in inputs:
        if item is None or str(item).startswith("builtin:"):
            continue
        path = Path(item)
        identity = _identity(path)
        if identity is None and not path.is_symlink():
            continue
        checked.append((path, path.resolve(), identity, path.is_dir()))
    for out in outputs:
        if out is None:
            continue
        out = Path(out)
        resolved, identity = out.resolve(), _identity(out)
        for path, input_resolved, input_identity, is_folder in checked:
            same = resolved == input_resolved or (identity is not None and identity == input_identity)
            inside = is_folder and identity is not None and input_resolved in resolved.parents
            if same or inside:
                where = "is" if same else "would replace a file inside"
                raise InputFileError(
                    f"{command} {out} {where} the input {path}; choose another output path, nothing was written"
                )


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` points to, or None where nothing is there."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


@contextlib.contextmanager
def output_folder(path: Path | str) -> Iterator[Path]:
    """``path`` as an existing folder for the block (``-o DIR`` options), created with its parents if need be; the
    folders it created are removed again, if still empty, when the block fails or is interrupted.

    Raises:
        InputFileError: it is a file, or cannot be created.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputFileError(f"output folder is a file: {path}")
    created = [p for p in (path, *path.parents) if not os.path.lexists(p)]  # deepest first
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFileError(f"cannot create output folder {path}: {exc.strerror}") from None
    try:
        yield path
    except BaseException:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: whatever the block did write stays
        raise


@contextlib.contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block completes.

    On any exception, KeyboardInterrupt included, the temporary file is removed and ``path`` is left as it was.
    """
    path = require_writable_destination(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # permission bits can say yes where the file system says no (read-only, /proc)
        if exc.errno in WRITE_FAILURES:
            raise write_failure(path, exc) from None
        raise InputFileError(f"output folder is not writable: {path.parent} ({exc.strerror})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    token = _WRITING.set((*_WRITING.get(), path))
    try:
        yield tmp
        # mkstemp creates 0600; give the artifact the permissions any other new file would get.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as exc:  # the block only writes: whatever failed, failed writing the outputs open now
        tmp.unlink(missing_ok=True)
        writing = _WRITING.get()
        raise write_failure(path if len(writing) == 1 else writing, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _WRITING.reset(token)


# The outputs being written at this moment, outermost first: a block that writes two files (a model and its record)
# fails on one of them, and only the names of both are certain.
_WRITING: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("writing", default=())


def write_failure(path: Path | str | tuple[Path, ...] | None, exc: OSError) -> OutputWriteError:
    """The one error line for a write that failed: the file(s), the system's reason, and the free space there.
    ``path`` None: a write whose file is not known (a library's), named by the temporary folder."""
    if path is None:
        where = Path(tempfile.gettempdir())
        named = f"a file (temporary folder {where})"
    elif isinstance(path, tuple):
        where, named = path[0], " or ".join(map(str, path))
    else:
        where, named = Path(path), str(path)
    return OutputWriteError(f"cannot write {named}: {exc.strerror or exc} ({free_space(where)}); nothing was kept")


def free_space(path: Path | str) -> str:
    """``N MiB free there`` (or KiB) on the file system that holds ``path`` (its nearest existing folder)."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue
        return f"{free / 2**20:,.1f} MiB free there" if free >= 2**20 else f"{free // 1024} KiB free there"
    return "free space unknown"


_AT_FDCWD = -100  # <fcntl.h>: paths relative to the current folder
_RENAME_NOREPLACE = 1  # <linux/fs.h>


def rename_noreplace(source: Path | str, destination: Path | str) -> None:
    """Rename ``source`` to ``destination`` only if nothing is there, atomically where the system can say so.

    Linux's ``renameat2(RENAME_NOREPLACE)`` checks and renames in one step; ``os.rename`` would silently replace an
    empty folder or a file that appeared meanwhile. Where the call or the flag is missing (another system, a file
    system without it), the check comes just before the rename.

    Raises:
        FileExistsError: something is at ``destination``.
        OSError: the rename failed otherwise.
    """
    import ctypes
    import errno

    src, dst = os.fsencode(source), os.fsencode(destination)
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), os.fsdecode(dst))
        if code not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(code, os.strerror(code), os.fsdecode(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(dst))
    os.rename(src, dst)


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


def path_for_record(path: Path | str, record_folder: Path | str) -> str:
    """``path`` as a record written in ``record_folder`` names it: relative to that folder when the file is inside it
    (so that the record stays true when the folder is published from a staging folder, or moved), else absolute."""
    path, folder = Path(path).absolute(), Path(record_folder).absolute()
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return str(path)


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
