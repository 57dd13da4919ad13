"""Execution providers on one ResNet-50: onnxruntime FP32, our default INT8, the ``tune`` choice, and OpenVINO.

Times, each phase in a process of its own (so that no runtime's idle threads take cores from another), ResNet-50
at 224, batch 1, 2 threads:

1. ``ort-fp32``: onnxruntime FP32 on the CPU EP (the baseline of every ratio);
2. ``ort-int8``: resnet-edge's default INT8 (``quantize --target auto``) on the CPU EP;
3. ``tune``: the model and provider ``resnet-edge tune`` chose, on the provider it chose;
4. ``openvino-runtime``: the OpenVINO runtime itself (``openvino`` package, ``pip install '.[bench]'``) on the same
   INT8 file, the peer an Intel user would pick (``INFERENCE_NUM_THREADS`` 2, ``PERFORMANCE_HINT`` LATENCY);

plus CPU EP experiments on the INT8 file (``--experiments``): QOperator against QDQ, graph optimisation levels,
``session.qdqisint8allowed``; and, with ``--bundled-python PY``, onnxruntime's bundled OpenVINO EP
(``onnxruntime-openvino``, which cannot share an environment with ``onnxruntime``) run by that interpreter.

The whole sequence runs ``--repeats`` times (phase order reversed every other time); each repeat's ratios are
taken against that repeat's FP32, and the medians of the ratios are printed, with MACs per second against the
machine's int8 peak (cores x clock x int8 MACs per cycle per core). Models are built once into ``--workdir``.

    python benchmarks/providers.py [--workdir bench-providers] [--repeats 2] [--iterations 50] [--experiments]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PHASE_WARMUP = 10
INT8_MACS_PER_CYCLE = 128  # per core: two 512-bit VPDPBUSD per cycle, 64 u8 x s8 products each (Intel AVX-512 VNNI)


# --- a phase: one runtime, one model, in its own process -------------------------------------------------------------


def run_phase(args: argparse.Namespace) -> dict:
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    if args.phase == "openvino-runtime":
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(
            args.model, "CPU", {"INFERENCE_NUM_THREADS": str(args.threads), "PERFORMANCE_HINT": "LATENCY"}
        )
        request = compiled.create_infer_request()

        def call() -> object:
            return request.infer({0: x})

        where = f"openvino {ov.__version__} CPU"
    elif args.phase == "ort-raw":  # CPU EP experiments: session options the library does not expose
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        levels = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        options.graph_optimization_level = levels[args.opt_level]
        for entry in args.config:
            key, _, value = entry.partition("=")
            options.add_session_config_entry(key, value)
        session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def call() -> object:
            return session.run(None, {name: x})

        where = f"onnxruntime {ort.__version__} CPU, level {args.opt_level} {' '.join(args.config)}".strip()
    else:  # through resnet-edge's one way to open a session
        import onnxruntime as ort

        from resnet_edge.runtime import open_session, parse_provider

        session = open_session(args.model, parse_provider(args.provider), threads=args.threads)

        def call() -> object:
            return session.run(x)

        placement = session.placement.describe() if session.placement else "-"
        where = f"onnxruntime {ort.__version__} {session.ran_on} ({placement})"
    for _ in range(PHASE_WARMUP):
        call()
    times = []
    for _ in range(args.iterations):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {"median_ms": float(np.median(times)) * 1e3, "min_ms": float(np.min(times)) * 1e3, "where": where}


def phase_process(python: str, phase: str, model: Path, args: argparse.Namespace, **extra: object) -> dict:
    command = [python, __file__, "--phase", phase, "--model", str(model), "--threads", str(args.threads)]
    command += ["--iterations", str(args.iterations), "--size", str(args.size)]
    for key, value in extra.items():
        if isinstance(value, list):
            for item in value:
                command += [f"--{key.replace('_', '-')}", item]
        else:
            command += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- building the models once ---------------------------------------------------------------------------------------


def build(workdir: Path, args: argparse.Namespace) -> dict[str, Path]:
    from resnet_edge.export import ExportOptions, export_onnx
    from resnet_edge.quantize import QuantizeOptions, Target, quantize_onnx, resolve_config
    from resnet_edge.simplify import simplify_onnx
    from resnet_edge.tune import TuneOptions, tune_model

    workdir.mkdir(parents=True, exist_ok=True)
    files = {
        "fp32": workdir / "resnet50.sim.onnx",
        "int8": workdir / "resnet50.int8.onnx",
        "int8-qoperator": workdir / "resnet50.int8.qop.onnx",
        "tuned": workdir / "resnet50.tuned.onnx",
    }
    if not files["fp32"].exists():
        export_onnx(ExportOptions(arch="resnet50", input_size=args.size), workdir / "resnet50.onnx")
        simplify_onnx(workdir / "resnet50.onnx", files["fp32"])
    if not files["int8"].exists():
        quantize_onnx(files["fp32"], files["int8"], QuantizeOptions(limit=args.limit, measure_speed=False))
    if not files["int8-qoperator"].exists():
        from resnet_edge.quantize import Format

        config = resolve_config(Target.AUTO, format=Format.QOPERATOR)
        quantize_onnx(files["fp32"], files["int8-qoperator"], QuantizeOptions(config=config, limit=args.limit))
    if not files["tuned"].exists():
        options = TuneOptions(threads=args.threads, limit=args.limit, iterations=args.tune_rounds)
        tune_model(files["fp32"], files["tuned"], options)
    return files


def peak_macs_per_s(threads: int) -> tuple[float, str]:
    """Cores x clock x int8 MACs per cycle; the clock from /proc/cpuinfo."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = [float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    clock = (max(mhz) if mhz else 2500.0) * 1e6
    model = next((line.split(":")[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    note = f"{model}, {clock / 1e9:.2f} GHz, vnni {'avx512_vnni' in flags}, amx {'amx_int8' in flags}"
    return threads * clock * INT8_MACS_PER_CYCLE, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench-providers"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--limit", type=int, default=32, help="calibration images (speed does not depend on it)")
    parser.add_argument("--tune-rounds", type=int, default=20)
    parser.add_argument("--experiments", action="store_true", help="also time CPU EP options on the INT8 file")
    parser.add_argument("--bundled-python", help="an interpreter with onnxruntime-openvino, for its OpenVINO EP")
    parser.add_argument("--json", type=Path, help="write every number here")
    # a phase (internal)
    parser.add_argument("--phase")
    parser.add_argument("--model")
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--opt-level", default="all")
    parser.add_argument("--config", action="append", default=[])
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args)))
        return

    import onnx

    from resnet_edge.metadata import read_record
    from resnet_edge.onnx_graph import macs_per_image

    files = build(args.workdir, args)
    deployment = read_record(onnx.load(str(files["tuned"])), "deployment") or {"provider": "cpu", "name": "?"}
    macs = macs_per_image(onnx.load(str(files["fp32"])))
    phases: dict[str, tuple[str, str, Path, dict]] = {
        "ort-fp32 (CPU EP)": (sys.executable, "ort", files["fp32"], {"provider": "cpu"}),
        "ort-int8 default (CPU EP)": (sys.executable, "ort", files["int8"], {"provider": "cpu"}),
        f"tune choice ({deployment['name']} on {deployment['provider']})": (
            sys.executable,
            "ort",
            files["tuned"],
            {"provider": deployment["provider"]},
        ),
        "openvino runtime, same INT8 file": (sys.executable, "openvino-runtime", files["int8"], {}),
    }
    if args.bundled_python:
        phases["onnxruntime-openvino bundled EP, same INT8 file"] = (
            args.bundled_python,
            "ort",
            files["int8"],
            {"provider": "openvino"},
        )
    if args.experiments:
        for label, model, level, config in [
            ("int8 QDQ, level all (onnxruntime default)", files["int8"], "all", []),
            ("int8 QDQ, level extended (no NHWC layout transform)", files["int8"], "extended", []),
            ("int8 QDQ, level basic", files["int8"], "basic", []),
            ("int8 QDQ, qdqisint8allowed=1", files["int8"], "all", ["session.qdqisint8allowed=1"]),
            ("int8 QOperator, level all", files["int8-qoperator"], "all", []),
        ]:
            phases[f"experiment: {label}"] = (sys.executable, "ort-raw", model, {"opt_level": level, "config": config})

    names = list(phases)
    repeats: list[dict[str, dict]] = []
    for r in range(args.repeats):
        order = names if r % 2 == 0 else list(reversed(names))
        results = {}
        for name in order:
            python, phase, model, extra = phases[name]
            results[name] = phase_process(python, phase, model, args, **extra)
            print(f"  repeat {r + 1} {name}: {results[name]}", file=sys.stderr)
        repeats.append(results)

    baseline = names[0]
    peak, cpu_note = peak_macs_per_s(args.threads)
    print(f"ResNet-50 {args.size}x{args.size}, batch 1, {args.threads} threads, {args.repeats} repeats; {cpu_note}")
    print(f"{macs / 1e9:.2f} GMAC per image; int8 peak {peak / 1e9:.0f} GMAC/s = {macs / peak * 1e3:.2f} ms per image")
    print(f"{'phase':62} {'median ms':>10} {'x ort-fp32':>10} {'GMAC/s':>8} {'% peak':>7}")
    summary = {}
    for name in names:
        ms = [rep[name]["median_ms"] for rep in repeats if "median_ms" in rep[name]]
        ratios = [
            rep[baseline]["median_ms"] / rep[name]["median_ms"]
            for rep in repeats
            if "median_ms" in rep[name] and "median_ms" in rep[baseline]
        ]
        if not ms:
            errors = {rep[name].get("error") for rep in repeats}
            print(f"{name:62} failed: {'; '.join(e for e in errors if e)}")
            summary[name] = {"error": sorted(e for e in errors if e)}
            continue
        med, ratio = float(np.median(ms)), float(np.median(ratios))
        rate = macs / (med / 1e3)
        print(f"{name:62} {med:10.2f} {ratio:9.2f}x {rate / 1e9:8.0f} {100 * rate / peak:6.1f}%")
        summary[name] = {"median_ms": med, "ratio_median": ratio, "ratios": ratios, "where": repeats[0][name]["where"]}
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "repeats": repeats, "cpu": cpu_note}, indent=2) + "\n")


if __name__ == "__main__":
    main()
