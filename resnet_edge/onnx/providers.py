"""The execution providers: the table of the named ones, the :class:`Provider` value type and its text form.

This module imports only the standard library (no onnxruntime), so the options classes and the CLI parse a
``--providers`` string without loading onnxruntime; it runs on Python 3.8 (the device runner ships it).

Execution providers
-------------------
The table :data:`PROVIDERS` is the only place that knows them: ``cpu``, ``cuda``, ``tensorrt``, ``openvino``, and
any other onnxruntime provider by its own name, ``ep:QNNExecutionProvider``. A provider may carry options, written
``name[key=value;key=value]``; a ``--providers`` list separates providers with commas, which may also appear inside
the brackets (an OpenVINO ``load_config`` is JSON)::

    cpu,openvino[hint=THROUGHPUT]
    tensorrt[fp16=1;cache=/var/cache/trt]
    ep:QNNExecutionProvider[backend_path=libQnnHtp.so]

Keys are letters, digits, ``_``, ``.`` and ``-``; a value is anything but ``;`` and ``]``. Options are passed to
onnxruntime as that provider's options, except a few short keys this module translates (``tensorrt``: ``fp16``,
``int8``, ``cache``; ``openvino``: ``hint``, ``streams``). Asking for a provider that is not there is never
silent: strictly (``--strict-ep``) it is a :class:`ProviderError` that lists what is available; otherwise a
warning, and the session runs on the CPU.

OpenVINO comes two ways, both tried: the ``onnxruntime-ep-openvino`` plugin (``pip install 'resnet-edge[openvino]'``),
registered once per process with ``onnxruntime.register_execution_provider_library`` and selected through
``SessionOptions.add_provider_for_devices`` with the devices ``onnxruntime.get_ep_devices()`` lists for it; or an
onnxruntime build that bundles it (``onnxruntime-openvino``), through the classic providers list. Threads and the
latency hint go through OpenVINO's ``load_config`` (``{"CPU": {"INFERENCE_NUM_THREADS": "2", "PERFORMANCE_HINT":
"LATENCY"}}``): the plugin ignores onnxruntime's ``intra_op_num_threads``. Found on the way: the plugin (1.8.1) offers
devices only for Intel hardware; on an AMD EPYC it registers, yet ``get_ep_devices()`` lists no OpenVINO device, so
it is reported as not available, while the bundled build (1.24.1) runs OpenVINO's CPU plugin there.
The OpenVINO runtime itself (``openvino-runtime``: the ``openvino`` package, ``pip install 'resnet-edge[openvino]'``)
is a backend beside onnxruntime's providers: it runs on any x86-64 CPU, AMD included, where the EP plugin offers no
device, and measured faster than onnxruntime on resnet-edge's own INT8 QDQ files (issue 24). It is opened behind the
same session type (:mod:`resnet_edge.onnx.runtime`), so parity, placement and timing treat it as a provider. Its
CPU plugin runs BF16 by default on CPUs with AVX-512 BF16 or AMX: here it runs FP32 unless asked
(``openvino-runtime[precision=bf16]``), so that parity holds, and the placement says which precision it ran.
Options: ``precision`` (f32, bf16, f16), ``hint`` (LATENCY, THROUGHPUT), ``streams``, ``pinning`` (1 or 0: its
threads pinned to cores or not). It reads QDQ files, not onnxruntime's QOperator ops (``com.microsoft.QLinearConv``).
onnxruntime's session options (spinning, graph optimisation level, session config entries) do not apply to it.
TensorRT gets an engine cache by default (``~/.cache/resnet-edge/tensorrt``, or ``cache=DIR``), ``trt_int8_enable``
for a quantized (QDQ) model, FP16 when asked (``fp16=1``), and CUDA then CPU behind it for what it does not take.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from resnet_edge.errors import OptionError

CPU_ORT_NAME = "CPUExecutionProvider"
# Not an onnxruntime provider: the name under which the OpenVINO runtime itself appears in provider lists.
OPENVINO_RUNTIME = "OpenVINORuntime"
# The OpenVINO runtime's options: INFERENCE_PRECISION_HINT values, and the option keys it takes.
OPENVINO_PRECISIONS = ("f32", "bf16", "f16")
OPENVINO_RUNTIME_KEYS = frozenset({"precision", "hint", "streams", "pinning"})


@dataclass(frozen=True)
class ProviderInfo:
    """One row of the provider table: a short name, onnxruntime's name, and how a user adds it."""

    short: str
    ort_name: str
    install: str


