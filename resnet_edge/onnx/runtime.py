"""The one way to open an onnxruntime session, and the truth about where each node ran.

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
TensorRT gets an engine cache by default (``~/.cache/resnet-edge/tensorrt``, or ``cache=DIR``), ``trt_int8_enable``
for a quantized (QDQ) model, FP16 when asked (``fp16=1``), and CUDA then CPU behind it for what it does not take.

Node placement audit
--------------------
Which provider ran which node is read from onnxruntime's own profiler: each session opens with profiling on, runs
one inference on zeros, and stops profiling (so timed runs are not profiled); the profile's ``Node`` events carry
the op type and the provider of every kernel that ran. This is reliable where the alternatives are not: the session
does not expose its partition, the verbose partitioning log goes to the C++ logger's stderr, and an optimised model
cannot be saved once an EP compiled part of it. What the profile shows, and how it is counted:

* nodes are counted as onnxruntime runs them, after its own fusions (a Conv+Relu is one FusedConv on the CPU EP);
  the layout and copy nodes it inserts (``ReorderInput``/``ReorderOutput``, ``Memcpy*``) are left out;
* an EP that compiles what it takes (OpenVINO, TensorRT) appears as one node per compiled subgraph (OpenVINO:
  ``OpenVINO-EP-subgraph_N``). When the model is at hand as a ModelProto, a subgraph is counted as the model nodes
  it swallowed: the model's node count less the nodes that ran elsewhere. Otherwise it counts as one node.
* compute ops are the op types containing ``Conv``, ``Gemm`` or ``MatMul`` (QLinearConv, ConvInteger, QGemm,
  FusedConv, MatMulInteger ...). When the requested provider ran any of them elsewhere, that is partial placement:
  a warning, or a ProviderError with ``strict``. That is the silent fallback behind "INT8 on CUDA is slower than
  FP32": the QDQ nodes ran on the CPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from resnet_edge.errors import InputFileError, OptionError, ProviderError, ResnetEdgeWarning
from resnet_edge.onnx.op_types import COMPUTE_OPS, INT8_ACTIVATION_OPS

if TYPE_CHECKING:  # this module runs on target devices that have numpy and onnxruntime but not onnx
    import onnx

# What onnxruntime raises for a model it cannot load: the model's fault, not ours.
_LOAD_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidGraph,
    ort_state.InvalidArgument,
    ort_state.NoSuchFile,
    ort_state.InvalidProtobuf,
    ort_state.NotImplemented,
)
logger = logging.getLogger("resnet_edge")
_ORT_ERROR_ONLY = 3  # onnxruntime's log severity: print errors and fatal messages, not its graph-partition chatter
CPU_ORT_NAME = "CPUExecutionProvider"
OPENVINO_PLUGIN = "onnxruntime_ep_openvino"  # the module of PyPI's onnxruntime-ep-openvino
# Nodes onnxruntime inserts for layouts and copies: not the model's, so not counted in the placement.
_INSERTED_OPS = frozenset({"ReorderInput", "ReorderOutput", "MemcpyFromHost", "MemcpyToHost"})
DEFAULT_TRT_CACHE = Path("~/.cache/resnet-edge/tensorrt")


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
}
_BY_ORT_NAME = {info.ort_name: info for info in PROVIDERS.values()}
_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_TRT_SHORT_KEYS = {"fp16": "trt_fp16_enable", "int8": "trt_int8_enable", "cache": "trt_engine_cache_path"}


@dataclass(frozen=True)
class Provider:
    """An execution provider as asked for: a short name from :data:`PROVIDERS`, or an onnxruntime name, plus options.

    ``Provider.CPU``, ``Provider.CUDA``, ``Provider.TENSORRT`` and ``Provider.OPENVINO`` are the plain named ones;
    :func:`parse_provider` reads the text form that :attr:`value` writes.
    """

    name: str  # "cpu", "cuda", "tensorrt", "openvino", or an onnxruntime name such as "QNNExecutionProvider"
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


def format_providers(providers: Sequence[Provider]) -> str:
    """The ``--providers`` text for ``providers``; :func:`parse_providers` reads it back."""
    return ",".join(p.value for p in providers)


# --- what is installed --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderStatus:
    """Whether a provider can run here, how it would be reached, and how to add it."""

    name: str  # short name
    ort_name: str
    available: bool
    via: str  # "built in", "plugin onnxruntime-ep-openvino 1.8.1 (devices: CPU)", or why not
    install: str


_plugin_state: dict[str, Any] = {}


def openvino_plugin() -> tuple[list[Any], str]:
    """The OpenVINO plugin's devices (registered once per process) and a line on its state.

    Returns:
        ``(devices, note)``: ``devices`` is empty when the plugin is not installed or offers no device here.
    """
    if "devices" not in _plugin_state:
        _plugin_state["devices"], _plugin_state["note"] = _register_openvino_plugin()
    return _plugin_state["devices"], _plugin_state["note"]


def _register_openvino_plugin() -> tuple[list[Any], str]:
    import importlib
    import importlib.metadata

    try:
        plugin = importlib.import_module(OPENVINO_PLUGIN)
    except ImportError:
        return [], "plugin onnxruntime-ep-openvino not installed"
    if not hasattr(ort, "register_execution_provider_library"):
        return [], f"onnxruntime {ort.__version__} cannot load EP plugins (1.23 or later can)"
    name = plugin.get_ep_name()
    version = importlib.metadata.version("onnxruntime-ep-openvino")
    if not any(d.ep_name == name for d in ort.get_ep_devices()):
        try:
            ort.register_execution_provider_library(name, plugin.get_library_path())
        except Exception as exc:  # a broken or mismatched plugin library: report it, do not crash a command
            return [], f"plugin onnxruntime-ep-openvino {version} failed to load: {str(exc).splitlines()[0][:200]}"
    devices = [d for d in ort.get_ep_devices() if d.ep_name == name]
    if not devices:
        return [], (
            f"plugin onnxruntime-ep-openvino {version} is installed but offers no device here (it serves Intel"
            " CPUs, GPUs and NPUs only)"
        )
    kinds = ", ".join(str(d.device.type).rsplit(".", 1)[-1] for d in devices)
    return devices, f"plugin onnxruntime-ep-openvino {version} (devices: {kinds})"


def available_providers() -> list[str]:
    """onnxruntime's names of the providers that can run here, plugins included, in onnxruntime's order."""
    names = list(ort.get_available_providers())
    devices, _ = openvino_plugin()
    if devices and PROVIDERS["openvino"].ort_name not in names:
        names.insert(0, PROVIDERS["openvino"].ort_name)
    return names


def provider_statuses() -> list[ProviderStatus]:
    """Every provider of the table and every other one onnxruntime offers: available or not, and how to add it."""
    built_in = list(ort.get_available_providers())
    devices, plugin_note = openvino_plugin()
    rows = []
    for info in PROVIDERS.values():
        if info.ort_name in built_in:
            rows.append(ProviderStatus(info.short, info.ort_name, True, "built into onnxruntime", info.install))
        elif info.short == "openvino":
            rows.append(ProviderStatus(info.short, info.ort_name, bool(devices), plugin_note, info.install))
        else:
            rows.append(ProviderStatus(info.short, info.ort_name, False, "not in this onnxruntime build", info.install))
    for name in built_in:
        if name not in _BY_ORT_NAME:
            rows.append(ProviderStatus(short_name(name), name, True, "built into onnxruntime", "-"))
    return rows


# --- placement ----------------------------------------------------------------------------------------------------


def is_compute_op(op_type: str) -> bool:
    return any(marker in op_type for marker in COMPUTE_OPS)  # QLinearConv, ConvInteger, FusedConv, ...


@dataclass(frozen=True)
class ProviderShare:
    """The nodes one provider ran."""

    provider: str  # short name
    nodes: int
    op_types: dict[str, int]  # op type -> count; a compiled subgraph appears as "<subgraph>"
    subgraphs: int = 0  # compiled subgraphs among them (OpenVINO, TensorRT)


@dataclass(frozen=True)
class Placement:
    """Where the nodes of a session ran (module docstring: how it is read and counted)."""

    requested: str  # short name
    total: int
    shares: list[ProviderShare]
    compute_elsewhere: dict[str, int] = field(default_factory=dict)  # compute op types run off the requested provider
    # The file's own node count, where known: ``total`` counts nodes as onnxruntime ran them, after its fusions, so
    # the two differ (24 run of a resnet20's 52), and a graph with outputs exposed fuses less (issue 22).
    model_nodes: int | None = None

    @property
    def partial(self) -> bool:
        """The requested provider left compute ops to another one, or took no node at all."""
        return bool(self.compute_elsewhere) or not any(s.provider == self.requested for s in self.shares)

    def describe(self) -> str:
        """``openvino: 121 of 123 nodes (1 compiled subgraph); cpu: 2 (Flatten, Softmax)``; with the file's own
        count when it differs: ``cpu: 37 of 37 nodes as onnxruntime ran them (145 in the file)``."""
        parts = []
        counted = self._counted()
        for share in self.shares:
            text = f"{share.provider}: {share.nodes}" + (
                f" of {self.total} {counted}" if share.provider == self.requested else ""
            )
            if share.subgraphs:
                text += f" ({share.subgraphs} compiled subgraph{'s' if share.subgraphs > 1 else ''})"
            elif share.provider != self.requested:
                ops = sorted(share.op_types)
                text += f" ({', '.join(ops[:6])}{', ...' if len(ops) > 6 else ''})"
            parts.append(text)
        if not any(s.provider == self.requested for s in self.shares):
            parts.insert(0, f"{self.requested}: 0 of {self.total} {counted}")
        return "; ".join(parts)

    def _counted(self) -> str:
        if self.model_nodes is None or self.model_nodes == self.total:
            return "nodes"
        return f"nodes as onnxruntime ran them ({self.model_nodes} in the file)"


@dataclass(frozen=True)
class ExecutedNode:
    """One kernel onnxruntime ran, as its profiler records it (the raw material of the placement audit and of
    :mod:`resnet_edge.quantization.coverage`)."""

    name: str
    op_type: str
    provider: str  # onnxruntime's name, e.g. CPUExecutionProvider
    input_types: tuple[str, ...] = ()  # element types of the inputs it was fed, e.g. ("uint8", "float", ...)
    output_shape: tuple[int, ...] = ()  # its first output's shape in that run (NHWC for the NHWC kernels)

    @property
    def float_input(self) -> bool:
        return bool(self.input_types) and self.input_types[0] in ("float", "float16", "double", "bfloat16")

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "op_type": self.op_type,
            "provider": self.provider,
            "input_types": list(self.input_types),
            "output_shape": list(self.output_shape),
        }

    @classmethod
    def from_dict(cls, data: dict) -> ExecutedNode:
        return cls(
            str(data["name"]),
            str(data["op_type"]),
            str(data.get("provider", "")),
            tuple(str(t) for t in data.get("input_types", ())),
            tuple(int(d) for d in data.get("output_shape", ())),
        )


def executed_nodes_from_profile(events: Sequence[dict]) -> list[ExecutedNode]:
    """The kernels of the first inference in an onnxruntime profile (its parsed JSON events), in execution order.

    A node that a fusion produced keeps the name of the node it replaced, with a ``_token_N`` suffix.
    """
    seen: dict[str, ExecutedNode] = {}
    for event in sorted((e for e in events if e.get("cat") == "Node"), key=lambda e: e.get("ts", 0)):
        name = str(event.get("name", ""))
        args = event.get("args") or {}
        if not name.endswith("_kernel_time") or "op_name" not in args:
            continue
        name = name[: -len("_kernel_time")]
        types = tuple(next(iter(t)) for t in args.get("input_type_shape", []) if isinstance(t, dict) and t)
        outputs = [next(iter(t.values())) for t in args.get("output_type_shape", []) if isinstance(t, dict) and t]
        shape = tuple(int(d) for d in outputs[0]) if outputs else ()
        seen.setdefault(name, ExecutedNode(name, str(args["op_name"]), str(args.get("provider", "")), types, shape))
    return list(seen.values())


def placement_from_json(data: dict | None, *, model_nodes: int | None = None) -> Placement | None:
    """A :class:`Placement` from its JSON form (``dataclasses.asdict``), as a device runner returns it.

    Args:
        model_nodes: the file's node count, which the host knows and a device without onnx does not.
    """
    if not data:
        return None
    shares = [ProviderShare(**share) for share in data.get("shares", [])]
    return Placement(
        data["requested"],
        data["total"],
        shares,
        dict(data.get("compute_elsewhere", {})),
        model_nodes if model_nodes is not None else data.get("model_nodes"),
    )


def placement_from_profile(events: Sequence[dict], requested: str, *, model_nodes: int | None = None) -> Placement:
    """The placement recorded in an onnxruntime profile (the parsed JSON list of events) of one inference.

    Args:
        requested: the short name of the provider asked for.
        model_nodes: the model's node count, to count compiled subgraphs as the nodes they swallowed.
    """
    seen: dict[str, tuple[str, str]] = {}  # node name -> (provider, op type), first run only
    for event in events:
        args = event.get("args") or {}
        if (
            event.get("cat") != "Node"
            or "provider" not in args
            or not str(event.get("name", "")).endswith("_kernel_time")
        ):
            continue
        name = str(event["name"])[: -len("_kernel_time")]
        op_type = str(args.get("op_name", "?"))
        if op_type in _INSERTED_OPS:
            continue
        seen.setdefault(name, (short_name(str(args["provider"])), op_type))
    per: dict[str, Counter] = {}
    subgraphs: Counter = Counter()
    for provider, op_type in seen.values():
        compiled = "subgraph" in op_type.lower() or op_type.startswith(("TRTKernel", "TensorrtExecutionProvider"))
        per.setdefault(provider, Counter())["<subgraph>" if compiled else op_type] += 1
        subgraphs[provider] += compiled
    counts = {p: sum(c.values()) for p, c in per.items()}
    compiled_total = sum(subgraphs.values())
    if model_nodes is not None and compiled_total:
        plain = sum(counts.values()) - compiled_total
        spare = max(model_nodes - plain, compiled_total)
        for provider, n in subgraphs.items():  # share the swallowed nodes among EPs by their subgraph count
            counts[provider] += round(spare * n / compiled_total) - n
    shares = sorted(
        (ProviderShare(p, counts[p], dict(per[p]), subgraphs[p]) for p in per),
        key=lambda s: (s.provider != requested, -s.nodes, s.provider),
    )
    elsewhere: Counter = Counter(op for p, op in seen.values() if p != requested and is_compute_op(op))
    return Placement(requested, sum(counts.values()), shares, dict(elsewhere), model_nodes)


# --- sessions -----------------------------------------------------------------------------------------------------


@dataclass
class Session:
    """An onnxruntime session and the truth about where it runs."""

    session: ort.InferenceSession
    requested: Provider
    providers_used: list[str]
    input_name: str
    output_name: str
    threads: int | None
    fixed_batch: int | None  # the batch size a model with a fixed batch dimension demands; None when dynamic
    placement: Placement | None = None  # None when not audited (a model whose input shape is not fixed)
    executed: list[ExecutedNode] = field(default_factory=list)  # the audited inference's kernels, in order

    @property
    def fell_back(self) -> bool:
        """True when the requested provider is not the one the session runs on."""
        return self.providers_used[0] != self.requested.ort_name

    @property
    def ran_on(self) -> str:
        """The short name of the provider that really runs the model (``cpu``, ``openvino``, ``ep:NAME`` ...)."""
        return short_name(self.providers_used[0])

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def predict(self, images: np.ndarray, outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        """``outputs`` (default: the logits) for any number of images, fed in the model's fixed batch if it has one."""
        names = list(outputs) if outputs else [self.output_name]
        parts = [
            [out[:real] for out in self.session.run(names, {self.input_name: chunk})]
            for chunk, real in in_fixed_batches(images, self.fixed_batch)
        ]
        return [np.concatenate([part[i] for part in parts]) for i in range(len(names))]

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.predict(images)[0]


