"""Publishing a pipeline run's folder without ever taking what it did not make (issue 21, DESIGN principle 10).

A run builds in a staging folder beside OUTDIR and publishes it at the end. Between the start and the end, anything
may appear at OUTDIR, so the checks made at the start are made again at publish time, and the publishing itself
refuses to replace anything:

- **A lock per OUTDIR** (an advisory ``flock`` on ``.OUTDIR.resnet-edge-lock`` beside it, released by the kernel if
  the process dies): a second run into the same OUTDIR refuses at its start, never "both succeeded" with the first
  run's output gone.
- **A manifest**: the marker file :data:`MARKER` lists every file the run wrote, with its SHA-256. ``--overwrite``
  removes only those files, and only while each still has its recorded hash; any other file in the folder (notes,
  data, a marker copied into a user's folder) is refused by name before anything is removed.
- **No replacing rename**: a new OUTDIR is moved into place with ``renameat2(RENAME_NOREPLACE)``; an OUTDIR that
  existed (empty, or emptied of the earlier run's files) is replaced only while it is an empty folder (``rename(2)``
  refuses a non-empty one). Whatever appeared meanwhile stays where it is, untouched, and the run says so.
- A symbolic link as OUTDIR is refused: replacing the folder it points to would reach outside the path given.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from resnet_edge import __version__
from resnet_edge.artifacts import rename_noreplace, sha256_file, write_text_atomic
from resnet_edge.errors import InputFileError, OptionError

# Written into every OUTDIR the pipeline makes: the manifest of its files; --overwrite replaces only such a folder.
MARKER = ".resnet-edge-pipeline"
MANIFEST_FORMAT = "resnet-edge pipeline manifest 1"


@dataclass(frozen=True)
class Outdir:
    """OUTDIR as found when the run started: absent, an empty folder, or an earlier run's (with its manifest)."""

    path: Path
    existed: bool
    manifest: dict[str, str] | None  # relative path -> SHA-256 of an earlier run's files; None: no earlier run


class PublishError(InputFileError):
    """Something appeared at OUTDIR during the run; nothing of it was touched, and this run's output was dropped."""


