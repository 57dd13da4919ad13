"""Hostile inputs against every command: each is refused with one ``error:`` line, nothing lost, nothing left over.

The matrix is generated from the CLI itself: every command registered on ``resnet-edge`` needs a valid base command
line in ``BASE`` (a test fails until a new command has one), and every option of every command gets the bad values
its type calls for: paths that are missing, folders, empty, garbage, FIFOs or broken symlinks; outputs that are an
input (also through a symlink or a hard link), a folder or unwritable; negative integers; NaN, infinite and negative
floats; free text that names nothing. Hand-written rows add the cases of issue 13 that need a crafted file.

Each case asserts: a non-zero exit, exactly one ``error:`` line, no traceback, every input's SHA-256 unchanged, the
output folder as it was, and the temporary folder empty. Cases fail before any heavy work, so the matrix is fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from resnet_edge.cli.main import main
from resnet_edge.models.checkpoints import BUILTIN_DIGITS_WEIGHTS

COMMANDS: dict[str, click.Command] = dict(main.commands)

# A valid command line per command; {model} {int8} {ckpt} {images} {train_classes} {labels} {config} are under
# inputs/, {out} the (empty) output folder. A bad value replaces one option's value, or is added.
BASE: dict[str, list[str]] = {
    "export": ["export", "--weights", "{ckpt}", "-o", "{out}/m.onnx"],
    "simplify": ["simplify", "{model}", "-o", "{out}/m.sim.onnx"],
    "inspect": ["inspect", "{model}"],
    "quantize": ["quantize", "{model}", "-o", "{out}/q.onnx", "--no-speed", "--calib", "{images}"],
    "validate": ["validate", "{model}", "--data", "{images}"],
    "benchmark": ["benchmark", "{model}", "--iterations", "2", "--warmup", "0", "--data", "{images}"],
    "doctor": ["doctor"],
    "pipeline": ["pipeline", "-o", "{out}/run", "--iterations", "2", "--no-int8"],
    "analyze": ["analyze", "{model}", "{int8}", "--data", "{images}", "-o", "{out}"],
    "gradflow": ["gradflow", "--arch", "resnet20", "--batch", "2", "-o", "{out}"],
    "tune": ["tune", "{model}", "-o", "{out}/t.onnx", "--iterations", "2", "--data", "{images}", "--calib", "{images}"],
    "runner": ["runner", "-o", "{out}/runner.pyz"],
    "train": [
        "train",
        "--data",
        "{train_classes}",
        "--weights",
        "{ckpt}",
        "--epochs",
        "1",
        "-o",
        "{out}/m.safetensors",
    ],
}
# Parameters that write: an output file, or an output folder.
OUTPUT_FILES = {"output"}
OUTPUT_FOLDERS = {"outdir", "output_dir"}
SKIPPED = {"as_json", "help"}  # flags and the like: no value to spoil
# Free-text options whose values are not paths: what a nonsense value must give.
TEXT_VALUE = "no/such/thing.xyz"


@dataclass(frozen=True)
class Case:
    command: str
    param: str  # the option or argument spoiled, or a label for a hand-written row
    kind: str
    expect: str = ""  # a fragment the error line must contain (hand-written rows)

    @property
    def id(self) -> str:
        return f"{self.command}-{self.param}-{self.kind}"


PATH_KINDS = ("missing", "folder", "empty", "garbage", "fifo", "broken-symlink")
OUTPUT_KINDS = ("is-input", "symlink-to-input", "hardlink-to-input", "folder", "unwritable")
FOLDER_OUTPUT_KINDS = ("a-file", "unwritable")


def _flag(param: click.Parameter) -> str | None:
    """The long option string, or None for an argument."""
    if isinstance(param, click.Argument):
        return None
    return max(param.opts, key=len)


def generated_cases() -> list[Case]:
    cases = []
    for name, command in COMMANDS.items():
        for param in command.params:
            if param.name in SKIPPED or getattr(param, "is_flag", False) or isinstance(param.type, click.Choice):
                continue
            if param.name in OUTPUT_FILES:
                kinds: tuple[str, ...] = OUTPUT_KINDS
            elif param.name in OUTPUT_FOLDERS:
                kinds = FOLDER_OUTPUT_KINDS
            elif isinstance(param.type, click.Path):
                kinds = PATH_KINDS
            elif isinstance(param.type, click.types.IntParamType):
                kinds = ("negative",)
            elif isinstance(param.type, click.types.FloatParamType):
                kinds = ("nan", "inf", "negative")
            else:
                kinds = ("nonsense",)
            cases.extend(Case(name, param.name, kind) for kind in kinds)
    return cases


# Hand-written rows: the classes of issue 13 that need a crafted file. The command line is BASE's with the spoiled
# value (see _apply_extra).
EXTRA = [
    Case("benchmark", "output", "model-itself", "is the input"),
    Case("quantize", "output", "model-itself-mixed-precision", "is the input"),
    Case("export", "output", "checkpoint-itself", "is the input"),
    Case("quantize", "output", "calib-image", "would replace a file inside"),
    Case("export", "labels", "not-utf8", "not UTF-8"),
    Case("validate", "labels", "not-utf8", "not UTF-8"),
    Case("pipeline", "config", "not-utf8", "not UTF-8"),
    Case("pipeline", "config", "scalar-table", "must be a table"),
    Case("pipeline", "outdir", "not-ours-with-overwrite", "was not made by resnet-edge pipeline"),
    Case("pipeline", "outdir", "holds-an-input", "an input of this run"),
    Case("pipeline", "outdir", "home", "home folder"),
    Case("pipeline", "outdir", "parent-of-cwd", "holds the current folder"),
    Case("export", "in_chans", "zero", "in_chans must be at least 1"),
    Case("export", "input_size", "huge", "of memory available"),
    Case("export", "num_classes", "huge", "of memory available"),
    Case("export", "batch", "huge", "of memory available"),
    Case("export", "weights", "integer-weights", "is int64"),
    Case("export", "weights", "nan-weights", "holds NaN or Inf"),
    Case("benchmark", "batch_sizes", "huge", "of memory available"),
    Case("pipeline", "batch_sizes", "huge", "of memory available"),
    Case("benchmark", "duration", "1e308", "at most 3600"),
    Case("simplify", "timeout_s", "1e308", "at most 3600"),
    Case("validate", "data", "decompression-bomb", "decompression bomb"),
    Case("validate", "data", "zero-height-array", "have no pixels"),
    Case("validate", "reference", "other-input-shape", "takes input [3, 32, 32]"),
    Case("validate", "models", "nan-metadata", "must be finite"),
    Case("validate", "models", "huge-resize", "over the 4096 pixels"),
    Case("inspect", "model", "external-data-outside", "outside the model's folder"),
    Case("inspect", "model", "external-data-missing", "which is missing"),
    Case("quantize", "model", "opset-7", "opset 7; INT8 needs opset 13"),
    # Issue 21. One data path, one label map: class folders the model's labels do not name are refused, naming both.
    *(
        Case(command, "data", "class-folders-not-labels", "'cat', 'dog' are not among the model's labels ('0', '1'")
        for command in ("validate", "quantize", "analyze", "tune", "pipeline")
    ),
    Case("validate", "label_map", "unknown-class", "class 'zero' is neither a model label nor a class index"),
    Case("validate", "label_map", "nothing-to-map", "has no class names to map"),
    # A header that declares more than the file holds, refused from the header (quantize, validate, gradflow).
    *(Case(command, "data", "npz-declares-more", "but the file holds only") for command in ("validate", "quantize")),
    Case("gradflow", "data", "npz-declares-more", "but the file holds only"),
    Case("validate", "data", "not-an-image", "not an image format Pillow reads"),
    # Nothing of the user's is lost: --overwrite only over an earlier run's listed files; no symlink; one run at once.
    Case("pipeline", "outdir", "notes-beside-earlier-run", "holds notes.txt, not written by the earlier run"),
    Case("pipeline", "outdir", "copied-marker", "holds chapter1.tex, not written by the earlier run"),
    Case("pipeline", "outdir", "symlink", "is a symbolic link"),
    Case("pipeline", "outdir", "another-run-writing-it", "another resnet-edge pipeline is writing"),
    # Refused, not ignored.
    Case("validate", "providers", "cpu-options", "the CPU provider takes no options (arena)"),
    Case("benchmark", "remote_python", "local-target", "--remote-python applies only to ssh:// targets"),
    Case("benchmark", "targets", "ssh-open-bracket", "an IPv6 address goes in brackets"),
    # One line, not a traceback.
    Case("export", "weights", "not-a-checkpoint", "not a PyTorch checkpoint (IndexError reading it)"),
    Case("export", "weights", "malformed-preprocessing", "its metadata's preprocessing record is malformed"),
    Case("export", "weights", "string-mean", "could not convert string to float"),
    Case("quantize", "model", "huge-fixed-batch", "of memory available"),
    Case("quantize", "model", "nan-weights-onnx", "holds NaN or Inf values"),
    Case("export", "output", "6000-characters", "path too long for the file system (6,005 characters)"),
    Case("pipeline", "config", "nested-5000-deep", "nested too deeply"),
    # Usage errors: one line and the hint, exit 2.
    Case("validate", "batch", "usage-not-a-number", "'abc' is not a valid integer"),
    Case("quantize", "seed", "usage-negative", "-1 is not in the range"),
    Case("export", "command", "usage-unknown-command", "No such command 'frobnicate'"),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, digits_sim: Path, digits_int8: Path) -> Path:
    """The inputs every case starts from: a model, its INT8, a checkpoint, a few images, labels and a config."""
    folder = tmp_path_factory.mktemp("pristine")
    shutil.copy(digits_sim, folder / "model.onnx")
    shutil.copy(digits_int8, folder / "int8.onnx")
    shutil.copy(BUILTIN_DIGITS_WEIGHTS, folder / "ckpt.safetensors")
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"{i}.png")
    for name in ("ant", "bee"):  # a training folder: one sub-folder per class
        (folder / "train_classes" / name).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "train_classes" / name / f"{i}.png")
    (folder / "labels.txt").write_text("\n".join(str(i) for i in range(10)) + "\n")
    (folder / "config.toml").write_text("iterations = 2\n")
    return folder


@pytest.fixture
def world(pristine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    inputs = tmp_path / "inputs"
    shutil.copytree(pristine, inputs)
    out = tmp_path / "out"
    out.mkdir()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # every temporary folder of the run lands here
    monkeypatch.chdir(tmp_path)
    return {
        "inputs": inputs,
        "out": out,
        "tmp": tmp,
        "model": inputs / "model.onnx",
        "int8": inputs / "int8.onnx",
        "ckpt": inputs / "ckpt.safetensors",
        "images": inputs / "images",
        "train_classes": inputs / "train_classes",
        "labels": inputs / "labels.txt",
        "config": inputs / "config.toml",
    }


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _base(command: str, w: dict[str, Path]) -> list[str]:
    return [part.format(**{k: str(v) for k, v in w.items()}) for part in BASE[command]]


def _spoilt_path(kind: str, param: str, w: dict[str, Path]) -> str:
    bad = w["inputs"] / "bad"
    bad.mkdir(exist_ok=True)
    suffix = {"weights": ".pt", "labels_file": ".txt", "config_file": ".toml", "int8_model": ".onnx"}.get(
        param, ".onnx"
    )
    path = bad / f"{param}{suffix}"
    if kind == "missing":
        return str(bad / f"missing{suffix}")
    if kind == "folder":
        return str(bad)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"\xff\xfe\x00\x80 not what it claims to be \xc3\x28" * 8)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "broken-symlink":
        path.symlink_to(bad / "nowhere")
    return str(path)


def _spoilt_output(kind: str, command: str, w: dict[str, Path]) -> str:
    victim = w["ckpt"] if command in ("export", "train") else w["model"]
    if kind == "is-input":
        return str(victim)
    if kind == "symlink-to-input":
        link = w["out"] / "link.onnx"
        link.symlink_to(victim)
        return str(link)
    if kind == "hardlink-to-input":
        link = w["out"] / "hard.onnx"
        os.link(victim, link)
        return str(link)
    if kind == "folder":
        return str(w["out"])
    if kind == "a-file":
        return str(w["model"])
    assert kind == "unwritable"
    # Not a chmod: the suite may run as root, which writes anywhere; /proc refuses even root.
    return "/proc/resnet-edge-test/x.onnx" if command != "pipeline" else "/proc/resnet-edge-test"


def _replace_option(args: list[str], flag: str | None, param: click.Parameter, value: str) -> list[str]:
    """``args`` with ``param``'s value set to ``value`` (replaced where the base line gives it, else added)."""
    if flag is None:  # an argument: replace the first occurrence of the base's value for it
        position = [p for p in COMMANDS[args[0]].params if isinstance(p, click.Argument)].index(param)
        args = list(args)
        args[1 + position] = value
        return args
    for opt in param.opts:
        if opt in args:
            i = args.index(opt)
            return [*args[: i + 1], value, *args[i + 2 :]]
    return [*args, flag, value]


