"""Options and parsers shared by several commands, and the flags made from the stages' options classes.

:func:`options_from` turns an options dataclass (``ExportOptions``, ``BenchmarkOptions``, ...) into click options,
one per field: the flag is the field's name (``strict_ep`` -> ``--strict-ep``) or its metadata's ``flag``, the help
its metadata's ``help``, the type and default the field's own, and an enum's choices its values. So an option is
declared once, in the library, and the CLI cannot drift from it. The classes live in modules that import no heavy
library (``conversion.options``, ``evaluation.options``, ``quantization.options``, ``models.options``), so
``--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from resnet_edge.device.targets import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_PYTHON  # standard library only
from resnet_edge.onnx.providers import parse_providers  # no onnxruntime: --help stays fast
from resnet_edge.progress import Progress, ProgressCallback
from resnet_edge.quantization.configs import Format, Int8Target, Method

# Taken from the enums: resnet_edge.quantization.configs imports no heavy library, so --help stays fast.
INT8_TARGETS = tuple(target.value for target in Int8Target)
INT8_METHODS = tuple(method.value for method in Method)
INT8_FORMATS = tuple(fmt.value for fmt in Format)

F = TypeVar("F", bound=Callable[..., Any])
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
            click.option("--remote-python", help=f"Interpreter on the target devices. [default: {DEFAULT_PYTHON}]"),
            click.option(
                "--connect-timeout",
                type=float,
                help=f"Seconds ssh waits for a device. [default: {DEFAULT_CONNECT_TIMEOUT_S:g}]",
            ),
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
    from resnet_edge.device.targets import RemoteOptions, Target, check_ssh_options
    from resnet_edge.errors import OptionError

    given = {"--remote-python": remote_python, "--connect-timeout": connect_timeout, "--ssh-config": ssh_config}
    if not targets and any(v is not None for v in given.values()):
        named = ", ".join(k for k, v in given.items() if v is not None)
        raise OptionError(f"{named} apply to --target devices, and no --target was given")
    check_ssh_options(
        [Target.parse(t) for t in targets], {"--remote-python": remote_python, "--ssh-config": ssh_config}
    )
    defaults = RemoteOptions()
    return RemoteOptions(
        python=remote_python or defaults.python,
        connect_timeout_s=connect_timeout if connect_timeout is not None else defaults.connect_timeout_s,
        ssh_config=ssh_config,
    )


def target_progress(event: Progress) -> None:
    """Each target's progress, one line per step, on stderr (targets run in parallel: lines name their target)."""
    click.echo(f"[{event.target}] {event.step}", err=True)


@contextlib.contextmanager
def progress_bars(enabled: bool, *, steps: bool = False) -> Iterator[ProgressCallback | None]:
    """A stage's ``on_progress`` that draws one transient bar per countable step on stderr (None when disabled).

    Args:
        steps: also print a ``[stage] step ...`` line on stderr as each uncountable step starts (a long export or
            session opening is otherwise silence; on stderr, so that ``--json`` keeps stdout to itself).
    """
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bars: dict[tuple[str, str], tqdm] = {}

    def show(event: Progress) -> None:
        if event.total is None or event.done is None:
            if steps and event.done is None:
                detail = f" ({event.detail})" if event.detail else ""
                tqdm.write(f"[{event.stage}] {event.step}{detail} ...", file=sys.stderr)
            return
        bar = bars.get((event.stage, event.step))
        if bar is None:
            bar = bars[(event.stage, event.step)] = tqdm(
                total=event.total, desc=event.step, unit=event.unit, leave=False
            )
        if event.detail is not None:
            bar.set_postfix_str(event.detail, refresh=False)
        bar.update(event.done - bar.n)
        if event.done >= event.total:  # closed now, so that a line printed next starts on a line of its own
            bars.pop((event.stage, event.step)).close()

    try:
        yield show
    finally:
        for bar in bars.values():
            bar.close()


def command_line() -> str:
    """The running command as a user would type it again: ``resnet-edge``, the command, and each parameter given on
    the command line (not those left at their defaults), for a record such as a checkpoint's ``command``."""
    import shlex

    ctx = click.get_current_context()
    words = ["resnet-edge", ctx.info_name or ""]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name or "") is not click.core.ParameterSource.COMMANDLINE:
            continue
        value = ctx.params.get(param.name or "")
        if isinstance(param, click.Argument):
            words.extend(str(v) for v in (value if isinstance(value, tuple) else (value,)))
            continue
        if isinstance(param, click.Option) and param.is_flag:
            # --fold-bn/--keep-bn: the second spelling is the one that gives False
            words.append(max(param.secondary_opts if param.secondary_opts and not value else param.opts, key=len))
            continue
        flag = max(param.opts, key=len)
        for item in value if isinstance(value, tuple) else (value,):
            words.extend([flag, item.value if isinstance(item, enum.Enum) else str(item)])
    return shlex.join(words)