def check_outdir(outdir: Path | str, *, overwrite: bool, inputs: Sequence[Path | str | None] = ()) -> Outdir:
    """``outdir`` resolved and what is there now, once it is safe to fill (or, with ``overwrite``, to replace).

    A folder is only ever replaced if an earlier pipeline run made it and every entry in it is a file that run
    listed, unchanged (:data:`MARKER`); if it holds none of this run's inputs; and if it is not the home folder, the
    current folder or one of its parents.

    Raises:
        OptionError: any of the above does not hold, ``outdir`` is a symbolic link, or ``outdir`` is not empty and
            ``overwrite`` is off.
        InputFileError: ``outdir`` is a file, or its parent is missing or not writable.
    """
    given = Path(outdir).expanduser()
    if given.is_symlink():
        raise OptionError(
            f"{given} is a symbolic link (to {os.readlink(given)}); give the folder itself: the pipeline replaces"
            " OUTDIR whole and does not reach through links"
        )
    outdir = given.resolve()
    cwd = Path.cwd().resolve()
    if outdir == cwd or outdir in cwd.parents:
        raise OptionError(f"{outdir} holds the current folder; the pipeline replaces OUTDIR whole, choose a new one")
    if outdir == Path.home().resolve():
        raise OptionError(f"{outdir} is the home folder; the pipeline replaces OUTDIR whole, choose a new one")
    for item in inputs:
        if item is None or str(item).startswith("builtin:"):
            continue
        path = Path(item).expanduser().resolve()
        if path == outdir or outdir in path.parents:
            raise OptionError(f"{outdir} holds {item}, an input of this run; choose another output folder")
    if outdir.exists() and not outdir.is_dir():
        raise InputFileError(f"output path is a file, not a folder: {outdir}")
    manifest = None
    if outdir.is_dir() and any(outdir.iterdir()):
        if not overwrite:
            raise OptionError(f"{outdir} exists and is not empty; pass --overwrite to replace it")
        manifest = read_manifest(outdir)
        check_only_listed(outdir, manifest)
    parent = outdir.parent
    if not parent.is_dir():
        raise InputFileError(f"output folder's parent does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputFileError(f"output folder's parent is not writable: {parent}")
    return Outdir(outdir, outdir.is_dir(), manifest)


def read_manifest(folder: Path) -> dict[str, str]:
    """The files an earlier run listed in ``folder``'s marker, relative path -> SHA-256.

    Raises:
        OptionError: no marker, or one that is not a manifest (an older release's, or not ours).
    """
    marker = folder / MARKER
    refuse = (
        f"{folder} is not empty and was not made by resnet-edge pipeline"
        f" ({'no' if not marker.is_file() else 'no file list in its'} {MARKER}); refusing to replace it even with"
        " --overwrite: choose a new folder or empty this one yourself"
    )
    if not marker.is_file() or marker.is_symlink():
        raise OptionError(refuse)
    try:
        document = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        raise OptionError(refuse) from None
    files = document.get("files") if isinstance(document, dict) else None
    if document.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
        raise OptionError(refuse)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise OptionError(refuse)
    return files


def check_only_listed(folder: Path, manifest: dict[str, str]) -> None:
    """Refuse, by name, anything in ``folder`` that the manifest does not list with its current hash.

    Raises:
        OptionError: an entry that is not a listed file, or a listed file whose content changed.
    """
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if relative == MARKER:
            continue
        if path.is_dir() and not path.is_symlink():
            if not any(name.startswith(relative + "/") for name in manifest):
                raise OptionError(_not_ours(folder, relative, "a folder the earlier run did not write"))
            continue
        if relative not in manifest or path.is_symlink() or not path.is_file():
            raise OptionError(_not_ours(folder, relative, "not written by the earlier run"))
        if sha256_file(path) != manifest[relative]:
            raise OptionError(_not_ours(folder, relative, "changed since the earlier run wrote it"))


def _not_ours(folder: Path, relative: str, why: str) -> str:
    return (
        f"{folder} holds {relative}, {why}; --overwrite replaces only the files an earlier run listed in {MARKER}:"
        " move it away or choose a new folder"
    )


def write_manifest(staging: Path) -> None:
    """List every file in ``staging`` with its SHA-256, in :data:`MARKER`."""
    files = {
        path.relative_to(staging).as_posix(): sha256_file(path)
        for path in sorted(staging.rglob("*"))
        if path.is_file() and path.name != MARKER
    }
    document = {
        "format": MANIFEST_FORMAT,
        "made_by": f"resnet-edge {__version__} pipeline",
        "note": "`--overwrite` may remove the files listed here, while each still has its hash; nothing else",
        "files": files,
    }
    write_text_atomic(staging / MARKER, json.dumps(document, indent=2) + "\n")


def publish(staging: Path, outdir: Outdir) -> None:
    """Move ``staging`` to ``outdir.path``, re-checking now what :func:`check_outdir` found at the start.

    Raises:
        PublishError: something appeared or changed at OUTDIR during the run; it is left as it is (and ``staging``
            with it, for the caller to remove).
    """
    path = outdir.path
    appeared = (
        f"{path} changed while the run was going ({{why}}); it was left as it is and this run's output was"
        " discarded: run again with another -o"
    )
    if not outdir.existed:
        try:
            rename_noreplace(staging, path)
        except FileExistsError:
            raise PublishError(appeared.format(why="something was created there")) from None
        return
    if path.is_symlink() or not path.is_dir():
        raise PublishError(appeared.format(why="it is no longer a folder"))
    if outdir.manifest is not None:
        try:
            check_only_listed(path, outdir.manifest)
        except OptionError as exc:
            raise PublishError(appeared.format(why=str(exc).split(";")[0])) from None
        _remove_listed(path, outdir.manifest)
    try:
        os.rename(staging, path)  # replaces an empty folder only: rename(2) refuses a non-empty one
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise PublishError(appeared.format(why="files appeared in it")) from None
        raise


def _remove_listed(folder: Path, manifest: dict[str, str]) -> None:
    """Remove the earlier run's listed files (each re-hashed just before) and the folders they were in."""
    for relative, digest in sorted(manifest.items()):
        path = folder / relative
        if path.is_file() and not path.is_symlink() and sha256_file(path) == digest:
            path.unlink()
    (folder / MARKER).unlink(missing_ok=True)
    for sub in sorted({p for r in manifest for p in Path(r).parents if str(p) != "."}, key=lambda p: -len(p.parts)):
        with suppress(OSError):
            (folder / sub).rmdir()  # only if empty: anything else in it stays


@contextmanager
def outdir_lock(outdir: Path) -> Iterator[Path]:
    """Hold OUTDIR's lock for the run: ``.NAME.resnet-edge-lock`` beside it, ``flock``-ed, removed at the end.

    Raises:
        OptionError: another run holds it.
        InputFileError: the lock file cannot be made (the parent is not writable).
    """
    lock = outdir.with_name(f".{outdir.name}.resnet-edge-lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise InputFileError(f"cannot make the lock file {lock}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise OptionError(
                f"another resnet-edge pipeline is writing {outdir} (pid {holder or '?'}, lock {lock}); wait for it"
                " or choose another -o"
            ) from None
        # The holder before us may have removed the file after we opened it: then we locked a file nobody sees.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        with suppress(OSError):  # the pid is for the message of a run refused; a full disk must not stop the lock
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield lock
    finally:
        with suppress(OSError):
            lock.unlink()  # while still holding it, so that a waiter re-checks (above) and takes a fresh file
        os.close(fd)


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
