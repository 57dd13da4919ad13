"""The ``resnet-edge`` command: parse options, call one library function, print its result.

No logic lives here. A :class:`~resnet_edge.errors.ResnetEdgeError` is printed as one ``error:`` line with a
non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import platform
import sys

import click

from resnet_edge import __version__
from resnet_edge.cli import render
from resnet_edge.cli.interrupts import INTERRUPTED_LINE, interrupt_exit_code
from resnet_edge.errors import ResnetEdgeError


class _Group(click.Group):
    """Turns user errors into one line and a non-zero exit, and Ctrl-C into a clean exit."""

    def invoke(self, ctx: click.Context) -> object:
        render.install_warning_printer()
        try:
            return super().invoke(ctx)
        except ResnetEdgeError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
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
