"""Accuracy recovery, measured: strict-integer NPU INT8 and 4-bit weights, with and without each algorithm.

Two trained models: the built-in digits resnet20 (too easy to show much) and a resnet20 trained here on
Fashion-MNIST (harder: per-tensor and 4-bit weights cost accuracy on it). For each, ``resnet-edge quantize``'s
library call runs once per configuration, and ``resnet-edge train --qat``'s (W4A8, from the model's
checkpoint); every recovery step is judged before and after on the held-out test split (the calibration
record's ``accuracy_recovery``), so one run prints the whole ladder. Then ResNet-50 (random
weights: time and memory do not depend on them) with 256 calibration images, augmented crops of the bundled photos,
each algorithm in its own process for its peak memory.

    nice -n 10 python benchmarks/accuracy_recovery.py                   # everything (about an hour on 2 cores)
    python benchmarks/accuracy_recovery.py --short                      # digits, few configurations (the slow test)
    python benchmarks/accuracy_recovery.py --configs recovery --no-resnet50 --no-latency   # the issue's bars + QAT
    python benchmarks/accuracy_recovery.py --models fashion --no-resnet50 --json out.json

The Fashion-MNIST checkpoint is trained once (:func:`train_fashion`, a few minutes) and cached outside the
repository (``--cache``, default ``~/.cache/resnet-edge/benchmarks``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from resnet_edge.calibration.preprocess import ChannelOrder, PreprocessSpec, preprocess_uint8
from resnet_edge.calibration.sources import FASHION_MNIST_CLASSES, open_source
from resnet_edge.conversion.export import export_onnx
from resnet_edge.conversion.options import ExportOptions
from resnet_edge.conversion.simplify import simplify_onnx
from resnet_edge.quantization.options import QuantizeOptions
from resnet_edge.quantization.quantize import quantize_onnx
from resnet_edge.schema import write_document

FASHION_TRAIN_IMAGES = 12_000  # as MEASURED.md's Fashion-MNIST model: 6 epochs on 12,000 images reached 89.65%
FASHION_EPOCHS = 6
FASHION_SEED = 0
FASHION_CALIBRATION = 1000  # calibration images drawn from the training split
DIGITS_CALIBRATION = None  # the digits model's own 200-image calibration split
QAT_DIGITS_CALIBRATION = 200  # QAT on digits: ranges from its calibration split, all 200 images


# --- the one place to switch to the library's training function once `resnet-edge train` lands -----------------


def train_fashion(checkpoint: Path) -> dict:
    """Train a resnet20 on Fashion-MNIST (28x28 grey, one channel) and save it as safetensors with its metadata.

    The training loop of scripts/train_digits.py (SGD, one-cycle, random shifts), on the first FASHION_TRAIN_IMAGES
    training images. Replace with the library's train function when it exists.
    """
    import torch
    from safetensors.torch import save_file
    from torch import nn

    from resnet_edge.models.resnet import create_model

    torch.manual_seed(FASHION_SEED)
    train = open_source("builtin:fashion-mnist-train")
    test = open_source("builtin:fashion-mnist-test")
    raw = PreprocessSpec(resize=28, crop=28, mean=(0.0,), std=(1.0,), channel_order=ChannelOrder.GRAY)
    rows = np.random.default_rng(FASHION_SEED).permutation(len(train))[:FASHION_TRAIN_IMAGES]
    x = torch.from_numpy(np.stack([preprocess_uint8(train.images[r], raw) for r in rows]))
    mean, std = round(float(x.mean()), 4), round(float(x.std()), 4)
    spec = PreprocessSpec(resize=28, crop=28, mean=(mean,), std=(std,), channel_order=ChannelOrder.GRAY)
    x = (x - mean) / std
    y = torch.from_numpy(train._labels[rows].astype(np.int64))
    x_test = torch.from_numpy(np.stack([preprocess_uint8(image, spec) for image in test.images]))
    y_test = torch.from_numpy(test._labels.astype(np.int64))

    model = create_model("resnet20", num_classes=10, in_chans=1)
    batch, lr = 128, 0.1
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = -(-len(x) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, epochs=FASHION_EPOCHS, steps_per_epoch=steps)
    generator = torch.Generator().manual_seed(FASHION_SEED)
    loss_fn = nn.CrossEntropyLoss()
    started = time.perf_counter()
    for epoch in range(FASHION_EPOCHS):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            index = order[start : start + batch]
            shifted = torch.roll(
                x[index], shifts=tuple(torch.randint(-2, 3, (2,), generator=generator).tolist()), dims=(2, 3)
            )
            loss = loss_fn(model(shifted), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"  fashion epoch {epoch + 1}/{FASHION_EPOCHS}, loss {loss.item():.3f}", file=sys.stderr)
    model.eval()
    with torch.no_grad():
        accuracy = float(
            torch.cat([model(x_test[i : i + 500]).argmax(1) for i in range(0, len(x_test), 500)])
            .eq(y_test)
            .float()
            .mean()
        )
    metadata = {
        "arch": "resnet20",
        "variant": "residual",
        "dataset": "fashion-mnist",
        "preprocessing": spec.to_json(),
        "labels": json.dumps(list(FASHION_MNIST_CLASSES)),
        "test_accuracy": f"{accuracy:.4f}",
        "epochs": str(FASHION_EPOCHS),
        "train_images": str(FASHION_TRAIN_IMAGES),
        "seed": str(FASHION_SEED),
        "trained_by": "benchmarks/accuracy_recovery.py train_fashion",
    }
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint), metadata=metadata)
    return {"test_accuracy": accuracy, "seconds": time.perf_counter() - started}


# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    name: str
    path: Path  # the simplified FP32 model
    calib: str | None
    eval_data: str | None
    limit: int | None
    checkpoint: str = ""  # what QAT fine-tunes
    train_data: str = ""  # what QAT fine-tunes on
    train_limit: int | None = None
    qat_calib: str | None = None  # the images QAT observes its ranges on and the export calibrates on


def digits_model(folder: Path) -> Model:
    exported, simplified = folder / "digits.onnx", folder / "digits.sim.onnx"
    export_onnx("builtin:digits-resnet20", exported)
    simplify_onnx(exported, simplified)
    return Model(
        "digits",
        simplified,
        None,
        None,
        DIGITS_CALIBRATION,
        checkpoint="builtin:digits-resnet20",
        train_data="builtin:digits-train",
        qat_calib="builtin:digits-calib",
    )


def fashion_model(folder: Path, cache: Path) -> Model:
    checkpoint = cache / f"fashion_resnet20_{FASHION_TRAIN_IMAGES}x{FASHION_EPOCHS}_seed{FASHION_SEED}.safetensors"
    if not checkpoint.exists():
        print(f"training the Fashion-MNIST resnet20 (cached at {checkpoint})", file=sys.stderr)
        print(f"  {train_fashion(checkpoint)}", file=sys.stderr)
    exported, simplified = folder / "fashion.onnx", folder / "fashion.sim.onnx"
    export_onnx(checkpoint, exported)
    simplify_onnx(exported, simplified)
    return Model(
        "fashion",
        simplified,
        "builtin:fashion-mnist-train",
        "builtin:fashion-mnist-test",
        FASHION_CALIBRATION,
        checkpoint=str(checkpoint),
        train_data="builtin:fashion-mnist-train",
        train_limit=FASHION_TRAIN_IMAGES,
        qat_calib="builtin:fashion-mnist-train",
    )


# Each configuration: a name and the quantize options beyond the model's data.
FULL_CONFIGS: list[tuple[str, dict]] = [
    ("x86-vnni (default)", {}),
    ("x86-vnni + bias correction", {"bias_correction": True}),
    ("npu-int8 plain", {"target": "npu-int8", "equalize": False, "bias_correction": False}),
    ("npu-int8 + bias correction", {"target": "npu-int8", "equalize": False, "bias_correction": True}),
    ("npu-int8 + equalize + bias correction (default)", {"target": "npu-int8"}),
    ("npu-int8 default, power-of-two scales", {"target": "npu-int8", "power_of_two": True}),
    ("W4 per-channel, round to nearest", {"weight_bits": 4, "bias_correction": False}),
    ("W4 per-channel + bias correction (default)", {"weight_bits": 4}),
    ("W4 per-channel + AdaRound (default)", {"weight_bits": 4, "adaround": True}),
    ("W4 per-channel + AdaRound + bias correction", {"weight_bits": 4, "adaround": True, "bias_correction": True}),
    ("W4 blocks of 16, round to nearest", {"weight_bits": 4, "weight_block": 16, "bias_correction": False}),
    (
        "W4 blocks of 16 + AdaRound + bias correction",
        {"weight_bits": 4, "weight_block": 16, "adaround": True, "bias_correction": True},
    ),
]
# The comparisons only: npu-int8 with and without its recovery steps, W4 rounded to nearest and by AdaRound.
RECOVERY_CONFIGS: list[tuple[str, dict]] = [
    ("npu-int8 plain", {"target": "npu-int8", "equalize": False, "bias_correction": False}),
    ("npu-int8 + equalize + bias correction (default)", {"target": "npu-int8"}),
    ("W4 per-channel, round to nearest", {"weight_bits": 4, "bias_correction": False}),
    ("W4 per-channel + AdaRound (default)", {"weight_bits": 4, "adaround": True}),
]
SHORT_CONFIGS: list[tuple[str, dict]] = [
    ("npu-int8 + equalize + bias correction (default)", {"target": "npu-int8"}),
    ("W4 per-channel + AdaRound, 30 steps", {"weight_bits": 4, "adaround": True, "adaround_iterations": 30}),
]


def accuracy_table(model: Model, folder: Path, configs: list[tuple[str, dict]]) -> list[dict]:
    """Quantize ``model`` once per configuration; one row per configuration with every step's judgement."""
    rows = []
    for k, (name, extra) in enumerate(configs):
        options = QuantizeOptions(
            calib=model.calib,
            eval_data=model.eval_data,
            limit=model.limit,
            measure_speed=False,
            allow_accuracy_drop=True,
            **extra,
        )
        out = folder / f"{model.name}.{k}.onnx"
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = quantize_onnx(model.path, out, options)
        rows.append(
            {
                "model": model.name,
                "config": name,
                "options": extra,
                "fp32_top1": result.fp32_accuracy.top1 if result.fp32_accuracy else None,
                "top1": result.int8_accuracy.top1 if result.int8_accuracy else None,
                "drop_points": result.top1_drop_points,
                "agreement": result.parity.top1_agreement,
                "kl": result.parity.kl_divergence,
                "images": result.evaluation_images,
                "bytes": result.bytes_after,
                "fp32_bytes": result.bytes_before,
                # The file also holds the calibration record (a hash per calibration image): the weights alone.
                "initializer_bytes": sum(len(i.SerializeToString()) for i in onnx.load(str(out)).graph.initializer),
                "path": str(out),
                "seconds": round(time.perf_counter() - started, 1),
                "integer": result.coverage.describe() if result.coverage else None,
                "steps": [write_document(step) for step in result.recovery],  # as the record keeps them
                "weights": None if result.weight_grid is None else write_document(result.weight_grid),
            }
        )
        print_row(rows[-1])
    return rows


