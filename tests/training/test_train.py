"""``resnet-edge train`` on tiny generated image folders: from scratch, fine-tuned, deterministic, resumable, and the
bad folders refused in one line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from resnet_edge.calibration.preprocess import PreprocessSpec
from resnet_edge.cli.main import main
from resnet_edge.errors import InputFileError, OptionError
from resnet_edge.models.resnet import create_model
from resnet_edge.progress import Progress
from resnet_edge.training.data import BatchAugment, stratified_split
from resnet_edge.training.options import TrainOptions
from resnet_edge.training.train import metrics_path, resume_path, train_model

CLASSES = ("cat", "dog", "fox")
PER_CLASS = 8
SIDE = 24  # not the model's 32: the folder goes through the resize of the one preprocessing
# Two epochs of a resnet20 on 21 images: enough for every code path (schedule, resume, metrics), a fraction of a second.
# One thread: on a shared 2-core machine two spinning OpenMP threads beside another job run 30-70x slower.
QUICK = {"arch": "resnet20", "epochs": 2, "batch": 8, "threads": 1}


def _write_folder(root: Path, classes: tuple[str, ...] = CLASSES, per_class: int = PER_CLASS, seed: int = 0) -> Path:
    """Each class a colour of its own plus noise, so that a few steps learn something."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        base = np.zeros(3)
        base[index % 3] = 200
        for i in range(per_class):
            pixels = np.clip(base + rng.normal(0, 40, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_folder(tmp_path_factory.mktemp("images") / "train")


@pytest.fixture(scope="module")
def trained(folder: Path, tmp_path_factory: pytest.TempPathFactory):
    output = tmp_path_factory.mktemp("trained") / "model.safetensors"
    return train_model(folder, output, TrainOptions(**QUICK))


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def _same_weights(a: Path, b: Path) -> bool:
    left, right = load_file(str(a)), load_file(str(b))
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_the_checkpoint_describes_itself(trained, folder: Path) -> None:
    meta = _metadata(trained.output)
    assert meta["arch"] == "resnet20" and meta["variant"] == "residual"
    assert json.loads(meta["labels"]) == list(CLASSES)  # the folders, in index order
    spec = PreprocessSpec.from_json(meta["preprocessing"])
    assert spec == PreprocessSpec.small(32)  # the registry's data defaults for the 32x32 family
    assert meta["dataset"] == str(folder) and len(meta["dataset_sha256"]) == 64
    # 10% of each class of 8 rounds to one image held out per class.
    assert (meta["train_images"], meta["val_images"]) == ("21", "3")
    assert meta["epochs_completed"] == "2" and meta["trained_by"] == "resnet-edge train"
    assert float(meta["val_accuracy"]) == pytest.approx(trained.val_accuracy, abs=1e-4)
    assert meta["command"].startswith("train_model(") and "'epochs': " not in meta["command"]
    assert json.loads(meta["train_options"])["epochs"] == 2
    assert not resume_path(trained.output).exists()  # removed: the run is complete


def test_the_metrics_file_holds_every_epoch(trained) -> None:
    record = json.loads(metrics_path(trained.output).read_text())
    assert [e["epoch"] for e in record["history"]] == [1, 2]
    assert record["labels"] == list(CLASSES) and record["val_images"] == 3
    first = record["history"][0]
    assert 0 <= first["train_error"] <= 1 and first["train_accuracy"] == pytest.approx(1 - first["train_error"])
    assert first["images_per_second"] > 0 and first["lr"] > 0


def test_the_same_seed_gives_the_same_weights(trained, folder: Path, tmp_path: Path) -> None:
    again = train_model(folder, tmp_path / "again.safetensors", TrainOptions(**QUICK))
    other = train_model(folder, tmp_path / "other.safetensors", TrainOptions(**QUICK, seed=1))
    assert _same_weights(trained.output, again.output)
    assert again.dataset_sha256 == trained.dataset_sha256
    assert not _same_weights(trained.output, other.output)


def test_an_interrupted_run_resumes_to_the_same_weights(trained, folder: Path, tmp_path: Path) -> None:
    output = tmp_path / "m.safetensors"

    def stop_after_first_epoch(event: Progress) -> None:
        if event.step == "epochs" and event.done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(folder, output, TrainOptions(**QUICK), on_progress=stop_after_first_epoch)
    assert _metadata(output)["epochs_completed"] == "1" and resume_path(output).is_file()
    with pytest.raises(OptionError, match="holds an interrupted run: pass --resume"):
        train_model(folder, output, TrainOptions(**QUICK))
    with pytest.raises(OptionError, match=r"these differ: lr None -> 0\.05"):
        train_model(folder, output, TrainOptions(**QUICK, lr=0.05, resume=True))
    resumed = train_model(folder, output, TrainOptions(**QUICK, resume=True))
    assert resumed.resumed_from == 1 and [m.epoch for m in resumed.history] == [1, 2]
    assert _same_weights(output, trained.output)
    assert not resume_path(output).exists()
    with pytest.raises(InputFileError, match="nothing to resume"):
        train_model(folder, output, TrainOptions(**QUICK, resume=True))


def test_cli_trains_and_records_its_command(folder: Path, tmp_path: Path) -> None:
    output = tmp_path / "cli.safetensors"
    args = ["train", "--data", str(folder), "--arch", "resnet20", "--epochs", "1", "--batch", "8", "--threads", "1"]
    args += ["-o", str(output)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"wrote {output}: resnet20 (residual) from scratch; 3 classes, 21 training images" in result.output
    assert _metadata(output)["command"] == "resnet-edge " + " ".join(args).replace(" -o ", " --output ")


def test_ctrl_c_in_the_cli_names_the_epoch_kept(folder: Path, tmp_path: Path, monkeypatch) -> None:
    from resnet_edge.training import loop

    output = tmp_path / "m.safetensors"
    real_fit = loop.fit

    def fit_interrupted_after_one_epoch(*args, on_epoch, **kwargs):
        def then_stop(metrics):
            on_epoch(metrics)
            raise KeyboardInterrupt

        return real_fit(*args, on_epoch=then_stop, **kwargs)

    monkeypatch.setattr("resnet_edge.training.train.fit", fit_interrupted_after_one_epoch)
    result = CliRunner().invoke(
        main,
        ["train", "--data", str(folder), "--arch", "resnet20", "--epochs", "3", "--threads", "1", "-o", str(output)],
    )
    assert result.exit_code == 130
    assert f"interrupted: {output} holds epoch 1 of 3; continue with the same command and --resume" in result.output
    assert _metadata(output)["epochs_completed"] == "1" and resume_path(output).is_file()


@pytest.fixture(scope="module")
def torchvision_resnet18(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision-shaped ResNet-18 checkpoint (1000 classes, its parameter names), saved as torch.save writes it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tv") / "resnet18.pth"
    torch.save(create_model("resnet18").state_dict(), path)
    return path


def test_fine_tunes_a_torchvision_resnet18_to_three_classes(folder: Path, torchvision_resnet18: Path, tmp_path: Path):
    original = torch.load(torchvision_resnet18, weights_only=True)
    options = TrainOptions(
        arch="resnet18", weights=torchvision_resnet18, freeze=2, input_size=32, epochs=1, batch=8, threads=1
    )
    result = train_model(folder, tmp_path / "ft.safetensors", options)
    assert result.arch == "resnet18" and result.new_head and result.frozen == ["stem", "layer1"]
    tuned = load_file(str(result.output))
    assert tuned["fc.weight"].shape == (3, 512)
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.1.bn2.running_var"):
        assert torch.equal(tuned[key], original[key]), key  # frozen: weights and BatchNorm statistics
    assert not torch.equal(tuned["layer4.1.conv2.weight"], original["layer4.1.conv2.weight"])
    meta = _metadata(result.output)
    assert meta["arch"] == "resnet18" and json.loads(meta["labels"]) == list(CLASSES)
    assert PreprocessSpec.from_json(meta["preprocessing"]) == PreprocessSpec.imagenet(32)
    assert meta["fine_tuned_from"].startswith("resnet18.pth (sha256 ")
    assert json.loads(meta["train_options"])["lr"] is None and result.history[0].lr <= 0.01


def test_fine_tuning_its_own_checkpoint_keeps_its_classes(trained, folder: Path, tmp_path: Path) -> None:
    options = TrainOptions(weights=trained.output, epochs=1, threads=1)
    result = train_model(folder, tmp_path / "again.safetensors", options)
    assert not result.new_head and result.labels == list(CLASSES) and result.arch == "resnet20"


def _refused(args: list[str], *fragments: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code not in (0, None), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_bad_folders_are_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    train = [
        "train",
        "--arch",
        "resnet20",
        "--epochs",
        "1",
        "--threads",
        "1",
        "-o",
        str(out / "m.safetensors"),
        "--data",
    ]

    one = _write_folder(tmp_path / "one", classes=("cat",))
    _refused([*train, str(one)], "has one class (cat)", "at least two")

    empty = _write_folder(tmp_path / "empty", classes=("cat", "dog"))
    (empty / "fox").mkdir()
    _refused([*train, str(empty)], "class folder(s) fox hold no images")

    broken = _write_folder(tmp_path / "broken", classes=("cat", "dog"))
    (broken / "dog" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    _refused([*train, str(broken)], "cannot decode image", "3.png")

    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (SIDE, SIDE)).save(flat / "a.png")
    _refused([*train, str(flat)], "has no labels", "sub-folder named after the class")

    gaps = _write_folder(tmp_path / "gaps", classes=("1", "2"))
    _refused([*train, str(gaps)], "class(es) 0 have no training images")
    assert list(out.iterdir()) == []


def test_labels_mismatching_a_fine_tuned_checkpoint_are_one_line(trained, tmp_path: Path) -> None:
    other = _write_folder(tmp_path / "other", classes=("ant", "bee", "cow"))
    args = ["train", "--data", str(other), "--weights", str(trained.output), "-o", str(tmp_path / "m.safetensors")]
    _refused(args, "the data's classes (ant, bee, cow) are not the ones model.safetensors", "on (cat, dog, fox)")
    assert CliRunner().invoke(main, [*args, "--new-head", "--epochs", "1", "--threads", "1"]).exit_code == 0


def test_held_out_folder_with_a_foreign_class_is_one_line(folder: Path, tmp_path: Path) -> None:
    val = _write_folder(tmp_path / "val", classes=("cat", "eel"), per_class=2)
    output = tmp_path / "m.safetensors"
    args = ["train", "--data", str(folder), "--arch", "resnet20", "--val", str(val), "-o", str(output)]
    _refused(args, "'eel' are not among the model's labels ('cat', 'dog', 'fox')")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"epochs": 0}, "epochs must be from 1"),
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"val_fraction": 1.0}, "val fraction must be at least 0 and below 1"),
        ({"val": "x", "val_fraction": 0.2}, "exclude each other"),
        ({"momentum": 0.99}, "momentum must be at least 0.05 and at most 0.95"),
        ({"freeze": 1}, "no --weights was given"),
        ({"schedule": "step"}, "unknown schedule 'step'"),
    ],
)
def test_options_check_themselves(options: dict, match: str) -> None:
    with pytest.raises(OptionError, match=match):
        TrainOptions(**options)


