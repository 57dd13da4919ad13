"""Child process that runs onnxsim: ``python -m resnet_edge.onnxsim_worker IN.onnx OUT.onnx``.

Kept apart so that a crash or hang inside onnxsim's C++ code is contained by the parent (see simplify.py).
Exit codes: 0 written, 3 onnxsim raised or its own check failed (reason on stderr).
"""

from __future__ import annotations

import sys


def main(source: str, destination: str) -> int:
    import onnx
    import onnxsim

    model = onnx.load(source)
    try:
        # check_n=0: onnxsim's own check feeds random inputs; the parent verifies on real images instead.
        simplified, ok = onnxsim.simplify(model, check_n=0)
    except Exception as exc:  # onnxsim raises bare RuntimeError/ValueError from C++; report it as one line
        print(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}", file=sys.stderr)
        return 3
    if not ok:
        print("onnxsim's check failed", file=sys.stderr)
        return 3
    onnx.save(simplified, destination)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