# --- quantization-aware training ----------------------------------------------------------------------------------

QAT_EPOCHS = 3
# QAT configurations: the train options beyond the model's data. W4A8 per channel is the bar (0.5 points).
QAT_CONFIGS: list[tuple[str, dict]] = [
    (f"QAT W4A8 per-channel, {QAT_EPOCHS} epochs", {"weight_bits": 4}),
]
SHORT_QAT_CONFIGS: list[tuple[str, dict]] = [("QAT W4A8 per-channel, 1 epoch", {"weight_bits": 4, "epochs": 1})]


def qat_table(model: Model, folder: Path, configs: list[tuple[str, dict]], fp32_top1: float | None) -> list[dict]:
    """``resnet-edge train --qat``'s library call once per configuration, from the model's checkpoint; top-1 of the
    QDQ file on the held-out split against the original FP32 model's (``fp32_top1``, from the quantize rows)."""
    from resnet_edge.conversion.qat import qat_onnx
    from resnet_edge.training.options import TrainOptions

    rows = []
    for k, (name, extra) in enumerate(configs):
        options = TrainOptions(
            qat=True,
            weights=Path(model.checkpoint) if not model.checkpoint.startswith("builtin:") else model.checkpoint,
            limit=model.train_limit,
            val=model.eval_data,
            calib=model.qat_calib,
            calib_limit=model.limit or QAT_DIGITS_CALIBRATION,
            augment="crop",  # both models were trained with shifts and no flips
            pad=2,
            threads=1,
            **{"epochs": QAT_EPOCHS, **extra},
        )
        out = folder / f"{model.name}.qat{k}.onnx"
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = qat_onnx(model.train_data, out, options)
        quantized, qat = result.quantize, result.qat
        top1 = quantized.int8_accuracy.top1 if quantized.int8_accuracy else None
        rows.append(
            {
                "model": model.name,
                "config": name,
                "options": extra,
                "fp32_top1": fp32_top1,
                "top1": top1,
                "drop_points": None if top1 is None or fp32_top1 is None else 100 * (fp32_top1 - top1),
                "agreement_with_own_fp32_export": quantized.parity.top1_agreement,
                "fake_quant_val_before": qat.before_val_accuracy,
                "fake_quant_val_per_epoch": [m.val_accuracy for m in qat.train.history],
                "grid_mismatches": qat.grid_mismatches,
                "images": quantized.evaluation_images,
                "bytes": quantized.bytes_after,
                "path": str(out),
                "seconds": round(time.perf_counter() - started, 1),
                "train_seconds": round(sum(m.seconds for m in qat.train.history), 1),
            }
        )
        row = rows[-1]
        print(
            f"{model.name:8} {name:50} top-1 {100 * top1:.2f}% (FP32 {100 * (fp32_top1 or 0):.2f}%, drop"
            f" {row['drop_points']:+.2f} pts), fake-quantized before QAT {100 * (qat.before_val_accuracy or 0):.2f}%,"
            f" per epoch {[round(100 * (a or 0), 2) for a in row['fake_quant_val_per_epoch']]}, agreement with its own"
            f" FP32 export {100 * quantized.parity.top1_agreement:.2f}%, weights moved by the export"
            f" {qat.grid_mismatches}, {row['bytes'] / 1024:.0f} KiB, {row['seconds']:.0f} s",
            flush=True,
        )
    return rows