def _generated_args(case: Case, w: dict[str, Path]) -> list[str]:
    command = COMMANDS[case.command]
    param = next(p for p in command.params if p.name == case.param)
    args = _base(case.command, w)
    if case.param in OUTPUT_FILES | OUTPUT_FOLDERS:
        value = _spoilt_output(case.kind, case.command, w)
    elif case.kind in PATH_KINDS:
        value = _spoilt_path(case.kind, case.param, w)
    else:
        value = {"negative": "-5", "nan": "nan", "inf": "inf", "nonsense": TEXT_VALUE}[case.kind]
    return _replace_option(args, _flag(param), param, value)


def _copy_model_with(w: dict[str, Path], name: str, change: Callable[[onnx.ModelProto], None]) -> Path:
    model = onnx.load(str(w["model"]))
    change(model)
    path = w["inputs"] / name
    path.write_bytes(model.SerializeToString())
    return path


def _set_preprocessing(**changes: object) -> Callable[[onnx.ModelProto], None]:
    def change(model: onnx.ModelProto) -> None:
        for prop in model.metadata_props:
            if prop.key == "preprocessing":
                prop.value = json.dumps(json.loads(prop.value) | changes)

    return change


def _extra_args(case: Case, w: dict[str, Path]) -> list[str]:
    base = _base(case.command, w)
    inputs = w["inputs"]
    k = case.kind
    if k == "model-itself":
        return [*base, "-o", str(w["model"])]
    if k == "model-itself-mixed-precision":
        return [*_replace_option(base, "-o", _param("quantize", "output"), str(w["model"])), "--min-agreement", "0.9"]
    if k == "checkpoint-itself":
        return _replace_option(base, "-o", COMMANDS["export"].params[-2], str(w["ckpt"]))
    if k == "calib-image":
        return [a if a != f"{w['out']}/q.onnx" else str(w["images"] / "0.png") for a in base]
    if k == "not-utf8":
        path = inputs / "latin1.txt"
        path.write_bytes("caf\xe9 = 1\n".encode("latin-1"))
        if case.command == "pipeline":
            return [*base, "--config", str(path)]
        return [*base, "--labels", str(path)]
    if k == "scalar-table":
        path = inputs / "scalar.toml"
        path.write_text("pipeline = 5\n")
        return [*base, "--config", str(path)]
    if k == "not-ours-with-overwrite":
        (w["out"] / "run").mkdir()
        (w["out"] / "run" / "thesis.tex").write_text("years of work")
        return [*base, "--overwrite"]
    if k == "holds-an-input":
        return [*_replace_option(base, "-o", _param("pipeline", "outdir"), str(inputs)), "--weights", str(w["ckpt"])]
    if k == "home":
        return _replace_option(base, "-o", _param("pipeline", "outdir"), str(Path.home()))
    if k == "parent-of-cwd":
        return _replace_option(base, "-o", _param("pipeline", "outdir"), "..")
    if k == "zero":
        return [*base, "--in-chans", "0"]
    if k == "huge":
        flag = {"input_size": "--input-size", "num_classes": "--num-classes", "batch": "--batch"}.get(case.param)
        if case.command in ("benchmark", "pipeline"):
            name = "batch_sizes" if case.command == "benchmark" else "batch"  # the pipeline's option is its key
            return _replace_option(base, "--batch", _param(case.command, name), "100000000")
        value = {"input_size": "100000", "num_classes": "10000000000", "batch": "100000000"}[case.param]
        return [*base, "--arch", "resnet18", flag, value]
    if k in ("integer-weights", "nan-weights"):
        import torch

        from resnet_edge.models.checkpoints import read_state_dict

        state = read_state_dict(w["ckpt"])
        if k == "integer-weights":
            state = {n: t.long() if t.is_floating_point() else t for n, t in state.items()}
        else:
            state = {n: t.clone() for n, t in state.items()}
            state["fc.weight"][0, 0] = float("nan")
        path = inputs / f"{k}.pt"
        torch.save(state, path)
        return ["export", "--arch", "resnet20", "--weights", str(path), "-o", f"{w['out']}/m.onnx"]
    if k == "1e308":
        flag = "--duration" if case.command == "benchmark" else "--timeout"
        args = [a for a in base if a not in ("--iterations", "2")] if case.command == "benchmark" else base
        return [*args, flag, "1e308"]
    if k == "decompression-bomb":
        bomb = inputs / "bomb"
        bomb.mkdir()
        Image.new("L", (14000, 14000)).save(bomb / "bomb.png", optimize=True)  # 196 Mpx in a few hundred kB
        return _replace_option(base, "--data", _param("validate", "data"), str(bomb))
    if k == "zero-height-array":
        path = inputs / "flat.npy"
        np.save(path, np.zeros((4, 0, 32, 3), np.uint8))
        return _replace_option(base, "--data", _param("validate", "data"), str(path))
    if k == "other-input-shape":
        return [*base, "--reference", str(_plain_onnx(inputs / "r40.onnx", size=40, opset=17))]
    if k in ("nan-metadata", "huge-resize"):
        change = (
            _set_preprocessing(mean=[float("nan")] * 3) if k == "nan-metadata" else _set_preprocessing(resize=10**9)
        )
        path = _copy_model_with(w, f"{k}.onnx", change)
        return [a if a != str(w["model"]) else str(path) for a in base]
    if k.startswith("external-data"):
        from onnx.external_data_helper import convert_model_to_external_data

        sub = inputs / "external"
        sub.mkdir()
        model = onnx.load(str(w["model"]))
        convert_model_to_external_data(model, all_tensors_to_one_file=True, location="w.data", size_threshold=0)
        onnx.save(model, str(sub / "m.onnx"))
        model = onnx.load(str(sub / "m.onnx"), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = "../model.onnx" if k.endswith("outside") else "gone.data"
        (sub / "m2.onnx").write_bytes(model.SerializeToString())
        return ["inspect", str(sub / "m2.onnx")]
    if k == "opset-7":
        path = _plain_onnx(inputs / "op7.onnx", size=32, opset=7)
        return [a if a != str(w["model"]) else str(path) for a in base]
    return _issue21_args(case, w, base)


def _issue21_args(case: Case, w: dict[str, Path], base: list[str]) -> list[str]:
    """The command lines of issue 21's rows."""
    inputs, k = w["inputs"], case.kind
    data_flag = {"quantize": "--eval-data"}.get(case.command, "--data")
    if k in ("class-folders-not-labels", "unknown-class"):
        names = ("cat", "dog") if k == "class-folders-not-labels" else ("0", "1")
        for name in names:
            shutil.copytree(w["images"], inputs / "classes" / name)
        args = _with_option(base, data_flag, str(inputs / "classes"))
        if k == "unknown-class":
            (inputs / "map.txt").write_text("0,zero\n1,one\n")
            args = [*args, "--label-map", str(inputs / "map.txt")]
        return args
    if k == "nothing-to-map":  # a flat folder: no class names for the map to name
        (inputs / "map.txt").write_text("cat,3\n")
        return [*base, "--label-map", str(inputs / "map.txt")]
    if k == "npz-declares-more":
        member = io.BytesIO()
        header = {"descr": "|u1", "fortran_order": False, "shape": (40_000_000, 28, 28)}  # 31 GB declared
        np.lib.format.write_array_header_1_0(member, header)
        with zipfile.ZipFile(inputs / "lie.npz", "w") as archive:
            archive.writestr("images.npy", member.getvalue() + bytes(4 * 28 * 28))
        return _with_option(base, {"quantize": "--calib"}.get(case.command, "--data"), str(inputs / "lie.npz"))
    if k == "not-an-image":
        (inputs / "fake").mkdir()
        (inputs / "fake" / "x.png").write_bytes(b"this is not a png")
        return _with_option(base, "--data", str(inputs / "fake"))
    run = w["out"] / "run"
    if k in ("notes-beside-earlier-run", "copied-marker"):
        from resnet_edge.pipeline.publish import write_manifest

        run.mkdir()
        (run / "model.onnx").write_text("an earlier run's model")
        write_manifest(run)
        (run / ("notes.txt" if k == "notes-beside-earlier-run" else "chapter1.tex")).write_text("the user's")
        if k == "copied-marker":
            (run / "model.onnx").unlink()
        return [*base, "--overwrite"]
    if k == "symlink":
        (w["out"] / "link").symlink_to(inputs)
        return _with_option(base, "-o", str(w["out"] / "link"))
    if k == "another-run-writing-it":
        return base  # the lock is held around the call (_during)
    if k == "cpu-options":
        return [*base, "--providers", "cpu[arena=x]"]
    if k == "local-target":
        return [*base, "--target", "local", "--remote-python", "python3"]
    if k == "ssh-open-bracket":
        return [*base, "--target", "ssh://[::1"]
    if k == "not-a-checkpoint":
        (inputs / "shadow").write_text("root:$6$salt$hash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")
        return ["export", "--arch", "resnet20", "--weights", str(inputs / "shadow"), "-o", f"{w['out']}/m.onnx"]
    if k in ("malformed-preprocessing", "string-mean"):
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        with safe_open(str(w["ckpt"]), "pt") as f:
            metadata = dict(f.metadata())
        if k == "malformed-preprocessing":
            metadata["preprocessing"] = "{not json"
        else:
            metadata["preprocessing"] = json.dumps(json.loads(metadata["preprocessing"]) | {"mean": ["a", "b", "c"]})
        save_file(load_file(str(w["ckpt"])), str(inputs / f"{k}.safetensors"), metadata=metadata)
        return _with_option(base, "--weights", str(inputs / f"{k}.safetensors"))
    if k in ("huge-fixed-batch", "nan-weights-onnx"):

        def change(model: onnx.ModelProto) -> None:
            if k == "huge-fixed-batch":
                model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 10_000_000  # ~2.5 TiB of activations
                return
            from onnx import numpy_helper

            weight = numpy_helper.to_array(model.graph.initializer[0]).copy()
            weight.flat[0] = np.nan
            model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, model.graph.initializer[0].name))

        path = _copy_model_with(w, f"{k}.onnx", change)
        return [a if a != str(w["model"]) else str(path) for a in base]
    if k == "6000-characters":
        return _with_option(base, "-o", "a" * 6000 + ".onnx")
    if k == "nested-5000-deep":
        (inputs / "deep.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
        return [*base, "--config", str(inputs / "deep.toml")]
    if k == "usage-not-a-number":
        return [*base, "--batch", "abc"]
    if k == "usage-negative":
        return [*base, "--seed", "-1"]
    if k == "usage-unknown-command":
        return ["frobnicate", *base[1:]]
    raise AssertionError(f"no setup for {case.id}")


def _with_option(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag``'s value replaced, or the flag added."""
    if flag in args:
        i = args.index(flag)
        return [*args[: i + 1], value, *args[i + 2 :]]
    return [*args, flag, value]


@contextlib.contextmanager
def _during(case: Case, w: dict[str, Path]) -> Iterator[None]:
    """What goes on while a row's command runs: another pipeline holding the output folder's lock."""
    if case.kind != "another-run-writing-it":
        yield
        return
    from resnet_edge.pipeline.publish import outdir_lock

    with outdir_lock(w["out"] / "run"):
        yield


def _plain_onnx(path: Path, *, size: int, opset: int) -> Path:
    """A fresh resnet20 as another tool writes it: fixed 1x3xSIZExSIZE input, no resnet-edge metadata."""
    import warnings

    import torch

    from resnet_edge.models.resnet import create_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            create_model("resnet20").eval(),
            (torch.zeros(1, 3, size, size),),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
        )
    return path


def _param(command: str, name: str) -> click.Parameter:
    return next(p for p in COMMANDS[command].params if p.name == name)


def _runtime_cache(path: Path) -> bool:
    """Files the libraries keep in the temp folder across runs, not litter of one: PyTorch's compile cache
    (torchinductor_<user>) and onnxruntime's native session-id file (.ses)."""
    return path.name.startswith("torchinductor_") or path.name == ".ses"


def _check_refused(args: list[str], w: dict[str, Path], expect: str = "", *, during=None):
    before_inputs, before_out = _hashes(w["inputs"]), _listing(w["out"])
    with during or contextlib.nullcontext():
        result = CliRunner().invoke(main, args)
    output = result.output
    assert result.exit_code not in (0, None), f"accepted: {args}\n{output[-2000:]}"
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        f"crashed: {args}: {result.exception!r}"
    )
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.lower().startswith("error:")]
    assert len(errors) == 1, f"{args}\n{output[-2000:]}"
    assert expect in errors[0], errors[0]
    after_inputs = _hashes(w["inputs"])
    assert all(after_inputs.get(name) == digest for name, digest in before_inputs.items()), "an input changed"
    assert _listing(w["out"]) == before_out, f"left in the output folder: {_listing(w['out'])}"
    left = [p for p in w["tmp"].iterdir() if not _runtime_cache(p)]
    assert not left, f"left in the temp folder: {left}"
    return result


