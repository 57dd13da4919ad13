"""Calibration side by side: resnet-edge, onnxruntime's plain ``quantize_static`` and NNCF, on one model and images.

Each run is a process of its own, timed from start to exit (imports included), its peak memory the peak resident set
size the kernel reports for it (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` in a small launcher process: the largest of
the process and its children). Runners:

1. ``resnet-edge``: ``resnet-edge quantize MODEL --calib IMAGES --method minmax --no-speed`` (the CLI, as a user runs
   it): calibration on 3 of every 4 images, its INT8 check on the 4th (the held-out images), the record.
2. ``onnxruntime``: ``quant_pre_process`` then ``quantize_static`` with a ``CalibrationDataReader`` giving one image per
   call (as onnxruntime's ResNet-50 example does), MinMax, resnet-edge's recipe (U8S8 per-channel QDQ), no INT8 check.
3. ``nncf``: ``nncf.quantize(onnx_model, nncf.Dataset(paths, transform), subset_size=N)`` with its defaults
   (statistics, then fast bias correction), images decoded in the transform; ``pip install '.[bench]'``.

All three decode and preprocess the same calibration images through resnet-edge's image source and preprocessing
(the model's own; the onnxruntime runner through resnet-edge's ``ImageCalibrationReader``), so the comparison is of
what each does with them. The runs go round-robin, ``--repeats`` times (default 2: A B C A B C),
and the load average is recorded with each.

The model is ResNet-50 with random weights (no download here); ``--short`` uses resnet20 at 32 px and 24 images, for
the test suite. The images are JPEGs made from the bundled photos (55, 160 px): random crops (60-100% of each side),
mirrored half the time, brightness and saturation jittered by up to 30%, resized to 500x375 (ImageNet's typical
size), seeded. ``--images 300`` gives resnet-edge 225 to calibrate on and 75 to check; the other two get the same
225.

    python benchmarks/calibration.py [--workdir bench-calibration] [--images 300] [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HELD_OUT_EVERY = 4  # resnet-edge's rule for one source: every 4th image is held out (quantization.calibrate)
IMAGE_SIZE = (500, 375)
RUNNERS = ("resnet-edge", "onnxruntime", "nncf")


# --- what each run does, in its own process ------------------------------------------------------------------------


def run_onnxruntime(model: Path, source: object, indices: list[int], output: Path, work: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from resnet_edge.calibration.calibration_reader import ImageCalibrationReader
    from resnet_edge.onnx.metadata import preprocessing_for

    header = onnx.load(str(model), load_external_data=False)
    spec, input_name = preprocessing_for(header), header.graph.input[0].name
    del header
    prepped = work / "prepped.onnx"
    quant_pre_process(str(model), str(prepped))
    quantize_static(
        str(prepped),
        str(output),
        ImageCalibrationReader(source, spec, indices, input_name=input_name, batch_size=1),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def run_nncf(model: Path, source: object, indices: list[int], output: Path) -> None:
    import nncf
    import onnx

    from resnet_edge.onnx.metadata import preprocessing_for

    proto = onnx.load(str(model))
    spec, input_name = preprocessing_for(proto), proto.graph.input[0].name
    dataset = nncf.Dataset(indices, lambda index: {input_name: source.load(index, spec).tensor[None]})
    quantized = nncf.quantize(proto, dataset, subset_size=len(indices))
    onnx.save(quantized, str(output))


def run_phase(args: argparse.Namespace) -> None:
    from resnet_edge.calibration.sources import FolderSource

    source = FolderSource(args.images_dir)
    # The images resnet-edge calibrates on when it holds every 4th out: the same for every runner.
    indices = [i for i in range(len(source)) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    output, work = Path(args.output), Path(args.output).parent
    if args.phase == "onnxruntime":
        run_onnxruntime(Path(args.model), source, indices, output, work)
    elif args.phase == "nncf":
        run_nncf(Path(args.model), source, indices, output)
    else:
        raise SystemExit(f"unknown phase {args.phase}")


# --- building the model and images once -----------------------------------------------------------------------------


def build_model(workdir: Path, arch: str, size: int) -> Path:
    from resnet_edge.conversion.export import export_onnx
    from resnet_edge.conversion.options import ExportOptions
    from resnet_edge.conversion.simplify import simplify_onnx

    path = workdir / f"{arch}-{size}.sim.onnx"
    if not path.exists():
        import torch

        torch.manual_seed(0)
        export_onnx(None, workdir / f"{arch}-{size}.onnx", ExportOptions(arch=arch, input_size=size))
        simplify_onnx(workdir / f"{arch}-{size}.onnx", path)
    return path


def build_images(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` JPEGs of 500x375 from the bundled photos: random crops, mirrored, brightness and colour jittered."""
    import numpy as np
    from PIL import Image, ImageEnhance, ImageOps

    from resnet_edge.calibration.sources import PHOTOS_DIR

    if folder.exists() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    photos = sorted(p for p in PHOTOS_DIR.iterdir() if p.suffix in (".jpg", ".png"))
    rng = np.random.default_rng(seed)
    for i in range(count):
        with Image.open(photos[i % len(photos)]) as source:
            image = source.convert("RGB")
        width, height = image.size
        scale = rng.uniform(0.6, 1.0)
        w, h = int(width * scale), int(height * scale)
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        image = image.crop((x, y, x + w, y + h)).resize(IMAGE_SIZE, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
        image = ImageEnhance.Color(image).enhance(rng.uniform(0.7, 1.3))
        image.save(folder / f"img_{i:04d}.jpg", quality=90)
    return folder


# --- running and measuring ------------------------------------------------------------------------------------------


# Runs a command and reports its peak RSS. A process of its own, small: Linux carries a process's peak RSS across
# exec, so a child forked straight from this (large) process would report this one's size as its own peak.
_LAUNCHER = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
tail = (done.stdout.strip().splitlines() or ["failed"])[-1][:300]
print(json.dumps({"rc": done.returncode, "kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "tail": tail}))
"""


def measure(command: list[str], env: dict[str, str]) -> dict:
    """Wall time and peak RSS of one process (and its children), run to the end."""
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, *command], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"wall_s": wall, "peak_rss_mb": 0.0, "load_1min": load, "error": done.stderr.strip()[-300:]}
    launched = json.loads(done.stdout.strip().splitlines()[-1])
    result = {"wall_s": wall, "peak_rss_mb": launched["kb"] / 1024, "load_1min": load}
    if launched["rc"] != 0:
        result["error"] = launched["tail"]
    return result


def command_for(runner: str, model: Path, images: Path, output: Path) -> list[str]:
    if runner == "resnet-edge":
        cli = Path(sys.executable).with_name("resnet-edge")
        base = [str(cli)] if cli.exists() else [sys.executable, "-m", "resnet_edge.cli.entry"]
        return [
            *base,
            "-q",
            "quantize",
            str(model),
            "-o",
            str(output),
            "--calib",
            str(images),
            "--method",
            "minmax",
            "--no-speed",
        ]
    return [
        sys.executable,
        __file__,
        "--phase",
        runner,
        "--model",
        str(model),
        "--images-dir",
        str(images),
        "--output",
        str(output),
    ]


def available(runner: str) -> str | None:
    """Why ``runner`` cannot run here, or None."""
    if runner == "nncf":
        import importlib.util

        if importlib.util.find_spec("nncf") is None:
            return "nncf not installed (pip install '.[bench]')"
    return None


def run_all(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    arch, size, count = ("resnet20", 32, 24) if args.short else ("resnet50", 224, args.images)
    model = build_model(workdir, arch, size)
    images = build_images(workdir / f"images-{count}", count)
    calibrated = sum(1 for i in range(count) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    runs: dict[str, list[dict]] = {runner: [] for runner in RUNNERS}
    skipped = {runner: why for runner in RUNNERS if (why := available(runner))}
    for repeat in range(args.repeats):
        for runner in RUNNERS:
            if runner in skipped:
                continue
            output = workdir / f"{runner}-{repeat}.int8.onnx"
            for stale in (output, Path(f"{output}.json")):
                stale.unlink(missing_ok=True)  # the benchmark's own files from an earlier run
            result = measure(command_for(runner, model, images, output), env)
            result["wrote"] = output.exists()
            runs[runner].append(result)
            print(
                f"{runner:12s} run {repeat + 1}: {result['wall_s']:6.1f} s, {result['peak_rss_mb']:7.0f} MiB,"
                f" load {result['load_1min']:.2f}{'  ' + result['error'] if 'error' in result else ''}",
                file=sys.stderr,
            )
    return {
        "model": f"{arch} at {size}x{size}, random weights",
        "images": count,
        "calibration_images": calibrated,
        "held_out_images": count - calibrated,
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "skipped": skipped,
    }


def table(report: dict) -> str:
    calibrated, held_out = report["calibration_images"], report["held_out_images"]
    labels = {
        "resnet-edge": f"`resnet-edge quantize --method minmax --no-speed` (+ its {held_out}-image held-out check)",
        "onnxruntime": "onnxruntime `quant_pre_process` + `quantize_static` (MinMax, one image per call)",
        "nncf": "NNCF `nncf.quantize` (statistics + fast bias correction, preprocessing included)",
    }
    lines = [
        f"| quantizing {report['model']} on the same {calibrated} calibration images | wall | peak memory |",
        "|---|---|---|",
    ]
    for runner, runs in report["runs"].items():
        if runner in report["skipped"]:
            lines.append(f"| {labels[runner]} | {report['skipped'][runner]} | |")
            continue
        failed = [r["error"] for r in runs if "error" in r]
        if failed:
            lines.append(f"| {labels[runner]} | failed: {failed[0]} | |")
            continue
        walls = ", ".join(f"{r['wall_s']:.1f} s" for r in runs)
        rate = calibrated / min(r["wall_s"] for r in runs)
        peak = max(r["peak_rss_mb"] for r in runs)
        lines.append(f"| {labels[runner]} | {walls} ({rate:.0f} img/s) | {peak / 1024:.2f} GiB |")
    loads = [r["load_1min"] for runs in report["runs"].values() for r in runs]
    if loads:
        lines.append(f"\n1-minute load average during the runs: {min(loads):.2f} to {max(loads):.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="bench-calibration")
    parser.add_argument("--images", type=int, default=300, help="images made; 3 of 4 calibrate, 1 of 4 is held out")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--short", action="store_true", help="resnet20 at 32 px and 24 images, for the tests")
    parser.add_argument("--json", type=Path, help="write every number here")
    # a phase (internal)
    parser.add_argument("--phase")
    parser.add_argument("--model")
    parser.add_argument("--images-dir")
    parser.add_argument("--output")
    args = parser.parse_args()
    if args.phase:
        run_phase(args)
        return
    report = run_all(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table(report))


if __name__ == "__main__":
    main()