def test_output_must_be_safetensors_and_not_an_input(folder: Path, tmp_path: Path, trained) -> None:
    with pytest.raises(OptionError, match="name it m.safetensors, not m.pt"):
        train_model(folder, tmp_path / "m.pt", TrainOptions(**QUICK))
    with pytest.raises(InputFileError, match="is the input"):
        train_model(folder, trained.output, TrainOptions(weights=trained.output))


def test_the_batched_crop_is_the_per_image_crop() -> None:
    """The one-gather crop against the per-image loop that trained the first built-in model."""
    images = torch.randn(6, 3, 10, 10)
    generator = torch.Generator().manual_seed(3)
    cropped = BatchAugment(10, 2, flip=False)(images, generator)
    generator = torch.Generator().manual_seed(3)
    padded = torch.nn.functional.pad(images, (2,) * 4, mode="replicate")
    offsets = torch.randint(0, 5, (6, 2), generator=generator)
    expected = torch.stack([padded[i, :, dy : dy + 10, dx : dx + 10] for i, (dy, dx) in enumerate(offsets.tolist())])
    assert torch.equal(cropped, expected)
    flipped = BatchAugment(10, 0, crop=False)(images, torch.Generator().manual_seed(0))
    assert all(torch.equal(f, i) or torch.equal(f, i.flip(-1)) for f, i in zip(flipped, images, strict=True))
    assert not torch.equal(flipped, images)


