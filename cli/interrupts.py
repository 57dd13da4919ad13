"""What Ctrl-C and SIGTERM turn into: one exception the whole program unwinds through, and the exit status.

Shared by the installed script (:mod:`resnet_edge.cli.entry`, which installs the SIGTERM handler before the slow
imports) and the click application (:mod:`resnet_edge.cli.main`, which reports an interrupt once a command runs).
"""

from __future__ import annotations

import signal

INTERRUPTED_EXIT = 130  # 128 + SIGINT, what shells report for Ctrl-C
TERMINATED_EXIT = 143  # 128 + SIGTERM
INTERRUPTED_LINE = "interrupted: no partial output was kept"


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so every ``finally`` and ``with`` block cleans up as for Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def install_sigterm_handler() -> None:
    """SIGTERM's default action kills the process on the spot, leaving temporary folders and children behind."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def interrupt_exit_code(exc: KeyboardInterrupt) -> int:
    return TERMINATED_EXIT if isinstance(exc, Terminated) else INTERRUPTED_EXIT