def print_row(row: dict) -> None:
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    kl = lambda v: "-" if v is None else f"{v:.2e}"  # noqa: E731
    print(
        f"{row['model']:8} {row['config']:50} top-1 {pct(row['top1'])} (FP32 {pct(row['fp32_top1'])}, drop"
        f" {row['drop_points']:+.2f} pts), agreement {pct(row['agreement'])}, KL {kl(row['kl'])},"
        f" {row['bytes'] / 1024:.0f} KiB,"
        f" {row['seconds']:.0f} s",
        flush=True,
    )
    for step in row["steps"]:
        before, after = step["before"] or {}, step["after"] or {}
        print(
            f"{'':10}{step['step']:16} top-1 {pct(before.get('top1'))} -> {pct(after.get('top1'))}, agreement"
            f" {pct(before.get('top1_agreement'))} -> {pct(after.get('top1_agreement'))}, KL"
            f" {kl(before.get('kl'))} -> {kl(after.get('kl'))}, {step['seconds']:.1f} s",
            flush=True,
        )


# --- ResNet-50: time and memory of each algorithm ----------------------------------------------------------------

RESNET50_CONFIGS: list[tuple[str, dict]] = [
    ("x86-vnni, no recovery", {}),
    ("npu-int8 plain", {"target": "npu-int8", "equalize": False, "bias_correction": False}),
    ("npu-int8 + equalize", {"target": "npu-int8", "bias_correction": False}),
    ("npu-int8 + bias correction", {"target": "npu-int8", "equalize": False}),
    ("W4 per-channel, round to nearest", {"weight_bits": 4, "bias_correction": False}),
    ("W4 per-channel + AdaRound, 600 s budget", {"weight_bits": 4, "adaround": True, "adaround_seconds": 600}),
]