def test_the_held_out_split_keeps_every_class() -> None:
    labels = torch.tensor([0] * 10 + [1] * 3 + [2])
    kept, held = stratified_split(labels, 0.2, seed=0)
    assert sorted(kept + held) == list(range(14)) and not set(kept) & set(held)
    assert sorted(labels[held].tolist()) == [0, 0, 1]  # 2 of 10, 1 of 3 (at least one), none of a lone image
    assert stratified_split(labels, 0.2, seed=0) == (kept, held)


@pytest.fixture
def one_torch_thread():
    """PyTorch on one thread for the test (export's parity check included): beside another job on 2 cores, two
    spinning OpenMP threads run a small model 30-70x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_export_and_pipeline_take_the_checkpoint_alone(trained, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(main, ["export", "--weights", str(trained.output), "-o", str(out)])
    assert result.exit_code == 0, result.output
    import onnx

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["labels"]) == list(CLASSES) and props["dataset"] == str(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(
            main,
            [
                *("pipeline", "--weights", str(trained.output), "--data", str(folder), "-o", str(tmp_path / "run")),
                *("--no-int8", "--no-tune", "--no-torch-eager", "--iterations", "2"),
            ],
        )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["config_sources"]["arch"] == "checkpoint"
    rows = {row["variant"]: row for row in report["summary"]}
    assert rows["ONNX FP32"]["accuracy"] == pytest.approx(_plain_pytorch_accuracy(trained.output, folder), abs=1e-9)


def _plain_pytorch_accuracy(checkpoint: Path, folder: Path) -> float:
    """The checkpoint's accuracy on the folder, computed apart from resnet-edge's readers: PIL, numpy, the model."""
    from resnet_edge.models.checkpoints import build_model

    meta = _metadata(checkpoint)
    spec, labels = json.loads(meta["preprocessing"]), json.loads(meta["labels"])
    model = build_model("resnet20", weights=checkpoint).model
    paths = sorted(folder.glob("*/*.png"))
    batch = []
    for path in paths:
        image = Image.open(path).convert("RGB").resize((spec["crop"],) * 2, Image.Resampling.BILINEAR)
        pixels = (np.asarray(image, np.float32) / 255 - np.float32(spec["mean"])) / np.float32(spec["std"])
        batch.append(pixels.transpose(2, 0, 1))
    with torch.no_grad():
        predicted = model(torch.from_numpy(np.stack(batch))).argmax(1).tolist()
    return sum(p == labels.index(path.parent.name) for p, path in zip(predicted, paths, strict=True)) / len(paths)


def test_the_built_in_weights_script_runs_train_through_the_installed_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    # scripts/train_digits.py once imported a handler that no longer existed, and failed only when run: its one
    # `resnet-edge train` call goes through cli/entry.py, as the installed command does (signals, exit status).
    import importlib.util
    import sys

    import resnet_edge.cli.entry as entry

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("train_digits", root / "scripts" / "train_digits.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    seen: list[list[str]] = []
    monkeypatch.setattr(entry, "main", lambda: seen.append(list(sys.argv)) or 0)
    monkeypatch.setattr(sys, "argv", ["train_digits.py"])
    monkeypatch.chdir(root)
    with pytest.raises(SystemExit) as done:
        script.main()
    assert done.value.code == 0 and seen == [["resnet-edge", *script.TRAIN]]
