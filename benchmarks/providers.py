"""Execution providers on one ResNet-50: onnxruntime FP32, our default INT8, the ``tune`` choice, and OpenVINO.

Times, each phase in a process of its own (so that no runtime's idle threads take cores from another), each with
its threading as deployed, ResNet-50 at 224 with random weights (no download here; speed does not depend on the
weights, and tune judges a random model's INT8 by logit error), batch 1, 2 threads:

1. ``ort-fp32``: onnxruntime FP32 on the CPU EP, its default threading (spinning on): the baseline of every ratio;
2. ``ort-int8``: resnet-edge's default INT8 (``quantize --target auto``) on the CPU EP, spinning on, and the same
   with spinning off (how tune and benchmark timed before issue 24);
3. ``tune``: the model, provider and session settings ``resnet-edge tune`` chose (its deployment record), as deployed;
4. ``openvino-runtime``: the OpenVINO runtime itself (``openvino`` package, ``pip install '.[openvino]'``) through
   resnet-edge's ``openvino-runtime`` backend (``INFERENCE_NUM_THREADS`` 2, ``PERFORMANCE_HINT`` LATENCY) on the same
   INT8 file, on the FP32 file in FP32, and on the FP32 file in its CPU plugin's default precision (BF16 where the
   CPU has AVX-512 BF16), the peer an Intel user would pick;

plus CPU EP experiments on the INT8 file (``--experiments``): QOperator against QDQ, graph optimisation levels,
``session.qdqisint8allowed``; and, with ``--bundled-python PY``, onnxruntime's bundled OpenVINO EP
(``onnxruntime-openvino``, which cannot share an environment with ``onnxruntime``) run by that interpreter.

The sequence runs ``--repeats`` times (order reversed every other time); each phase is paired with an FP32 run
right next to it and its ratio taken within the pair, since the load of a shared machine drifts within seconds;
the medians of the ratios are printed (of the per-phase medians, and of the per-phase minima), with MACs per second
against the machine's peaks, measured by ``cpu_peak.c`` (one core's FP32 FMA and INT8 VNNI throughput, times the
threads; assumed from the clock where gcc or VNNI is missing). Models are built once into ``--workdir``.

    nice -n 10 python benchmarks/providers.py [--workdir DIR] [--repeats 2] [--iterations 50] [--experiments]

The load average and the nice value are printed with the table: on a shared machine, read the ratios only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PHASE_WARMUP = 10
INT8_MACS_PER_CYCLE = 128  # per core: two 512-bit VPDPBUSD per cycle, 64 u8 x s8 products each (Intel AVX-512 VNNI)
HERE = Path(__file__).resolve().parent


# --- a phase: one runtime, one model, in its own process -------------------------------------------------------------


def run_phase(args: argparse.Namespace) -> dict:
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    if args.phase == "openvino-default":  # the OpenVINO runtime as an Intel user calls it: its own default precision
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(
            args.model, "CPU", {"INFERENCE_NUM_THREADS": str(args.threads), "PERFORMANCE_HINT": "LATENCY"}
        )
        request = compiled.create_infer_request()

        def call() -> object:
            return request.infer({0: x})

        precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        where = f"openvino {ov.__version__} CPU, inference precision {precision}"
    elif args.phase == "ort-raw":  # CPU EP experiments: graph optimisation levels and session config entries
        import onnxruntime as ort

        from resnet_edge.onnx.providers import Provider
        from resnet_edge.onnx.runtime import open_session

        config = dict(entry.partition("=")[::2] for entry in args.config)
        session = open_session(
            args.model, Provider.CPU, threads=args.threads, optimization=args.opt_level, session_config=config
        )

        def call() -> object:
            return session.run(x)

        where = f"onnxruntime {ort.__version__} CPU, level {args.opt_level} {' '.join(args.config)}".strip()
    else:  # through resnet-edge's one way to open a session, with the threading given (as deployed)
        import onnxruntime as ort

        from resnet_edge.onnx.providers import parse_provider
        from resnet_edge.onnx.runtime import open_session

        config = dict(entry.partition("=")[::2] for entry in args.config)
        session = open_session(
            args.model,
            parse_provider(args.provider),
            threads=args.threads,
            spinning=bool(args.spinning),
            optimization=args.opt_level,
            session_config=config,
        )

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
    threads = extra.pop("threads", args.threads)  # a phase's own (the tune pick's kept count), else the run's
    command = [python, __file__, "--phase", phase, "--model", str(model), "--threads", str(threads)]
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
    from resnet_edge.conversion.export import export_onnx
    from resnet_edge.conversion.options import ExportOptions
    from resnet_edge.conversion.simplify import simplify_onnx
    from resnet_edge.evaluation.options import TuneOptions
    from resnet_edge.evaluation.tune import tune_model
    from resnet_edge.quantization.configs import Int8Target, resolve_config
    from resnet_edge.quantization.options import QuantizeOptions
    from resnet_edge.quantization.quantize import quantize_onnx

    workdir.mkdir(parents=True, exist_ok=True)
    files = {
        "fp32": workdir / "resnet50.sim.onnx",
        "int8": workdir / "resnet50.int8.onnx",
        "int8-qoperator": workdir / "resnet50.int8.qop.onnx",
        "tuned": workdir / "resnet50.tuned.onnx",
    }
    if not files["fp32"].exists():
        export_onnx(None, workdir / "resnet50.onnx", ExportOptions(arch="resnet50", input_size=args.size))
        simplify_onnx(workdir / "resnet50.onnx", files["fp32"])
    if not files["int8"].exists():
        quantize_onnx(files["fp32"], files["int8"], QuantizeOptions(limit=args.limit, measure_speed=False))
    if not files["int8-qoperator"].exists():
        from resnet_edge.quantization.configs import Format

        config = resolve_config(Int8Target.AUTO, format=Format.QOPERATOR)
        quantize_onnx(files["fp32"], files["int8-qoperator"], QuantizeOptions(config=config, limit=args.limit))
    if not files["tuned"].exists():
        options = TuneOptions(threads=args.threads, limit=args.limit, iterations=args.tune_rounds)
        result = tune_model(files["fp32"], files["tuned"], options)
        print(f"tune: {result.chosen.name} on {result.chosen.provider}; {result.reason}", file=sys.stderr)
    return files


@dataclass(frozen=True)
class Peaks:
    """The machine's multiply-add peaks for ``threads`` cores (MAC/s), and how they were found."""

    fp32: float
    int8: float
    note: str


