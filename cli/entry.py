"""The installed ``resnet-edge`` script: signals first, then the click application.

Importing the application takes seconds (torch), and a Ctrl-C in that window must print the usual line, not a
``KeyboardInterrupt`` traceback. SIGTERM (``kill``, a CI runner's timeout, ``docker stop``) is turned into the same
clean unwinding as Ctrl-C, so temporary folders are removed and child processes ended (SIGTERM's default action
kills the process on the spot, leaving both behind).
"""

from __future__ import annotations

import signal
import sys

INTERRUPTED_EXIT = 130  # 128 + SIGINT, what shells report for Ctrl-C
TERMINATED_EXIT = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so every ``finally`` and ``with`` block cleans up as for Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def interrupt_exit_code(exc: KeyboardInterrupt) -> int:
    return TERMINATED_EXIT if isinstance(exc, Terminated) else INTERRUPTED_EXIT


def main() -> int:
    """Run the ``resnet-edge`` command line; its exit status."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        from resnet_edge.cli.main import main as application

        return application(prog_name="resnet-edge")
    except KeyboardInterrupt as exc:  # during start-up; once a command runs, the application reports it itself
        print("interrupted: no partial output was kept", file=sys.stderr)
        return interrupt_exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
