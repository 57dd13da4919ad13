"""One data path, one label map (issue 21): the same labelled class-folder set gives the same accuracy in quantize's
held-out check, validate, analyze, tune, the pipeline and a device job, and it is the accuracy plain onnxruntime
computes on its own.

The set is the issue's case in small: a model whose ``labels`` name its classes (the built-in digits resnet20, its
classes renamed ``zero`` ... ``nine``), and class folders named by those labels, whose alphabetical order (eight,
five, four, nine, one, seven, six, three, two, zero) is not the model's. Numbered alphabetically, as quantize did,
the same images score about 10%.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from PIL import Image

from resnet_edge.calibration.sources import DIGITS_FILE
from resnet_edge.cli.main import main
from resnet_edge.models.checkpoints import BUILTIN_DIGITS_WEIGHTS
from resnet_edge.onnx.metadata import write_props

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEST_PER_CLASS = 6  # 60 held-out images: every figure below is a count out of 60
CALIB_IMAGES = 40
# The three held-out digits the built-in model gets wrong (it scores 394 of 397): among the 60, so that the figures
# compared are not all 100%.
MISSED_ROWS = (1632, 1662, 1794)


def _write_images(root: Path, split: str, rows: np.ndarray, images: np.ndarray, labels: np.ndarray) -> int:
    for i, row in enumerate(rows):
        folder = root / split / WORDS[int(labels[row])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[row]).save(folder / f"{i:03d}.png")
    return len(rows)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory, digits_sim: Path) -> dict[str, Path]:
    """The model with word labels, a checkpoint carrying them, and the class folders (calibration and held-out)."""
    root = tmp_path_factory.mktemp("one-data-path")
    model = onnx.load(str(digits_sim))
    write_props(model, {"labels": json.dumps(WORDS)})
    onnx.save(model, str(root / "words.onnx"))
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(BUILTIN_DIGITS_WEIGHTS), "pt") as f:
        metadata = dict(f.metadata()) | {"labels": json.dumps(WORDS)}
    save_file(load_file(str(BUILTIN_DIGITS_WEIGHTS)), str(root / "words.safetensors"), metadata=metadata)
    with np.load(DIGITS_FILE) as digits:
        images, labels = digits["images"], digits["labels"]
        test_rows = np.concatenate(
            [
                ([r for r in MISSED_ROWS if labels[r] == c] + [r for r in digits["test_rows"] if labels[r] == c])[
                    :TEST_PER_CLASS
                ]
                for c in range(10)
            ]
        )
        _write_images(root, "test", test_rows, images, labels)
        _write_images(root, "calib", digits["calib_rows"][:CALIB_IMAGES], images, labels)
    return {"root": root, "model": root / "words.onnx", "ckpt": root / "words.safetensors"}


def _run(*args: str) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    return json.loads(result.stdout)


def _plain_onnxruntime_accuracy(model: Path, folder: Path) -> float:
    """Top-1 accuracy by hand: PIL, numpy and an onnxruntime session, labels by the model's own label list."""
    proto = onnx.load(str(model))
    props = {p.key: p.value for p in proto.metadata_props}
    labels, pre = json.loads(props["labels"]), json.loads(props["preprocessing"])
    mean = np.asarray(pre["mean"], np.float32)[:, None, None]
    std = np.asarray(pre["std"], np.float32)[:, None, None]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    hits = total = 0
    for folder_ in sorted(p for p in folder.iterdir() if p.is_dir()):
        for file in sorted(folder_.iterdir()):
            image = Image.open(file).convert("RGB").resize((pre["resize"], pre["resize"]), Image.BILINEAR)
            x = ((np.asarray(image, np.float32).transpose(2, 0, 1) / 255 - mean) / std)[None]
            hits += int(session.run(None, {name: x})[0].argmax() == labels.index(folder_.name))
            total += 1
    return hits / total