def machine_peaks(threads: int) -> Peaks:
    """One core's FP32 FMA and INT8 VNNI peaks measured by ``cpu_peak.c`` (built with gcc), times ``threads``; where it
    cannot be built or run (no gcc, no AVX-512 VNNI), cores x the cpuinfo clock x the documented MACs per cycle.

    Measured on this project's Zen 4 (issue 24): 3.46 GHz boost, 16 fp32 and 64 int8 MACs per cycle per core, so the
    int8 peak is 4.0x the fp32 peak: an INT8 model is 4x onnxruntime FP32 only if its kernels are as efficient.
    """
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    lines = text.splitlines()

    def field(name: str) -> str:
        return next((line.split(":", 1)[1].strip() for line in lines if line.split(":")[0].strip() == name), "")

    cpu = f"{field('model name')} (family {field('cpu family')}, model {field('model')})"
    measured = _measure_peaks()
    if measured is not None:
        ghz, fp32, int8 = measured
        return Peaks(
            threads * fp32 * 1e9,
            threads * int8 * 1e9,
            f"{cpu}, measured by cpu_peak.c per core: {ghz:.2f} GHz, {fp32 / ghz:.1f} fp32 and {int8 / ghz:.1f} int8"
            " MAC/cycle",
        )
    mhz = [float(line.split(":")[1]) for line in lines if line.startswith("cpu MHz")]
    clock = (max(mhz) if mhz else 2500.0) * 1e6
    zen4 = field("vendor_id") == "AuthenticAMD" and field("cpu family") == "25"
    per_cycle = INT8_MACS_PER_CYCLE // 2 if zen4 else INT8_MACS_PER_CYCLE
    return Peaks(
        threads * clock * per_cycle / 4,  # AVX-512 FMA: a quarter of VNNI's multiply-adds per instruction
        threads * clock * per_cycle,
        f"{cpu}, {clock / 1e9:.2f} GHz (cpuinfo), {per_cycle} int8 MAC/cycle/core assumed (cpu_peak.c not run)",
    )