def in_fixed_batches(images: np.ndarray, fixed_batch: int | None) -> Iterator[tuple[np.ndarray, int]]:
    """Chunks of ``fixed_batch`` images (the last one padded with copies of its final image), each with its count
    of real images; a dynamic-batch model (None) takes all images in one chunk."""
    if fixed_batch is None:
        yield images, len(images)
        return
    for start in range(0, len(images), fixed_batch):
        chunk = images[start : start + fixed_batch]
        real = len(chunk)
        if real < fixed_batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed_batch - real, axis=0)])
        yield chunk, real


def open_session(
    model: Path | str | onnx.ModelProto | bytes,
    provider: Provider = Provider.CPU,
    *,
    strict: bool = False,
    threads: int | None = None,
    spinning: bool = False,
    classifier: bool = True,
    audit: bool = True,
    optimization: str = "all",
    session_config: Mapping[str, str] | None = None,
) -> Session:
    """Open ``model`` on ``provider`` and audit where it really runs.

    Args:
        model: a path, a ModelProto or serialized bytes.
        provider: the execution provider asked for, with its options.
        strict: raise instead of falling back to the CPU when ``provider`` is not there, and when it leaves compute
            ops to another provider (partial placement).
        threads: intra-op threads (for OpenVINO: its INFERENCE_NUM_THREADS); onnxruntime's default when None.
        spinning: let idle worker threads spin between calls. Off by default: whenever several sessions (or a
            session and PyTorch) take turns in one process, an idle pool that spins takes cores from the one that
            is running, and interleaved timings become meaningless.
        classifier: require one float NCHW input and (batch, classes) logits as the first output; off only for
            analysis graphs that expose intermediate tensors first.
        audit: profile one inference on zeros to record where each node ran (:class:`Placement`), and warn (or with
            ``strict`` raise) when the requested provider left compute ops to another.
        optimization: onnxruntime's graph optimisation level, ``basic``, ``extended`` or ``all`` (the default:
            measured fastest, see benchmarks/providers.py).
        session_config: more session config entries (``session.qdqisint8allowed`` and the like), set last.

    Raises:
        ProviderError: ``strict`` and the provider is not available, failed to initialise, or took only part of
            the compute ops.
        OptionError: a bad thread count or provider option.
        InputFileError: onnxruntime cannot load the model, or it is not an image classifier.
    """
    options = ort.SessionOptions()
    options.log_severity_level = _ORT_ERROR_ONLY
    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization not in levels:
        raise OptionError(f"optimization must be one of {', '.join(levels)}, got {optimization!r}")
    options.graph_optimization_level = levels[optimization]
    if threads is not None:
        if threads < 1:
            raise OptionError(f"threads must be at least 1, got {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    for key, value in (session_config or {}).items():
        options.add_session_config_entry(key, value)
    chain = _provider_chain(provider, options, threads=threads, quantized=_looks_quantized(model), strict=strict)
    # The audit's profile goes to a private folder that is removed whatever happens below, Ctrl-C included.
    profile_dir = tempfile.mkdtemp(prefix="resnet-edge-profile-") if audit else None
    if profile_dir:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(profile_dir, "profile")
    session = None
    try:
        try:
            session = ort.InferenceSession(_as_loadable(model), sess_options=options, providers=chain)
        except _LOAD_ERRORS as exc:
            first = str(exc).strip().splitlines()[0]
            if provider.name != "cpu" and ("provider" in first.lower() or provider.ort_name in first):
                _fallback(provider, f"{provider.ort_name} failed: {first[:240]}", strict)
                return open_session(
                    model,
                    Provider.CPU,
                    threads=threads,
                    spinning=spinning,
                    classifier=classifier,
                    optimization=optimization,
                    session_config=session_config,
                )
            raise InputFileError(f"onnxruntime cannot load {_describe(model)}: {first[:240]}") from None
        used = list(session.get_providers())
        _check_options_taken(session, provider, chain)
        logger.debug("session on %s: requested %s, providers %s", _describe(model), provider.value, ", ".join(used))
        fell_back = used[0] != provider.ort_name
        if provider.name != "cpu" and fell_back and provider.ort_name in available_providers():
            # Listed as available, yet the session came up without it: usually a missing CUDA/cuDNN library.
            _fallback(provider, f"{provider.ort_name} failed to initialise (session runs on {used[0]})", strict)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if classifier and (len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4):
            found = ", ".join(f"{i.type} {i.shape}" for i in inputs)
            raise InputFileError(f"{_describe(model)} takes {found}; an image classifier takes one float NCHW tensor")
        if classifier and len(outputs[0].shape) != 2:
            raise InputFileError(
                f"{_describe(model)} outputs {outputs[0].shape}; an image classifier outputs (batch, classes) logits"
            )
        placement, executed = None, []
        if profile_dir:
            requested = provider.short if not fell_back else short_name(used[0])
            placement, executed = _audit(session, requested, model_nodes=_node_count(model))
    finally:
        _remove_profile(profile_dir, session)
    if placement is not None and placement.partial and not fell_back and provider.name != "cpu":
        message = f"requested {provider.value} but it left compute ops to another provider: {placement.describe()}"
        if strict:
            raise ProviderError(message)
        warnings.warn(message, ResnetEdgeWarning, stacklevel=2)
    batch_dim = inputs[0].shape[0]
    return Session(
        session=session,
        requested=provider,
        providers_used=used,
        input_name=inputs[0].name,
        output_name=outputs[0].name,
        threads=threads,
        fixed_batch=batch_dim if isinstance(batch_dim, int) else None,
        placement=placement,
        executed=executed,
    )


def _check_options_taken(session: ort.InferenceSession, provider: Provider, chain: list[Any] | None) -> None:
    """Refuse provider options onnxruntime does not know: it ignores them, and the rows would be labelled as if they
    applied. The provider's effective options (``get_provider_options()``) list every key it takes.

    Raises:
        OptionError: a key the provider does not take, naming the ones it does.
    """
    given: dict[str, str] = {}
    for entry in chain or []:  # the options as passed (a few short keys translated), for this provider
        if isinstance(entry, tuple) and entry[0] == provider.ort_name:
            given = dict(entry[1])
    taken = session.get_provider_options().get(provider.ort_name)
    if not given or taken is None:  # nothing asked, or the provider is not in the session (a plugin, a fallback)
        return
    unknown = sorted(set(given) - set(taken))
    if unknown:
        raise OptionError(
            f"provider {provider.value}: onnxruntime's {provider.ort_name} takes no option {', '.join(unknown)}"
            f" (it takes: {', '.join(sorted(taken))})"
        )


def _provider_chain(
    provider: Provider, options: ort.SessionOptions, *, threads: int | None, quantized: bool, strict: bool
) -> list[Any] | None:
    """The providers list for InferenceSession, or None when a plugin was added to ``options`` instead."""
    cpu = [CPU_ORT_NAME]
    if provider.name == "cpu":
        return [(CPU_ORT_NAME, dict(provider.options))] if provider.options else cpu
    built_in = list(ort.get_available_providers())
    user = dict(provider.options)
    if provider.name == "openvino":
        devices, note = openvino_plugin() if provider.ort_name not in built_in else ([], "")
        ov_options = _openvino_options(user, threads)
        if provider.ort_name in built_in:
            return [(provider.ort_name, {"device_type": "CPU", **ov_options}), *cpu]
        wanted = ov_options.pop("device_type", "CPU").upper()
        chosen = [d for d in devices if str(d.device.type).rsplit(".", 1)[-1] == wanted]
        if chosen:
            options.add_provider_for_devices(chosen, ov_options)
            return None
        reason = note if not devices else f"the OpenVINO plugin has no {wanted} device ({note})"
        _fallback(provider, f"{provider.ort_name} is not available: {reason}", strict)
        return cpu
    if provider.ort_name not in built_in:
        _fallback(provider, f"{provider.ort_name} is not available (available: {', '.join(built_in)})", strict)
        return cpu
    if provider.name == "tensorrt":
        behind = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in built_in else []
        return [(provider.ort_name, _tensorrt_options(user, quantized)), *behind, *cpu]
    return [(provider.ort_name, user), *cpu]


def _openvino_options(user: dict[str, str], threads: int | None) -> dict[str, str]:
    """Provider options for OpenVINO: ``hint`` and ``streams`` and the thread count go into its ``load_config``."""
    user = dict(user)
    device = user.get("device_type", "CPU").upper()
    config: dict[str, str] = {"PERFORMANCE_HINT": user.pop("hint", "LATENCY").upper()}
    if "streams" in user:
        config["NUM_STREAMS"] = user.pop("streams")
    if threads is not None and device == "CPU":
        config["INFERENCE_NUM_THREADS"] = str(threads)
    if "load_config" in user:
        try:
            json.loads(user["load_config"])
        except ValueError:
            raise OptionError(f"openvino load_config is not JSON: {user['load_config']!r}") from None
        return user
    return {**user, "load_config": json.dumps({device: config})}


def _tensorrt_options(user: dict[str, str], quantized: bool) -> dict[str, str]:
    """TensorRT: an engine cache (default or ``cache=DIR``), INT8 for a quantized model, FP16 when asked."""
    options = {_TRT_SHORT_KEYS.get(k, k): v for k, v in user.items()}
    cache = Path(options.get("trt_engine_cache_path", str(DEFAULT_TRT_CACHE))).expanduser()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"tensorrt engine cache folder {cache}: {exc.strerror}") from None
    options = {"trt_engine_cache_enable": "True", **options, "trt_engine_cache_path": str(cache)}
    if quantized:
        options.setdefault("trt_int8_enable", "True")  # QDQ scales come with the model: no calibration table needed
    for key in ("trt_fp16_enable", "trt_int8_enable", "trt_engine_cache_enable"):
        if key in options:
            options[key] = "True" if options[key].strip().lower() in ("1", "true", "yes", "on") else "False"
    return options


