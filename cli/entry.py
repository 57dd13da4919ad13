"""The installed ``resnet-edge`` script: signals first, then the click application.

Importing a command's libraries takes seconds (torch), and a Ctrl-C in that window must print the usual line, not a
``KeyboardInterrupt`` traceback. SIGTERM (``kill``, a CI runner's timeout, ``docker stop``) is turned into the same
clean unwinding as Ctrl-C, and so is SIGHUP (:mod:`resnet_edge.cli.interrupts`).
"""

from __future__ import annotations

import sys

from resnet_edge.cli.interrupts import INTERRUPTED_LINE, install_signal_handlers, interrupt_exit_code


def main() -> int:
    """Run the ``resnet-edge`` command line; its exit status."""
    install_signal_handlers()
    try:
        from resnet_edge.cli.main import main as application

        return application(prog_name="resnet-edge")
    except KeyboardInterrupt as exc:  # during start-up; once a command runs, the application reports it itself
        print(INTERRUPTED_LINE, file=sys.stderr)
        return interrupt_exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
