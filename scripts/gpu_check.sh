#!/usr/bin/env bash
# GPU check: on a machine with an NVIDIA GPU and nothing prepared, install resnet-edge's GPU runtime and run
# validate and benchmark for ResNet-50 (random weights; speed) and the built-in trained digits resnet20 (parity),
# each in FP32, FP16 and INT8, on cuda and tensorrt, with the node placement audit. Writes one JSON file.
#
#   scripts/gpu_check.sh [OUTPUT.json]      (default: $OUT/gpu_check.json, else ./gpu_check.json)
#
# Needs python3 (3.11 or later) and pip access to PyPI. Takes a few minutes: most of it is pip and TensorRT's
# engine builds (cached in the work folder). A failed step is recorded in the JSON and the script goes on.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
output="${1:-${OUT:-.}/gpu_check.json}"
mkdir -p "$(dirname "$output")"
output="$(cd "$(dirname "$output")" && pwd)/$(basename "$output")"
work="$(mktemp -d "${TMPDIR:-/tmp}/resnet-edge-gpu-check.XXXXXX")"
log="$work/log.txt"
echo "work folder: $work" >&2

python3 -m venv "$work/venv"
# shellcheck disable=SC1091  # created just above
. "$work/venv/bin/activate"
pip install -q --upgrade pip
# The CPU build of torch is enough (the reference runs on the CPU) and is ~10x smaller than the CUDA one.
pip install -q torch --index-url https://download.pytorch.org/whl/cpu >>"$log" 2>&1 ||
    echo "note: torch CPU index unreachable; taking torch from the default index" >&2
# onnxruntime-gpu's [cuda,cudnn] extras bring CUDA 12 and cuDNN 9 as pip packages; tensorrt-cu12 brings TensorRT.
pip install -q "${repo}[gpu]" "onnxruntime-gpu[cuda,cudnn]" tensorrt-cu12 >>"$log" 2>&1

# onnxruntime finds the CUDA, cuDNN and TensorRT libraries of those pip packages through the loader path.
site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
libs=""
for dir in "$site"/nvidia/*/lib "$site"/tensorrt_libs; do
    if [ -d "$dir" ]; then libs="${libs:+$libs:}$dir"; fi
done
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

echo "== onnxruntime providers ==" >&2
python -c 'import onnxruntime as ort; print(ort.__version__, ort.get_available_providers())' | tee "$work/providers.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$work/gpu.txt" 2>&1 || true
resnet-edge doctor --json >"$work/doctor.json" 2>>"$log" || true

step() {  # step NAME COMMAND...: run, keep stdout as NAME.json, stderr as NAME.err, exit code as NAME.rc
    local name="$1"
    shift
    echo "== $name ==" >&2
    set +e
    "$@" >"$work/$name.json" 2>"$work/$name.err"
    echo $? >"$work/$name.rc"
    set -e
    tail -n 3 "$work/$name.err" >&2 || true
}

to_fp16() {
    python -c 'import sys; from resnet_edge.evaluation.tune import convert_fp16; convert_fp16(sys.argv[1], sys.argv[2])' "$1" "$2"
}

cache="$work/trt-cache"
providers="cuda,tensorrt[cache=$cache]"
for model in digits resnet50; do
    if [ "$model" = digits ]; then
        resnet-edge export --weights builtin:digits-resnet20 -o "$work/$model.onnx" >>"$log" 2>&1
        batches="1,32"
    else
        resnet-edge export --arch resnet50 -o "$work/$model.onnx" >>"$log" 2>&1
        batches="1,8"
    fi
    {
        resnet-edge simplify "$work/$model.onnx" -o "$work/$model.sim.onnx"
        resnet-edge quantize "$work/$model.sim.onnx" --target gpu-tensorrt --limit 64 --no-speed \
            -o "$work/$model.int8.onnx"
        to_fp16 "$work/$model.sim.onnx" "$work/$model.fp16.onnx"
    } >>"$log" 2>&1
    files=("$work/$model.sim.onnx" "$work/$model.fp16.onnx" "$work/$model.int8.onnx")
    # Parity against the FP32 ONNX file: with random weights (resnet50) only FP32 and FP16 are meaningful.
    step "validate-$model" resnet-edge validate "${files[@]}" --reference "$work/$model.sim.onnx" \
        --providers "$providers" --json
    step "benchmark-$model" resnet-edge benchmark "${files[@]}" --providers "$providers" --batch "$batches" \
        --iterations 50 --warmup 10 --json
    step "strict-$model" resnet-edge validate "$work/$model.int8.onnx" --reference "$work/$model.sim.onnx" \
        --providers "$providers" --strict-ep --json
done
step tune-digits resnet-edge tune "$work/digits.sim.onnx" --providers "cpu,cuda,$providers" --batch 32 \
    --iterations 30 -o "$work/digits.tuned.onnx" --json

python - "$work" "$output" <<'PY'
import json
import sys
from pathlib import Path

work, output = Path(sys.argv[1]), Path(sys.argv[2])


def read(name):
    path = work / name
    if not path.exists():
        return None
    text = path.read_text()
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()[-4000:] or None


result = {
    "providers": read("providers.txt"),
    "gpu": read("gpu.txt"),
    "doctor": read("doctor.json"),
    "steps": {},
}
for rc in sorted(work.glob("*.rc")):
    name = rc.stem
    data = read(f"{name}.json")
    summary = None
    if isinstance(data, dict) and "rows" in data:  # validate or benchmark: the lines a reader wants first
        summary = [
            {
                "model": r.get("model"),
                "provider": r.get("provider"),
                "ran_on": r.get("ran_on"),
                "batch": r.get("batch"),
                "p50_ms": (r.get("latency") or {}).get("p50_ms"),
                "passed": r.get("passed"),
                "top1_agreement": (r.get("parity") or {}).get("top1_agreement"),
                "placement": r.get("placement"),
            }
            for r in data["rows"]
        ]
    result["steps"][name] = {
        "exit_code": int(rc.read_text()),
        "summary": summary,
        "result": data,
        "stderr_tail": (work / f"{name}.err").read_text()[-3000:],
    }
output.write_text(json.dumps(result, indent=2) + "\n")
print(f"wrote {output}")
PY
