"""Publishing never takes what it did not make (issue 21): re-checked at publish time, a lock per OUTDIR, and
``--overwrite`` limited to the files an earlier run listed with their hashes."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from resnet_edge.errors import InputFileError, OptionError
from resnet_edge.pipeline.publish import (
    MARKER,
    PublishError,
    check_outdir,
    outdir_lock,
    publish,
    write_manifest,
)


def _staging(parent: Path, files: dict[str, str]) -> Path:
    staging = parent / ".out.x.partial"
    staging.mkdir()
    for name, text in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_text(text)
    write_manifest(staging)
    return staging


def _earlier_run(tmp_path: Path) -> Path:
    """An OUTDIR an earlier run published."""
    found = check_outdir(tmp_path / "out", overwrite=False)
    publish(_staging(tmp_path, {"model.onnx": "old model", "plots/a.png": "old plot"}), found)
    return tmp_path / "out"


def test_a_new_outdir_is_published_with_a_manifest_of_its_files(tmp_path: Path) -> None:
    out = _earlier_run(tmp_path)
    manifest = json.loads((out / MARKER).read_text())
    assert set(manifest["files"]) == {"model.onnx", "plots/a.png"} and len(manifest["files"]["model.onnx"]) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("what", ["folder with a file", "empty folder", "file"])
def test_what_appears_at_outdir_during_the_run_is_left_alone(tmp_path: Path, what: str) -> None:
    found = check_outdir(tmp_path / "out", overwrite=False)
    staging = _staging(tmp_path, {"model.onnx": "new"})
    out = tmp_path / "out"
    if what == "file":
        out.write_text("the user's file")
    else:
        out.mkdir()
        if what == "folder with a file":
            (out / "notes.txt").write_text("the user's notes")
    with pytest.raises(PublishError, match=r"out changed while the run was going .* left as it is"):
        publish(staging, found)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.x.partial", "out"]  # nothing renamed aside
    if what == "file":
        assert out.read_text() == "the user's file"
    else:
        assert [p.name for p in out.iterdir()] == (["notes.txt"] if what == "folder with a file" else [])


def test_a_file_put_into_an_empty_outdir_during_the_run_is_kept(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    found = check_outdir(tmp_path / "out", overwrite=False)
    (tmp_path / "out" / "data.csv").write_text("mine")
    with pytest.raises(PublishError, match="files appeared in it"):
        publish(_staging(tmp_path, {"model.onnx": "new"}), found)
    assert (tmp_path / "out" / "data.csv").read_text() == "mine"


def test_overwrite_replaces_exactly_the_listed_files(tmp_path: Path) -> None:
    out = _earlier_run(tmp_path)
    found = check_outdir(out, overwrite=True)
    publish(_staging(tmp_path, {"model.onnx": "new model"}), found)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [MARKER, "model.onnx"]
    assert (out / "model.onnx").read_text() == "new model"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda out: (out / "notes.txt").write_text("mine"), "notes.txt, not written by the earlier run"),
        (lambda out: (out / "model.onnx").write_text("edited"), "model.onnx, changed since the earlier run"),
        (lambda out: (out / "data").mkdir(), "data, a folder the earlier run did not write"),
        (lambda out: (out / "plots" / "b.png").write_text("mine"), "plots/b.png, not written by the earlier run"),
        (lambda out: os.symlink("/etc", out / "link"), "link, not written by the earlier run"),
    ],
    ids=["extra-file", "changed-file", "extra-folder", "file-in-listed-folder", "symlink"],
)
def test_overwrite_refuses_anything_not_listed_by_name(tmp_path: Path, change, named: str) -> None:
    out = _earlier_run(tmp_path)
    change(out)
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    with pytest.raises(OptionError, match=named):
        check_outdir(out, overwrite=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before


def test_overwrite_rechecks_at_publish_and_removes_nothing_then(tmp_path: Path) -> None:
    out = _earlier_run(tmp_path)
    found = check_outdir(out, overwrite=True)
    (out / "notes.txt").write_text("written during the run")
    with pytest.raises(PublishError, match="notes.txt"):
        publish(_staging(tmp_path, {"model.onnx": "new"}), found)
    assert (out / "model.onnx").read_text() == "old model" and (out / "notes.txt").exists()


def test_a_marker_copied_into_a_users_folder_does_not_make_it_replaceable(tmp_path: Path) -> None:
    out = _earlier_run(tmp_path)
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    (mine / "model.onnx").write_text("my own model, same name")
    (mine / MARKER).write_bytes((out / MARKER).read_bytes())
    with pytest.raises(OptionError, match="chapter1.tex, not written by the earlier run"):
        check_outdir(mine, overwrite=True)
    (mine / "chapter1.tex").unlink()
    with pytest.raises(OptionError, match="model.onnx, changed since the earlier run"):
        check_outdir(mine, overwrite=True)


def test_an_old_style_marker_is_not_a_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text("made by resnet-edge 0.1 pipeline\n")
    (out / "model.onnx").write_text("x")
    with pytest.raises(OptionError, match="no file list in its .resnet-edge-pipeline"):
        check_outdir(out, overwrite=True)


def test_a_symlinked_outdir_is_refused(tmp_path: Path) -> None:
    out = _earlier_run(tmp_path)
    (tmp_path / "link").symlink_to(out)
    with pytest.raises(OptionError, match="is a symbolic link"):
        check_outdir(tmp_path / "link", overwrite=True)


def _try_lock(path: str, queue) -> None:
    try:
        with outdir_lock(Path(path)):
            queue.put("locked")
    except OptionError as exc:
        queue.put(str(exc))


def test_one_run_at_a_time_per_outdir(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with outdir_lock(out) as lock:
        assert lock.read_text().strip() == str(os.getpid())
        queue = multiprocessing.get_context("fork").Queue()
        other = multiprocessing.get_context("fork").Process(target=_try_lock, args=(str(out), queue))
        other.start()
        other.join(30)
        assert f"another resnet-edge pipeline is writing {out} (pid {os.getpid()}" in queue.get(timeout=5)
    assert not lock.exists()  # removed at the end: nothing left beside OUTDIR
    with outdir_lock(out):
        pass  # free again


def test_an_unwritable_parent_is_one_error(tmp_path: Path) -> None:
    with (
        pytest.raises(InputFileError, match="cannot make the lock file"),
        outdir_lock(Path("/proc/resnet-edge-test/out")),
    ):
        pass
