"""Items of an iterator made in a background thread, a few ahead of the one that consumes them.

Decoding and resizing an image (Pillow) and normalising it (NumPy) release the GIL, so the next batch is decoded while
onnxruntime runs the current one. Only ``depth`` items wait at a time, so memory does not grow with the data.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()
_POLL_S = 0.1  # how often a blocked producer checks whether the consumer has gone


def prefetched(items: Iterable[T], *, depth: int = 2) -> Iterator[T]:
    """The items of ``items`` in order, produced by a background thread at most ``depth`` ahead.

    An exception raised while producing an item (a file that cannot be decoded) is raised here, where that item
    would have come. When the consumer stops early (an exception of its own, ``close()``), the thread stops too.

    Raises:
        ValueError: ``depth`` below 1.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    waiting: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                waiting.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            put((_DONE, exc))
            return
        put((_DONE, None))

    thread = threading.Thread(target=produce, name="resnet-edge-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = waiting.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join()