def test_one_labelled_folder_gives_one_accuracy_in_every_stage(labelled: dict[str, Path], tmp_path: Path) -> None:
    model, root = labelled["model"], labelled["root"]
    calib, test = root / "calib", root / "test"
    int8 = tmp_path / "words.int8.onnx"
    figures: dict[str, float] = {}

    q = _run("quantize", str(model), "-o", str(int8), "--calib", str(calib), "--eval-data", str(test), "--no-speed")
    assert q["evaluation_images"] == 10 * TEST_PER_CLASS and q["calibration_images"] == CALIB_IMAGES
    figures["quantize FP32"], figures["quantize INT8"] = q["fp32_accuracy"]["top1"], q["int8_accuracy"]["top1"]

    v = _run("validate", str(model), str(int8), "--reference", str(model), "--data", str(test))
    figures["validate FP32"], figures["validate INT8"] = (row["accuracy"]["top1"] for row in v["rows"])

    a = _run("analyze", str(model), str(int8), "--data", str(test), "--limit", "1000", "-o", str(tmp_path / "a"))
    assert a["images"] == 10 * TEST_PER_CLASS
    figures["analyze FP32"], figures["analyze INT8"] = a["fp32_accuracy"]["top1"], a["int8_accuracy"]["top1"]

    t = _run(
        *("tune", str(model), "-o", str(tmp_path / "t.onnx"), "--providers", "cpu"),
        *("--data", str(test), "--calib", str(calib), "--iterations", "3"),
    )
    by_name = {c["name"]: c for c in t["candidates"]}
    figures["tune FP32"] = by_name["fp32"]["accuracy"]
    qdq = next(c for name, c in by_name.items() if name.startswith("int8") and name.endswith("qdq"))
    figures["tune INT8"] = qdq["accuracy"]  # the same recipe and calibration images as quantize's

    device = _run(
        "validate", str(model), str(int8), "--reference", str(model), "--data", str(test), "--target", "local"
    )
    figures["device job FP32"], figures["device job INT8"] = (
        r["accuracy"]["top1"] for r in device["results"]["local"]["rows"]
    )

    out = tmp_path / "pipeline"
    _run(
        *("pipeline", "--weights", str(labelled["ckpt"]), "--calib", str(calib), "--data", str(test), "-o", str(out)),
        *("--no-tune", "--no-torch-eager", "--iterations", "2", "--batch", "1"),
    )
    report = json.loads((out / "report.json").read_text())
    stage = report["stages"]["quantize"]
    assert stage["calibration_images"] == CALIB_IMAGES  # --data given: all of --calib calibrates, none held back
    rows = {r["path"]: r for r in report["stages"]["validate"]["rows"]}
    figures["pipeline quantize FP32"], figures["pipeline validate FP32"] = (
        stage["fp32_accuracy"]["top1"],
        rows["model.sim.onnx"]["accuracy"]["top1"],
    )
    # The pipeline quantizes its own export (BatchNorms folded by onnxsim, not by the exporter): its INT8 model is
    # its own, judged alike by its two stages.
    assert stage["int8_accuracy"]["top1"] == rows["model.int8.onnx"]["accuracy"]["top1"]
    own_int8 = {"pipeline quantize INT8 (its own)": stage["int8_accuracy"]["top1"]}
    own_int8["pipeline validate INT8 (its own)"] = rows["model.int8.onnx"]["accuracy"]["top1"]

    independent_fp32 = _plain_onnxruntime_accuracy(model, test)
    independent_int8 = _plain_onnxruntime_accuracy(int8, test)
    print("\none data path, 60 labelled images in word-named class folders:")
    for name, value in {
        **figures,
        "plain onnxruntime FP32": independent_fp32,
        "plain onnxruntime INT8": independent_int8,
    }.items():
        print(f"  {name:24} {100 * value:.2f}%")
    assert {v for k, v in figures.items() if "FP32" in k} == {independent_fp32}
    assert {v for k, v in figures.items() if "INT8" in k} == {independent_int8}
    assert independent_fp32 == 58 / 60  # the built-in model's two misses: the labels line up (alphabetically not)

    # What alphabetical numbering of the same folders scored: the wrong figure.
    alphabetical = sorted(WORDS)
    shutil.copytree(test, tmp_path / "digits-by-index")
    for word in WORDS:
        (tmp_path / "digits-by-index" / word).rename(tmp_path / "digits-by-index" / str(alphabetical.index(word)))
    proto = onnx.load(str(model))
    write_props(proto, {"labels": json.dumps([str(i) for i in range(10)])})
    onnx.save(proto, str(tmp_path / "indexed.onnx"))
    wrong = _plain_onnxruntime_accuracy(tmp_path / "indexed.onnx", tmp_path / "digits-by-index")
    print(f"  {'numbered alphabetically':24} {100 * wrong:.2f}% (the wrong figure quantize printed before)")
    assert wrong < 0.3 < independent_fp32


def test_class_folders_that_are_not_the_model_labels_are_refused_naming_both(labelled: dict[str, Path]) -> None:
    """A model labelled zero..nine given cat/ and dog/: refused, not mapped to classes 0 and 1 and passed."""
    root = labelled["root"] / "pets"
    for name in ("cat", "dog"):
        shutil.copytree(labelled["root"] / "test" / "zero", root / name)
    result = CliRunner().invoke(main, ["validate", str(labelled["model"]), "--data", str(root)])
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "'cat', 'dog' are not among the model's labels ('zero', 'one', 'two'" in line and "--label-map" in line
    label_map = labelled["root"] / "pets.txt"
    label_map.write_text("cat,three\ndog,7\n")
    mapped = _run("validate", str(labelled["model"]), "--data", str(root), "--label-map", str(label_map))
    assert mapped["images"] == 2 * TEST_PER_CLASS  # mapped as the file says: the zeros now count as 3 and 7
    assert mapped["rows"][0]["accuracy"]["top1"] == 0.0