def photos_256(path: Path, size: int = 256, count: int = 256, seed: int = 0) -> Path:
    """256 calibration images from the bundled photos: random crops (60-100% of the side) and flips, as uint8."""
    from PIL import Image

    from resnet_edge.calibration.sources import PHOTOS_DIR

    rng = np.random.default_rng(seed)
    files = sorted(p for p in PHOTOS_DIR.iterdir() if p.suffix in (".jpg", ".png"))
    images = []
    for k in range(count):
        image = Image.open(files[k % len(files)]).convert("RGB")
        side = int(min(image.size) * rng.uniform(0.6, 1.0))
        left = rng.integers(0, image.size[0] - side + 1)
        top = rng.integers(0, image.size[1] - side + 1)
        crop = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)
        array = np.asarray(crop, dtype=np.uint8)
        images.append(array[:, ::-1] if rng.random() < 0.5 else array)
    np.savez(path, images=np.stack(images))
    return path


_CHILD = """
import json, sys, time, warnings
from pathlib import Path
from resnet_edge.quantization.options import QuantizeOptions
from resnet_edge.quantization.quantize import quantize_onnx
from resnet_edge.schema import write_document

warnings.simplefilter("ignore")
args = json.loads(sys.argv[1])
marks = {}


def peak_mb():
    status = Path("/proc/self/status").read_text()
    return int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1]) / 1024


def progress(event):
    # The recovery's own peak: the kernel's high-water mark is reset when it starts reading layer inputs.
    if event.step == "reading layer inputs" and "recovery" not in marks:
        marks["recovery"] = time.perf_counter()
        marks["before_recovery_peak_mb"] = peak_mb()
        Path("/proc/self/clear_refs").write_text("5")


t = time.perf_counter()
r = quantize_onnx(args["model"], args["out"], QuantizeOptions(calib=args["calib"], measure_speed=False,
                  allow_accuracy_drop=True, judge_steps=False, **args["extra"]), on_progress=progress)
adaround = next((s.details for s in r.recovery if s.name == "adaround"), None)
print(json.dumps({
    "seconds": time.perf_counter() - t,
    "bytes": r.bytes_after,
    "steps": {s.name: round(s.seconds, 3) for s in r.recovery},
    "reading_s": None if r.recovery_reading_seconds is None else round(r.recovery_reading_seconds, 3),
    # Resetting the high-water mark resets ru_maxrss too: the process's peak is the larger of the two parts.
    "peak_rss_mb": max(marks.get("before_recovery_peak_mb", 0), peak_mb()),
    "recovery_peak_rss_mb": peak_mb() if "recovery" in marks else None,
    "adaround": None if adaround is None else {
        k: getattr(adaround, k) for k in ("rows_per_layer", "rows_bytes", "steps_min", "steps_total")
    },
}))
"""


