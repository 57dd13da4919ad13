"""Which INT8 configuration is fast on this CPU? FP32 against six static-quantization variants, side by side.

Exports and simplifies a ResNet (resnet50 at 224 by default), quantizes it once per configuration from the bundled
photos, then times every file round-robin in one process (batch 1, spinning off, medians), so the ratios are
comparable on a noisy machine. The chosen default (``--target auto`` on this machine) is marked.

    python benchmarks/int8_configs.py [--arch resnet50] [--size 224] [--iterations 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from resnet_edge.conversion.export import export_onnx
from resnet_edge.conversion.options import ExportOptions
from resnet_edge.conversion.simplify import simplify_onnx
from resnet_edge.environment import cpu_info
from resnet_edge.evaluation.benchmark import benchmark_models
from resnet_edge.evaluation.options import BenchmarkOptions
from resnet_edge.quantization.configs import Format, Int8Recipe, Int8Target, detect_target, resolve_config
from resnet_edge.quantization.options import QuantizeOptions
from resnet_edge.quantization.quantize import quantize_onnx


def variants() -> dict[str, Int8Recipe]:
    def config(fmt: Format, act: str, per_channel: bool, reduce_range: bool, symmetric: bool, why: str) -> Int8Recipe:
        return Int8Recipe(Int8Target.AUTO, fmt, act, "int8", per_channel, reduce_range, symmetric, why)

    return {
        "ort-defaults (QDQ S8S8 per-tensor)": config(Format.QDQ, "int8", False, False, False, "onnxruntime defaults"),
        "QDQ S8S8 per-channel": config(Format.QDQ, "int8", True, False, False, "signed, per-channel"),
        "QDQ U8S8 per-tensor": config(Format.QDQ, "uint8", False, False, False, "unsigned activations"),
        "QDQ U8S8 per-channel": config(Format.QDQ, "uint8", True, False, False, "x86-vnni default"),
        "QDQ U8S8 per-channel reduce_range": config(Format.QDQ, "uint8", True, True, False, "x86-avx2 default"),
        "QOperator U8S8 per-tensor": config(Format.QOPERATOR, "uint8", False, False, False, "QOperator"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", default="1", help="comma-separated batch sizes, e.g. 1,8")
    parser.add_argument("--limit", type=int, default=32, help="calibration images (speed does not depend on it)")
    args = parser.parse_args()

    chosen = resolve_config(Int8Target.AUTO)
    cpu = cpu_info()
    print(f"CPU: {cpu.model}; features: {', '.join(k for k, v in cpu.features.items() if v)}")
    print(
        f"--target auto on this machine: {detect_target().value} -> {chosen.format.value},"
        f" activations {chosen.activation_type}, per-channel {chosen.per_channel}, reduce_range {chosen.reduce_range}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp, "fp32.onnx")
        export_onnx(None, fp32, ExportOptions(arch=args.arch, input_size=args.size))
        simplify_onnx(fp32, Path(tmp, "fp32.sim.onnx"))
        files = {"FP32 (simplified)": Path(tmp, "fp32.sim.onnx")}
        for index, (name, config) in enumerate(variants().items()):
            out = Path(tmp, f"int8_{index}.onnx")
            quantize_onnx(
                files["FP32 (simplified)"], out, QuantizeOptions(config=config, limit=args.limit, measure_speed=False)
            )
            files[name] = out
        result = benchmark_models(
            list(files.values()),
            BenchmarkOptions(
                batch_sizes=tuple(int(b) for b in args.batch.split(",")),
                threads=args.threads,
                iterations=args.iterations,
                warmup=5,
            ),
        )
    names = {str(path): name for name, path in files.items()}
    default_row = next(
        n
        for n, c in variants().items()
        if (c.format, c.activation_type, c.per_channel, c.reduce_range)
        == (chosen.format, chosen.activation_type, chosen.per_channel, chosen.reduce_range)
    )
    print(f"\n{args.arch} at {args.size}x{args.size}, {args.threads} threads, {args.iterations} rounds, round-robin")
    print(f"{'configuration':40} {'batch':>5} {'p50 ms':>8} {'p90 ms':>8} {'cv':>5} {'vs FP32':>8}")
    for row in result.rows:
        label = names[row.path]
        mark = "  <- default" if label == default_row else ""
        print(
            f"{label:40} {row.batch:5d} {row.latency.p50_ms:8.2f} {row.latency.p90_ms:8.2f} {row.latency.cv:5.2f}"
            f" {row.speedup:7.2f}x{mark}"
        )


if __name__ == "__main__":
    main()
