"""Options and parsers shared by several commands."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import click

from resnet_edge.progress import Progress, ProgressCallback
from resnet_edge.quantization.configs import Format, Int8Target, Method

# Taken from the enums: resnet_edge.quantization.configs imports no heavy library, so --help stays fast.
INT8_TARGETS = tuple(target.value for target in Int8Target)
INT8_METHODS = tuple(method.value for method in Method)
INT8_FORMATS = tuple(fmt.value for fmt in Format)
# Seeds reach numpy's default_rng, which takes 0 to 2**32 - 1 here (and fails with a traceback below 0).
SEED = click.IntRange(0, 2**32 - 1)

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def providers_option(function):
    return click.option(
        "--providers",
        default="cpu",
        show_default=True,
        help="Comma-separated: cpu, cuda, tensorrt, openvino, ep:<onnxruntime name>; options as"
        " name[key=value;key=value], e.g. 'tensorrt[fp16=1;cache=DIR]'.",
    )(function)


def parse_provider_list(value: str) -> tuple:
    from resnet_edge.onnx.runtime import parse_providers  # imports onnxruntime: only when a command runs

    return tuple(parse_providers(value))


def parse_batch(value: str) -> int | None:
    """``dynamic`` -> None, else a positive integer."""
    if value == "dynamic":
        return None
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter(f"expected 'dynamic' or a positive integer, got {value!r}")
    return int(value)


def parse_batches(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated batch sizes such as 1,8,32, got {value!r}") from None


def derived_path(model: Path, tag: str) -> Path:
    """``model.onnx`` -> ``model<tag>.onnx`` beside it."""
    return model.with_name(f"{model.name.removesuffix('.onnx')}{tag}.onnx")


def target_options(function):
    """``--target`` (repeatable) and how to reach targets; shared by benchmark, validate and pipeline."""
    for option in reversed(
        [
            click.option(
                "--target",
                "targets",
                multiple=True,
                help="Run on this device instead: ssh://[user@]host[:port] (an ~/.ssh/config alias works), local, or"
                " 'exec:COMMAND PREFIX', a command that starts the device's Python on this machine's files, e.g."
                " 'exec:env QEMU_CPU=max ROOTFS/qemu-aarch64-static -L ROOTFS ROOTFS/usr/bin/python3' for ARM"
                " kernels under emulation (parity is real; its timings are not ARM timings and are not ranked). A"
                " prefix whose command does not see this machine's files (docker exec, adb shell) does not work."
                " Repeat for several, run in parallel.",
            ),
            click.option("--remote-python", help="Interpreter on the target devices. [default: python3]"),
            click.option("--connect-timeout", type=float, help="Seconds ssh waits for a device. [default: 10]"),
            click.option(
                "--ssh-config",
                type=click.Path(path_type=Path),
                help="ssh config file to use instead of ~/.ssh/config (ssh -F).",
            ),
        ]
    ):
        function = option(function)
    return function


def remote_options(
    targets: tuple[str, ...], remote_python: str | None, connect_timeout: float | None, ssh_config: Path | None
) -> object:
    """How to reach the targets, checked before any work; refused without ``--target`` (it would do nothing)."""
    from resnet_edge.device.targets import RemoteOptions
    from resnet_edge.errors import OptionError

    given = {"--remote-python": remote_python, "--connect-timeout": connect_timeout, "--ssh-config": ssh_config}
    if not targets and any(v is not None for v in given.values()):
        named = ", ".join(k for k, v in given.items() if v is not None)
        raise OptionError(f"{named} apply to --target devices, and no --target was given")
    defaults = RemoteOptions()
    return RemoteOptions(
        python=remote_python or defaults.python,
        connect_timeout_s=connect_timeout if connect_timeout is not None else defaults.connect_timeout_s,
        ssh_config=ssh_config,
    )


def target_progress(target: str, message: str) -> None:
    """Each target's progress, one line per step, on stderr (targets run in parallel: lines name their target)."""
    click.echo(f"[{target}] {message}", err=True)


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[ProgressCallback | None]:
    """A stage's ``on_progress`` that draws one transient bar per countable step on stderr (None when disabled)."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bars: dict[tuple[str, str], tqdm] = {}

    def show(event: Progress) -> None:
        if event.total is None or event.done is None:
            return
        bar = bars.get((event.stage, event.step))
        if bar is None:
            bar = bars[(event.stage, event.step)] = tqdm(total=event.total, desc=event.step, unit="img", leave=False)
        bar.update(event.done - bar.n)

    try:
        yield show
    finally:
        for bar in bars.values():
            bar.close()
