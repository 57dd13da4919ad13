"""Child process that runs onnxsim: ``python -m resnet_edge.conversion.onnxsim_worker IN.onnx OUT.onnx [PARENT_PID]``.

Kept apart so that a crash or hang inside onnxsim's C++ code is contained by the parent (see simplify.py).
Exit codes: 0 written, 3 onnxsim raised or its own check failed (reason on stderr), 4 its parent was gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PARENT_GONE_EXIT = 4


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this process when its parent dies, however the parent dies (SIGKILL included).

    Without it, a parent killed while onnxsim runs leaves an orphan using a core for up to the timeout. Linux
    only (prctl); elsewhere the parent's own clean-up (subprocess.run kills the child on any exception) remains.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(PARENT_GONE_EXIT)


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
    if len(sys.argv) > 3:
        die_with_parent(int(sys.argv[3]))
    sys.exit(main(sys.argv[1], sys.argv[2]))