def test_every_command_has_a_base_command_line() -> None:
    """A new command fails here until it has a valid base line, and then gets its options' bad values for free."""
    assert set(BASE) == set(COMMANDS)


@pytest.mark.parametrize("case", generated_cases(), ids=lambda c: c.id)
def test_generated_bad_value_is_refused(case: Case, world: dict[str, Path]) -> None:
    _check_refused(_generated_args(case, world), world)


@pytest.mark.parametrize("case", EXTRA, ids=lambda c: c.id)
def test_crafted_bad_input_is_refused(case: Case, world: dict[str, Path]) -> None:
    result = _check_refused(_extra_args(case, world), world, case.expect, during=_during(case, world))
    if case.kind.startswith("usage-"):  # click's usage errors: exit 2, the error line, then the hint
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert (
            result.exit_code == 2
            and lines[-1].startswith("Try '")
            and lines[-1].endswith(" -h' for help.")
            and "Usage:" not in result.output
        )
    assert "BytesIO" not in result.output  # an image is named by its file, not by Pillow's buffer


# --- issue 21: what happens at -o while a command runs, and a full disk ------------------------------------------


@pytest.mark.parametrize("what", ["file", "folder"])
def test_what_appears_at_the_pipeline_output_mid_run_is_never_touched(
    what: str, world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file or folder created at -o while the run goes is neither deleted nor renamed aside; one error line says so
    and the run's own output is dropped (the first stage stops the run here: what matters is the publishing)."""
    import functools

    from resnet_edge.errors import InputFileError
    from resnet_edge.pipeline import run as pipeline_run

    target = world["out"] / "run"

    class MeetsAUser:  # the first stage, which stops the run once a user's file or folder is at -o
        name = "export"

        def run(self, *args: object) -> None:
            if what == "file":
                target.write_text("the user's")
            else:
                target.mkdir()
                (target / "notes.txt").write_text("the user's")
            raise InputFileError("stopped here on purpose")

    monkeypatch.setattr(
        pipeline_run, "run_pipeline", functools.partial(pipeline_run.run_pipeline, stages=[MeetsAUser()])
    )
    result = CliRunner().invoke(main, _base("pipeline", world))
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert "changed while the run was going" in errors[0] and "left as it is" in errors[0]
    assert _listing(world["out"]) == (["run"] if what == "file" else ["run", "run/notes.txt"])  # nothing else
    assert (target if what == "file" else target / "notes.txt").read_text() == "the user's"
    assert not [p for p in world["tmp"].iterdir() if not _runtime_cache(p)]


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a 64 KiB tmpfs filled to the last byte: every write into it fails with ENOSPC, as on a full disk.
    Mounting needs root (CI may not be): tests/test_write_failures.py checks the same with a write that fails."""
    import subprocess

    folder = tmp_path / "full"
    folder.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, bytes(4096))
        os.close(fd)
        assert shutil.disk_usage(folder).free == 0
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# Each command that writes, as BASE gives it, with what keeps it fast or lets it reach its write.
FULL_DISK = {
    "export": [],
    "simplify": [],
    "quantize": ["--allow-accuracy-drop"],  # 2 random held-out images: the bar is not what is tested
    "runner": [],
    "benchmark": ["-o", "{out}/b.json"],
    "analyze": ["--limit", "4"],
    "gradflow": [],
    "tune": ["--no-int8"],
    "pipeline": [],
    "train": [],
}


@pytest.mark.parametrize("command", FULL_DISK)
def test_a_full_disk_is_one_error_line_naming_the_file_and_the_free_space(
    command: str, world: dict[str, Path], full_disk: Path
) -> None:
    world = {**world, "out": full_disk}
    # --json: no progress bars, whose redrawing (a bar another test left in tqdm's registry takes position 0) can
    # share the captured error line; what is under test is the write.
    args = _base(command, world) + [a.format(out=full_disk) for a in FULL_DISK[command]] + ["--json"]
    result = _check_refused(args, world, "No space left on device (0 KiB free there); nothing was kept")
    assert str(full_disk) in result.output or "{out}" not in " ".join(BASE[command])


def test_every_writing_command_is_tried_on_a_full_disk() -> None:
    """A new command that writes (an -o option) fails here until it is in FULL_DISK."""
    writing = {
        name
        for name, command in COMMANDS.items()
        if any(p.name in OUTPUT_FILES | OUTPUT_FOLDERS for p in command.params)
    }
    assert writing <= set(FULL_DISK)