def resnet50_row(model: Path, calib: Path, name: str, extra: dict) -> dict:
    """One configuration in a child process: wall time, the steps' own times from the record, the process's peak
    RSS, and the peak RSS from the moment the recovery starts reading layer inputs (the kernel's high-water mark,
    reset then)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = {"model": str(model), "out": str(Path(tmp, "q.onnx")), "calib": str(calib), "extra": extra}
        load = os.getloadavg()[0]
        done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True)
    if done.returncode != 0:
        return {"config": name, "error": done.stderr.strip().splitlines()[-1]}
    row = {"config": name, "options": extra, "load": load, **json.loads(done.stdout.strip().splitlines()[-1])}
    print(
        f"resnet50 {name:42} {row['seconds']:7.1f} s (load {load:.1f}), peak RSS {row['peak_rss_mb']:6.0f} MB"
        f" (recovery's own {row['recovery_peak_rss_mb']} MB), steps {row['steps']}, reading inputs"
        f" {row['reading_s']} s, {row['bytes'] / 2**20:.1f} MiB, AdaRound {row['adaround']}",
        flush=True,
    )
    return row


def resnet50_table(folder: Path) -> list[dict]:
    exported, simplified = folder / "resnet50.onnx", folder / "resnet50.sim.onnx"
    import torch

    torch.manual_seed(0)
    export_onnx(None, exported, ExportOptions(arch="resnet50"))
    simplify_onnx(exported, simplified)
    calib = photos_256(folder / "photos256.npz")
    return [resnet50_row(simplified, calib, name, extra) for name, extra in RESNET50_CONFIGS]


LATENCY_ROUNDS = 50


def latency_table(model: Model, rows: list[dict]) -> list[dict]:
    """Batch-1 CPU latency of FP32 and of every quantized model, interleaved in one run (medians)."""
    from resnet_edge.calibration.sources import default_test_images
    from resnet_edge.onnx.metadata import preprocessing_for, read_metadata
    from resnet_edge.quantization.evaluate import median_latencies_ms

    fp32 = onnx.load(str(model.path))
    image = open_source(model.eval_data or default_test_images(read_metadata(fp32).dataset))
    tensor = image.load(0, preprocessing_for(fp32)).tensor
    models = [fp32, *(onnx.load(row["path"]) for row in rows)]
    medians, threads = median_latencies_ms(models, tensor, iterations=LATENCY_ROUNDS)
    found = [{"model": model.name, "config": "FP32", "p50_ms": medians[0], "vs_fp32": 1.0, "threads": threads}]
    for row, p50 in zip(rows, medians[1:], strict=True):
        found.append(
            {
                "model": model.name,
                "config": row["config"],
                "p50_ms": p50,
                "vs_fp32": medians[0] / p50,
                "threads": threads,
            }
        )
        print(f"{model.name:8} latency {row['config']:50} p50 {p50:.2f} ms, {medians[0] / p50:.2f}x FP32", flush=True)
    return found


SWEEP_ITERATIONS = (250, 500, 1000, 2000, 4000)


def iteration_sweep(model: Model, folder: Path) -> list[dict]:
    """W4 + AdaRound at several step counts: the evidence for ADAROUND_ITERATIONS."""
    configs = [
        (f"W4 per-channel + AdaRound, {n} steps", {"weight_bits": 4, "adaround": True, "adaround_iterations": n})
        for n in SWEEP_ITERATIONS
    ]
    return accuracy_table(model, folder, configs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="digits only, two configurations (the slow test)")
    parser.add_argument("--models", default="digits,fashion", help="comma-separated: digits, fashion")
    parser.add_argument("--no-resnet50", action="store_true", help="skip the ResNet-50 time and memory table")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "resnet-edge" / "benchmarks")
    parser.add_argument("--json", type=Path, help="also write every row to this file")
    parser.add_argument("--sweep", action="store_true", help="only AdaRound's step counts, on --models")
    parser.add_argument(
        "--configs", choices=("full", "recovery"), default="full", help="recovery: only the issue's comparisons"
    )
    parser.add_argument("--no-qat", action="store_true", help="skip quantization-aware training")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency table")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)", flush=True)
    found: dict = {"load_at_start": load}
    with tempfile.TemporaryDirectory(prefix="accuracy-recovery-") as tmp:
        folder = Path(tmp)
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        builders = {"digits": lambda: digits_model(folder), "fashion": lambda: fashion_model(folder, args.cache)}
        if args.short:
            digits = digits_model(folder)
            found["accuracy"] = accuracy_table(digits, folder, SHORT_CONFIGS)
            found["qat"] = qat_table(digits, folder, SHORT_QAT_CONFIGS, found["accuracy"][0]["fp32_top1"])
        elif args.sweep:
            found["sweep"] = [row for m in models for row in iteration_sweep(builders[m](), folder)]
        else:
            found["accuracy"], found["latency"], found["qat"] = [], [], []
            configs = FULL_CONFIGS if args.configs == "full" else RECOVERY_CONFIGS
            for name in models:
                model = builders[name]()
                rows = accuracy_table(model, folder, configs)
                found["accuracy"] += rows
                if not args.no_qat:
                    found["qat"] += qat_table(model, folder, QAT_CONFIGS, rows[0]["fp32_top1"])
                if not args.no_latency:
                    found["latency"] += latency_table(model, rows)
            if not args.no_resnet50:
                found["resnet50"] = resnet50_table(folder)
    found["load_at_end"] = os.getloadavg()
    found["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        args.json.write_text(json.dumps(found, indent=2, default=str) + "\n", encoding="utf-8")
    return found


if __name__ == "__main__":
    main()
