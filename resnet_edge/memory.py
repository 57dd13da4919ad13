"""Will a batch fit in memory? Estimated from the model's activation sizes and checked before any work.

A batch too large for the machine does not fail cleanly: the process grows until the kernel's OOM killer (or swap)
stops it, minutes later. So the commands that take a batch size or an input size estimate what they will need and
refuse, with the numbers, what the machine cannot give.

The estimate: a ResNet runs its layers one after the other, and onnxruntime's (and PyTorch's) allocator reuses the
memory of tensors no longer needed, so what is alive at once is a few activations, not all of them: a block's input,
its branch's output, the shortcut and a temporary. Hence ``LIVE_ACTIVATIONS`` times the largest activation per
image, plus the input and output, times the batch; plus the weights, held several times (the PyTorch model, the
ONNX file in memory and onnxruntime's session).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from resnet_edge.errors import OptionError

LIVE_ACTIVATIONS = 4  # largest activations alive at once in a residual block (input, branch, shortcut, temporary)
WEIGHT_COPIES = 3  # the weights in PyTorch, in the ONNX proto and in onnxruntime's session
_FLOAT_BYTES = 4
_ONNX_DTYPE_BYTES = {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 16: 2}  # by TensorProto data type


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs: ``fixed`` once (weights), ``per_image`` for each image of a batch."""

    per_image: int
    fixed: int

    def for_batch(self, batch: int) -> int:
        return self.fixed + batch * self.per_image


def available_memory() -> int | None:
    """Bytes this process can still allocate: the smaller of the system's available memory and what the cgroup
    (a container's limit) leaves; None where neither can be read (the check is then skipped)."""
    limits: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            limits.append(int(limit) - int((cgroup / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def check_fits(what: str, estimate: MemoryEstimate, batch: int, *, hint: str = "use a smaller batch") -> None:
    """Refuse a batch whose estimated memory exceeds what the machine has available.

    Raises:
        OptionError: the estimate exceeds the available memory; the message gives both, and the per-image share.
    """
    available = available_memory()
    needed = estimate.for_batch(batch)
    if available is not None and needed > available:
        raise OptionError(
            f"{what} needs about {_size(needed)} ({_size(estimate.per_image)} per image x {batch:,}"
            f" + {_size(estimate.fixed)} of weights), more than the {_size(available)} of memory available; {hint}"
        )


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"
