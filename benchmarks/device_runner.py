"""The device runner's size and its cold-start overhead on an interpreter (default: this one).

Overhead = starting ``python runner.pyz --facts`` (unzip, import numpy and onnxruntime, read the device's facts)
minus starting ``python -c "import numpy, onnxruntime"``, medians over interleaved repeats.

    python benchmarks/device_runner.py [--python /path/to/device/python] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from resnet_edge.device.bundle import write_runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        runner = write_runner(Path(folder) / "runner.pyz")
        commands = {
            "python -c 'import numpy, onnxruntime'": [args.python, "-c", "import numpy, onnxruntime"],
            "python runner.pyz --facts": [args.python, str(runner.path), "--facts"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            for name, argv in commands.items():
                t0 = time.perf_counter()
                subprocess.run(argv, check=True, capture_output=True, cwd=folder)
                times[name].append(time.perf_counter() - t0)
    print(f"runner: {runner.size_bytes} bytes ({runner.size_bytes / 1024:.1f} KiB), {len(runner.modules)} files")
    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    for name, ms in medians.items():
        print(f"{name:40} median {ms:7.1f} ms over {args.repeats}")
    base, full = medians.values()
    print(f"runner cold-start overhead: {full - base:.1f} ms ({full / base:.2f}x the bare imports)")


if __name__ == "__main__":
    main()