def _measure_peaks() -> tuple[float, float, float] | None:
    """(GHz, fp32 GMAC/s, int8 GMAC/s) of one core, from cpu_peak.c; None where it cannot be built or run."""
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp, "cpu_peak")
        flags = ["-O2", "-mavx512f", "-mavx512bw", "-mavx512vnni", "-mfma"]
        try:
            build = ["gcc", *flags, str(HERE / "cpu_peak.c"), "-o", str(binary)]
            subprocess.run(build, check=True, capture_output=True)
            out = subprocess.run([str(binary)], check=True, capture_output=True, text=True, timeout=120).stdout.split()
        except (OSError, subprocess.SubprocessError):  # no gcc, or a CPU without AVX-512 VNNI (SIGILL)
            return None
    return float(out[1]), float(out[3]), float(out[5])


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
    parser.add_argument("--spinning", type=int, default=1)
    parser.add_argument("--config", action="append", default=[])
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args)))
        return

    import onnx

    from resnet_edge.evaluation.tune_record import ChosenRecord, DeploymentRecord, read_deployment
    from resnet_edge.onnx.graph import macs_per_image

    load_before = os.getloadavg()
    files = build(args.workdir, args)
    deployment = read_deployment(onnx.load(str(files["tuned"]))) or DeploymentRecord(
        ChosenRecord(name="?", provider="cpu", precision="?", runtime="?")
    )
    threading = deployment.chosen.threading
    macs = macs_per_image(onnx.load(str(files["fp32"])))
    tuned_settings = {
        "provider": deployment.provider,
        "spinning": int(threading.get("spinning", True)),
        "opt_level": threading.get("optimization", "all"),
        "config": [f"{k}={v}" for k, v in threading.get("session_config", {}).items()],
        # the threads it was kept with (a knob may have taken one fewer): onnxruntime's, or OpenVINO's compile config
        "threads": threading.get("intra_op_threads")
        or threading.get("compile_config", {}).get("INFERENCE_NUM_THREADS")
        or args.threads,
    }
    settings_text = (
        f"spinning {'on' if tuned_settings['spinning'] else 'off'}, level {tuned_settings['opt_level']}"
        + "".join(f", {c}" for c in tuned_settings["config"])
        if deployment.provider == "cpu"
        else deployment.provider
    )
    phases: dict[str, tuple[str, str, Path, dict]] = {
        "ort-fp32 (CPU EP, spinning on)": (sys.executable, "ort", files["fp32"], {"provider": "cpu"}),
        f"tune pick, as deployed ({deployment.name}; {settings_text})": (
            sys.executable,
            "ort",
            files["tuned"],
            tuned_settings,
        ),
        "ort-int8 default file (CPU EP, spinning on)": (sys.executable, "ort", files["int8"], {"provider": "cpu"}),
        "ort-int8 default file, spinning off (timed so before)": (
            sys.executable,
            "ort",
            files["int8"],
            {"provider": "cpu", "spinning": 0},
        ),
        "openvino runtime, same INT8 file (f32 hint)": (
            sys.executable,
            "ort",
            files["int8"],
            {"provider": "openvino-runtime"},
        ),
        "openvino runtime, FP32 file in FP32": (sys.executable, "ort", files["fp32"], {"provider": "openvino-runtime"}),
        "openvino runtime, FP32 file, its default precision": (sys.executable, "openvino-default", files["fp32"], {}),
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
            ("int8 QDQ, qdqisint8allowed=1", files["int8"], "all", ["session.qdqisint8allowed=1"]),
            ("int8 QOperator, level all", files["int8-qoperator"], "all", []),
        ]:
            phases[f"experiment: {label}"] = (sys.executable, "ort-raw", model, {"opt_level": level, "config": config})

    names = list(phases)
    baseline = names[0]
    # On a shared machine the load drifts within seconds: every phase is paired with a baseline run right next to
    # it (before it in even repeats, after it in odd ones), and its ratio is taken within the pair.
    repeats: list[dict[str, dict]] = []
    for r in range(args.repeats):
        results: dict[str, dict] = {}
        for name in names[1:] if r % 2 == 0 else list(reversed(names[1:])):
            pair = [baseline, name] if r % 2 == 0 else [name, baseline]
            got = {}
            for label in pair:
                python, phase, model, extra = phases[label]
                got[label] = phase_process(python, phase, model, args, **extra)
                print(f"  repeat {r + 1} {label}: {got[label]}", file=sys.stderr)
            results[name] = got[name] | {"baseline_median_ms": got[baseline].get("median_ms")}
            results[name]["baseline_min_ms"] = got[baseline].get("min_ms")
            results.setdefault(baseline, {"runs": []})["runs"].append(got[baseline])
        repeats.append(results)

    peaks = machine_peaks(args.threads)
    load_after = os.getloadavg()
    print(f"ResNet-50 {args.size}x{args.size}, batch 1, {args.threads} threads, {args.repeats} repeats; {peaks.note}")
    print(
        f"machine load (1/5/15 min) before {' '.join(f'{v:.2f}' for v in load_before)}, after"
        f" {' '.join(f'{v:.2f}' for v in load_after)}; nice {os.nice(0)}; random weights"
    )
    print(
        f"{macs / 1e9:.2f} GMAC per image; {args.threads}-core peaks: fp32 {peaks.fp32 / 1e9:.0f} GMAC/s"
        f" ({macs / peaks.fp32 * 1e3:.2f} ms per image), int8 {peaks.int8 / 1e9:.0f} GMAC/s"
        f" ({macs / peaks.int8 * 1e3:.2f} ms): the int8 ceiling is {peaks.int8 / peaks.fp32:.1f}x fp32's"
    )
    print("x fp32: median over repeats of (paired baseline median / phase median); x fp32 (min): the same on minima")
    print(f"{'phase':62} {'median ms':>10} {'x fp32':>8} {'(min)':>7} {'GMAC/s':>8} {'% peak':>7}")
    summary: dict[str, dict] = {}
    base_ms = [run["median_ms"] for rep in repeats for run in rep[baseline]["runs"] if "median_ms" in run]
    base_rate = macs / (min(run["min_ms"] for rep in repeats for run in rep[baseline]["runs"] if "min_ms" in run) / 1e3)
    print(
        f"{baseline:62} {float(np.median(base_ms)):10.2f} {1:7.2f}x {1:6.2f}x {base_rate / 1e9:8.0f}"
        f" {100 * base_rate / peaks.fp32:6.1f}%"
    )
    summary[baseline] = {"median_ms": float(np.median(base_ms)), "runs": base_ms}
    for name in names[1:]:
        runs = [rep[name] for rep in repeats if "median_ms" in rep[name] and rep[name].get("baseline_median_ms")]
        if not runs:
            errors = sorted({rep[name].get("error") or "" for rep in repeats} - {""})
            print(f"{name:62} failed: {'; '.join(errors)}")
            summary[name] = {"error": errors}
            continue
        med = float(np.median([run["median_ms"] for run in runs]))
        ratios = [run["baseline_median_ms"] / run["median_ms"] for run in runs]
        min_ratios = [run["baseline_min_ms"] / run["min_ms"] for run in runs]
        ratio, min_ratio = float(np.median(ratios)), float(np.median(min_ratios))
        rate = macs / (min(run["min_ms"] for run in runs) / 1e3)  # the best the machine allowed
        peak = peaks.int8 if "int8" in name.lower() else peaks.fp32  # each against the peak of its arithmetic
        print(f"{name:62} {med:10.2f} {ratio:7.2f}x {min_ratio:6.2f}x {rate / 1e9:8.0f} {100 * rate / peak:6.1f}%")
        summary[name] = {
            "median_ms": med,
            "ratio_median": ratio,
            "ratios": ratios,
            "ratio_of_minima_median": min_ratio,
            "best_gmac_per_s": rate / 1e9,
            "where": runs[0]["where"],
        }
    print(
        "GMAC/s and % peak: from the fastest single call, the closest this shared machine came to an idle one;"
        " % of the int8 peak for INT8 rows, of the fp32 peak for the others (BF16 has up to twice fp32's)"
    )
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "repeats": repeats, "cpu": peaks.note}, indent=2) + "\n")


if __name__ == "__main__":
    main()
