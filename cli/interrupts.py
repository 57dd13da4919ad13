"""What Ctrl-C, SIGTERM and SIGHUP turn into: one exception the whole program unwinds through, and the exit status.

Shared by the installed script (:mod:`resnet_edge.cli.entry`, which installs the handlers before the slow imports)
and the click application (:mod:`resnet_edge.cli.main`, which reports an interrupt once a command runs).
"""

from __future__ import annotations

import signal

INTERRUPTED_EXIT = 130  # 128 + SIGINT, what shells report for Ctrl-C
TERMINATED_EXIT = 128 + signal.SIGTERM  # 143
HANGUP_EXIT = 128 + signal.SIGHUP  # 129
INTERRUPTED_LINE = "interrupted: no partial output was kept"
# Signals whose default action kills the process on the spot, leaving staging folders, temporary folders and
# children behind: SIGTERM (kill, a CI runner's timeout, docker stop) and SIGHUP (a closed terminal or ssh session).
UNWINDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM or SIGHUP, so every ``finally`` and ``with`` block cleans up as for
    Ctrl-C; ``signum`` says which."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


def install_signal_handlers() -> None:
    """Unwind on SIGTERM and SIGHUP as on Ctrl-C. A signal already ignored stays ignored: ``nohup`` (which ignores
    SIGHUP) keeps a run going after its terminal closes."""
    for signum in UNWINDING_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _raise_terminated)


def interrupt_exit_code(exc: KeyboardInterrupt) -> int:
    return 128 + exc.signum if isinstance(exc, Terminated) else INTERRUPTED_EXIT
