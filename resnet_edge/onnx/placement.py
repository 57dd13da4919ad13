"""Where each node of a session ran, read from onnxruntime's profile (no onnxruntime import: the events are JSON).

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

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from resnet_edge.onnx.op_types import COMPUTE_OPS
from resnet_edge.onnx.providers import short_name

# Nodes onnxruntime inserts for layouts and copies: not the model's, so not counted in the placement.
_INSERTED_OPS = frozenset({"ReorderInput", "ReorderOutput", "MemcpyFromHost", "MemcpyToHost"})


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
    note: str = ""  # what else the runtime said: the OpenVINO runtime's inference precision and its layers' precisions

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
        return "; ".join(parts + ([self.note] if self.note else []))

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
        model_nodes=model_nodes if model_nodes is not None else data.get("model_nodes"),
        note=str(data.get("note", "")),
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
    return Placement(requested, sum(counts.values()), shares, dict(elsewhere), model_nodes=model_nodes)
