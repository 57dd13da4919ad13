"""The ``resnet-edge`` command: parse options, call one library function, print its result.

No logic lives here. A :class:`~resnet_edge.errors.ResnetEdgeError` is printed as one ``error:`` line with a
non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import platform
import sys
from pathlib import Path

import click

from resnet_edge import __version__
from resnet_edge.artifacts import WRITE_FAILURES, write_failure
from resnet_edge.cli import render
from resnet_edge.cli.interrupts import INTERRUPTED_LINE, interrupt_exit_code
from resnet_edge.errors import OutputWriteError, ResnetEdgeError


class _Group(click.Group):
    """Turns user errors into one line and a non-zero exit, and Ctrl-C into a clean exit."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:  # the group's own options (resnet-edge --bogus)
            _show_usage_error(exc)
            sys.exit(exc.exit_code)

    def invoke(self, ctx: click.Context) -> object:
        render.install_warning_printer()
        try:
            result = super().invoke(ctx)
            _flush_stdout()  # a full disk behind `> file` fails here, not in Python's exit-time flush
            return result
        except click.UsageError as exc:  # a command's options, an unknown command: one line and the hint, exit 2
            _show_usage_error(exc)
            ctx.exit(exc.exit_code)
        except ResnetEdgeError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # any path option: the first stat of it fails
                name = str(exc.filename or "")
                shown = name if len(name) <= 80 else f"{name[:40]}...{name[-20:]}"
                click.echo(f"error: path too long for the file system ({len(name):,} characters): {shown}", err=True)
                ctx.exit(2)
            if exc.errno not in WRITE_FAILURES:
                raise
            # A write outside the atomic outputs (which say which file themselves): a temporary file, or stdout.
            failure = _stdout_failure(exc) if _from_echo(exc) else write_failure(exc.filename, exc)
            click.echo(f"error: {failure}", err=True)
            ctx.exit(1)
        except ModuleNotFoundError as exc:
            if exc.name != "onnxruntime":
                raise
            # The runtime is an extra, so that the CPU and GPU builds are never installed side by side.
            click.echo(
                "error: onnxruntime is not installed: pip install 'resnet-edge[cpu]' (or 'resnet-edge[gpu]' for CUDA)",
                err=True,
            )
            ctx.exit(1)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM under the installed script (see cli/interrupts.py)
            click.echo(INTERRUPTED_LINE, err=True)
            ctx.exit(interrupt_exit_code(exc))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", prog_name="resnet-edge")
@click.option("-v", "--verbose", is_flag=True, help="Also print resnet-edge's debug messages (on stderr).")
@click.option("-q", "--quiet", is_flag=True, help="Print errors only: no warnings.")
def main(verbose: bool, quiet: bool) -> None:
    """Take a PyTorch ResNet to an edge-ready ONNX model: export, simplify, quantize, validate, benchmark."""
    if verbose and quiet:
        raise click.UsageError("-v/--verbose and -q/--quiet exclude each other")
    render.configure_logging(logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING)
    logging.getLogger(render.LOGGER).debug(
        "resnet-edge %s on Python %s: %s",
        __version__,
        platform.python_version(),
        click.get_current_context().invoked_subcommand,
    )


def _show_usage_error(exc: click.UsageError) -> None:
    """``error: MESSAGE`` and the hint, instead of click's usage block (usage line, hint, blank line, ``Error:``)."""
    click.echo(f"error: {exc.format_message()}", err=True)
    if exc.ctx is not None:
        click.echo(f"Try '{exc.ctx.command_path} {exc.ctx.help_option_names[0]}' for help.", err=True)


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except OSError as exc:
        if exc.errno not in WRITE_FAILURES:
            raise
        raise _stdout_failure(exc) from None


def _from_echo(exc: OSError) -> bool:
    """Whether ``exc`` came from printing (``click.echo``: the commands print to stdout only through it)."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "echo" and Path(code.co_filename).parent.name == "click":
            return True
        tb = tb.tb_next
    return False


def _stdout_failure(exc: OSError) -> OutputWriteError:
    """The error for standard output that cannot be written (``> /dev/full``, a full disk); what is still buffered
    goes to /dev/null, so that Python's flush at exit does not fail a second time with a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):  # not a real file (a test's capture): nothing to pacify
        pass
    return OutputWriteError(f"cannot write to standard output: {exc.strerror or exc}; the output was lost")


def _register() -> None:
    from resnet_edge.cli import analyze, convert, evaluate, gradflow, pipeline, train, tune

    for command in (
        convert.export,
        convert.simplify,
        convert.inspect,
        convert.quantize,
        evaluate.validate,
        evaluate.benchmark,
        evaluate.doctor,
        evaluate.runner,
        pipeline.pipeline,
        gradflow.gradflow,
        analyze.analyze,
        tune.tune,
        train.train,
    ):
        main.add_command(command)


_register()

if __name__ == "__main__":
    sys.exit(main())