# The provider table: the one place that knows the named providers.
PROVIDERS: dict[str, ProviderInfo] = {
    "cpu": ProviderInfo("cpu", CPU_ORT_NAME, "always there: pip install 'resnet-edge[cpu]'"),
    "cuda": ProviderInfo(
        "cuda",
        "CUDAExecutionProvider",
        "pip install 'resnet-edge[gpu]' (onnxruntime-gpu, instead of onnxruntime) with an NVIDIA driver, CUDA 12 and"
        " cuDNN 9",
    ),
    "tensorrt": ProviderInfo(
        "tensorrt",
        "TensorrtExecutionProvider",
        "pip install 'resnet-edge[gpu]' tensorrt (the TensorRT libraries on LD_LIBRARY_PATH) with an NVIDIA GPU",
    ),
    "openvino": ProviderInfo(
        "openvino",
        "OpenVINOExecutionProvider",
        "pip install 'resnet-edge[openvino]' (the onnxruntime-ep-openvino plugin; Intel CPUs, GPUs and NPUs), or"
        " replace onnxruntime by onnxruntime-openvino",
    ),
    "openvino-runtime": ProviderInfo(
        "openvino-runtime",
        OPENVINO_RUNTIME,
        "pip install 'resnet-edge[openvino]' (the openvino package: the OpenVINO runtime itself, on any x86-64 CPU,"
        " AMD included)",
    ),
}
_BY_ORT_NAME = {info.ort_name: info for info in PROVIDERS.values()}
_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Provider:
    """An execution provider as asked for: a short name from :data:`PROVIDERS`, or an onnxruntime name, plus options.

    ``Provider.CPU``, ``Provider.CUDA``, ``Provider.TENSORRT`` and ``Provider.OPENVINO`` are the plain named ones;
    :func:`parse_provider` reads the text form that :attr:`value` writes.
    """

    name: str  # a short name of PROVIDERS ("cpu", "openvino-runtime" ...), or an onnxruntime name
    options: tuple[tuple[str, str], ...] = ()  # sorted by key

    CPU: ClassVar[Provider]
    CUDA: ClassVar[Provider]
    TENSORRT: ClassVar[Provider]
    OPENVINO: ClassVar[Provider]

    @property
    def ort_name(self) -> str:
        info = PROVIDERS.get(self.name)
        return info.ort_name if info else self.name

    @property
    def short(self) -> str:
        """``cpu`` ... for the named providers, ``ep:NAME`` for the others."""
        return self.name if self.name in PROVIDERS else f"ep:{self.name}"

    @property
    def value(self) -> str:
        """The text form, which :func:`parse_provider` reads back to an equal Provider."""
        if not self.options:
            return self.short
        return f"{self.short}[{';'.join(f'{k}={v}' for k, v in self.options)}]"

    def __str__(self) -> str:
        return self.value


Provider.CPU = Provider("cpu")
Provider.CUDA = Provider("cuda")
Provider.TENSORRT = Provider("tensorrt")
Provider.OPENVINO = Provider("openvino")
_PLAIN = {p.name: p for p in (Provider.CPU, Provider.CUDA, Provider.TENSORRT, Provider.OPENVINO)}


def short_name(ort_name: str) -> str:
    """``CPUExecutionProvider`` -> ``cpu``; a provider outside the table -> ``ep:NAME``."""
    info = _BY_ORT_NAME.get(ort_name)
    return info.short if info else f"ep:{ort_name}"


def parse_provider(text: str) -> Provider:
    """One provider: ``name`` or ``name[key=value;...]`` (module docstring).

    Raises:
        OptionError: an unknown short name, a malformed option list, or a key given twice.
    """
    raw = text.strip()
    head, sep, rest = raw.partition("[")
    head = head.strip()
    options: dict[str, str] = {}
    if sep:
        if not rest.endswith("]"):
            raise OptionError(f"provider {raw!r}: options go in brackets, name[key=value;key=value]")
        body = rest[:-1]
        for item in body.split(";") if body.strip() else []:
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not _KEY.fullmatch(key) or "]" in value or "[" in value:
                raise OptionError(f"provider {raw!r}: bad option {item!r}; write key=value, separated by ';'")
            if key in options:
                raise OptionError(f"provider {raw!r}: option {key!r} is given twice")
            options[key] = value.strip()
    lowered = head.lower()
    if lowered.startswith("ep:"):
        ort_name = head[3:].strip()
        if not _NAME.fullmatch(ort_name):
            raise OptionError(f"provider {raw!r}: after 'ep:' comes onnxruntime's name, e.g. ep:QNNExecutionProvider")
        name = _BY_ORT_NAME[ort_name].short if ort_name in _BY_ORT_NAME else ort_name
    elif lowered in PROVIDERS:
        name = lowered
    else:
        raise OptionError(
            f"unknown execution provider {head!r}; choose from: {', '.join(PROVIDERS)}, or ep:<onnxruntime name>"
        )
    if options and name == "cpu":
        # onnxruntime's CPU provider takes no provider options and ignores any it is given (get_provider_options()
        # answers {}): accepted, the rows would be labelled as if they applied (issue 21).
        raise OptionError(
            f"provider {raw!r}: the CPU provider takes no options ({', '.join(options)}); threads are --threads"
        )
    if not options and name in _PLAIN:
        return _PLAIN[name]  # the same object as Provider.CPU ..., so that code comparing with ``is`` keeps working
    return Provider(name, tuple(sorted(options.items())))


def split_provider_list(text: str) -> list[str]:
    """``"cpu,openvino[a=1,2]"`` -> ``["cpu", "openvino[a=1,2]"]``: commas inside brackets do not split."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in (part.strip() for part in parts) if p]


def parse_providers(names: str | Sequence[str | Provider]) -> list[Provider]:
    """``"cpu,cuda"`` (or a list of names or Providers) as providers, in order, without repeats.

    Raises:
        OptionError: an unknown or malformed provider; the message lists the known ones.
    """
    items = split_provider_list(names) if isinstance(names, str) else list(names)
    providers: list[Provider] = []
    for raw in items:
        provider = raw if isinstance(raw, Provider) else parse_provider(raw)
        if provider not in providers:
            providers.append(provider)
    if not providers:
        raise OptionError(f"no execution provider given; choose from: {', '.join(PROVIDERS)}, or ep:<onnxruntime name>")
    return providers