def _audit(
    session: ort.InferenceSession, requested: str, *, model_nodes: int | None
) -> tuple[Placement | None, list[ExecutedNode]]:
    """Run one profiled inference on zeros, stop profiling, and read the placement and the kernels from the profile
    (the caller removes the profile's folder)."""
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        dtype = np.float16 if i.type == "tensor(float16)" else np.float32
        feeds[i.name] = np.zeros(shape, dtype)
    try:
        session.run(None, feeds)
    except Exception:  # a model with symbolic spatial sizes needs real sizes: no audit then
        return None, []
    events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    return placement_from_profile(events, requested, model_nodes=model_nodes), executed_nodes_from_profile(events)


def _remove_profile(profile_dir: str | None, session: ort.InferenceSession | None) -> None:
    """End the session's profiling (if still on) and remove the profile's folder; safe to call twice."""
    if profile_dir is None:
        return
    if session is not None:
        with contextlib.suppress(Exception):  # already ended
            session.end_profiling()
    shutil.rmtree(profile_dir, ignore_errors=True)


def _looks_quantized(model: Path | str | onnx.ModelProto | bytes) -> bool:
    graph = getattr(model, "graph", None)
    return graph is not None and any(n.op_type in INT8_ACTIVATION_OPS for n in graph.node)


def _node_count(model: Path | str | onnx.ModelProto | bytes) -> int | None:
    graph = getattr(model, "graph", None)
    return len(graph.node) if graph is not None else None


def _fallback(provider: Provider, reason: str, strict: bool) -> None:
    if strict:
        raise ProviderError(f"requested {provider.value}: {reason}")
    warnings.warn(f"requested {provider.value} but {reason}; running on cpu instead", ResnetEdgeWarning, stacklevel=4)


def _as_loadable(model: Path | str | onnx.ModelProto | bytes) -> str | bytes:
    if isinstance(model, bytes):
        return model
    if isinstance(model, (str, Path)):
        return str(model)
    return model.SerializeToString()  # an onnx.ModelProto


def _describe(model: Path | str | onnx.ModelProto | bytes) -> str:
    return str(model) if isinstance(model, (str, Path)) else "the model"