# --- flags made from the options classes --------------------------------------------------------------------------


def flag_name(field: dataclasses.Field) -> str:
    """The flag a field is given: its metadata's ``flag``, else ``--`` and its name with dashes."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def field_type(cls: type, field: dataclasses.Field) -> Any:
    """The field's type, its annotation evaluated in its class's module (``X | None`` stays a union)."""
    if not isinstance(field.type, str):
        return field.type
    return eval(field.type, vars(sys.modules[cls.__module__]))


def _without_none(annotation: Any) -> Any:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _click_type(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return click.Choice([e.value for e in annotation])
    if annotation is Path:
        return click.Path(path_type=Path)
    if annotation in (int, float, str):
        return annotation
    raise TypeError(f"no flag type for {annotation!r}: give the field an override")


def option_for(cls: type, field: dataclasses.Field, **changes: Any) -> Callable[[F], F]:
    """The click option of one field of an options dataclass; ``changes`` replace what the field says (a parser's
    ``type``, a ``default`` in the flag's own text)."""
    flag, help_text = flag_name(field), field.metadata.get("help")
    default = field.default
    required = default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    annotation = _without_none(field_type(cls, field)) if "type" not in changes else changes["type"]
    if annotation is bool:
        if "/" in flag:
            return click.option(flag, field.name, default=default, show_default=True, help=help_text)
        if default is True:  # --no-int8: the flag turns the field off
            return click.option(flag, field.name, flag_value=False, default=True, help=help_text)
        return click.option(flag, field.name, is_flag=True, help=help_text)
    multiple = typing.get_origin(annotation) is tuple
    click_type = (
        changes["type"]
        if "type" in changes
        else _click_type(typing.get_args(annotation)[0] if multiple else annotation)
    )
    kwargs: dict[str, Any] = {"type": click_type, "help": help_text}
    if "metavar" in field.metadata:
        kwargs["metavar"] = field.metadata["metavar"]
    if multiple:
        kwargs["multiple"] = True
    elif required:
        kwargs["required"] = True
    elif default is not None:
        kwargs.update(default=default.value if isinstance(default, enum.Enum) else default, show_default=True)
    kwargs.update(changes)
    if kwargs.get("default") is not None and not multiple:
        kwargs.setdefault("show_default", True)
    return click.option(flag, field.name, **kwargs)


def field_option(cls: type, name: str, **changes: Any) -> Callable[[F], F]:
    """The click option of the field ``name`` of ``cls`` alone (to place it among other options).

    Raises:
        TypeError: ``cls`` has no such field.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        raise TypeError(f"{cls.__name__} has no field {name}")
    return option_for(cls, fields[name], **changes)


def options_from(cls: type, *, overrides: Mapping[str, Callable[[F], F] | None] | None = None) -> Callable[[F], F]:
    """A decorator adding one click option per field of ``cls``, in the fields' order.

    Fields whose metadata says ``cli: False`` get none. ``overrides`` maps a field's name to the option to use
    instead (a parser's text, such as ``--providers``), or to None for a field the command sets otherwise.

    Raises:
        TypeError: a field whose type has no flag (a tuple of providers, say) and no override.
    """
    overrides = dict(overrides or {})
    decorators = []
    for field in dataclasses.fields(cls):
        if field.name in overrides:
            override = overrides.pop(field.name)
            if isinstance(override, dict):
                decorators.append(option_for(cls, field, **override))
            elif override is not None:
                decorators.append(override)
            continue
        if field.metadata.get("cli", True):
            decorators.append(option_for(cls, field))
    if overrides:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(overrides)}")

    def decorate(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return decorate


def take_options(cls: type, params: dict[str, Any], **values: Any) -> Any:
    """``cls`` made from the command's parameters that are its fields (removed from ``params``), ``values`` on top.

    Raises:
        OptionError: from the options class's own checks.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    given = {name: params.pop(name) for name in list(params) if name in fields}
    for name, value in given.items():
        if name in values or not isinstance(value, str):
            continue
        annotation = _without_none(field_type(cls, fields[name]))
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            given[name] = annotation(value)  # a choice's text as its enum member
    return cls(**{**given, **values})
