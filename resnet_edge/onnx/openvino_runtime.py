"""The OpenVINO runtime behind resnet-edge's :class:`~resnet_edge.onnx.runtime.Session` (``openvino-runtime``).

Not an onnxruntime provider: the ``openvino`` package's own CPU plugin, which runs on any x86-64 CPU (the EP plugin
offers no device on AMD), opened behind the same session type so that parity, placement and timing treat it as a
provider (:mod:`resnet_edge.onnx.providers` for its options). Imported only when asked for.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from resnet_edge.errors import InputFileError, OptionError
from resnet_edge.onnx.placement import Placement, ProviderShare
from resnet_edge.onnx.plugins import openvino_runtime_version
from resnet_edge.onnx.providers import OPENVINO_PRECISIONS, OPENVINO_RUNTIME, OPENVINO_RUNTIME_KEYS, Provider

logger = logging.getLogger("resnet_edge")


@dataclass
class CompiledModel:
    """What :func:`resnet_edge.onnx.runtime.open_session` needs to wrap an OpenVINO compiled model in its Session."""

    request: OpenVinoRequest
    input_name: str
    output_name: str
    fixed_batch: int | None
    placement: Placement


class OpenVinoRequest:
    """The part of onnxruntime's InferenceSession that the Session and the timing use (``run``,
    ``get_providers``), over an OpenVINO compiled model: one infer request, reused call after call, as deployed."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled  # its properties say how it runs
        self._request = compiled.create_infer_request()
        self._outputs = {port.get_any_name(): i for i, port in enumerate(compiled.outputs)}

    def run(self, names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        results = self._request.infer({0: next(iter(feeds.values()))})
        wanted = list(names) if names else list(self._outputs)
        return [np.asarray(results[self._outputs[name]]) for name in wanted]

    def get_providers(self) -> list[str]:
        return [OPENVINO_RUNTIME]


def compile_on_cpu(
    loadable: str | bytes,
    label: str,
    provider: Provider,
    *,
    threads: int | None,
    classifier: bool,
    node_count: int | None,
) -> CompiledModel:
    """``loadable`` (a path or serialized bytes; ``label`` names it in errors) compiled by the OpenVINO runtime's CPU
    plugin (module docstring), FP32 unless asked; ``node_count``, the model's nodes when known, for the placement.

    Raises:
        OptionError: an option it does not take, or a bad precision.
        InputFileError: OpenVINO cannot read or compile the model (a QOperator file, say), or it is not a classifier.
    """
    import openvino as ov

    config = cpu_config(provider, threads)
    core = ov.Core()
    try:
        compiled = core.compile_model(core.read_model(loadable), "CPU", config)
    except RuntimeError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip() and not line.startswith("Exception from")]
        raise InputFileError(f"the OpenVINO runtime cannot load {label}: {(lines or ['failed'])[0][:240]}") from None
    inputs, outputs = compiled.inputs, compiled.outputs
    shape = inputs[0].partial_shape
    four_d = shape.rank.is_static and shape.rank.get_length() == 4
    if classifier and (len(inputs) != 1 or inputs[0].element_type != ov.Type.f32 or not four_d):
        raise InputFileError(f"{label}: an image classifier takes one float NCHW tensor")
    if classifier and (outputs[0].partial_shape.rank.is_dynamic or outputs[0].partial_shape.rank.get_length() != 2):
        raise InputFileError(f"{label}: an image classifier outputs (batch, classes) logits")
    placement = _placement(compiled, provider, node_count)
    batch_dim = shape[0]
    logger.debug("OpenVINO runtime session on %s: %s", label, placement.note)
    return CompiledModel(
        request=OpenVinoRequest(compiled),
        input_name=inputs[0].get_any_name(),
        output_name=outputs[0].get_any_name(),
        fixed_batch=batch_dim.get_length() if batch_dim.is_static else None,
        placement=placement,
    )


def cpu_config(provider: Provider, threads: int | None) -> dict[str, str]:
    """The CPU plugin's compile config from ``provider``'s options and the thread count: ``precision``
    (INFERENCE_PRECISION_HINT), ``hint`` (PERFORMANCE_HINT), ``streams`` (NUM_STREAMS), ``pinning``
    (ENABLE_CPU_PINNING, 1 or 0).

    Raises:
        OptionError: an option it does not take, or a bad precision or pinning.
    """
    given = dict(provider.options)
    unknown = sorted(set(given) - OPENVINO_RUNTIME_KEYS)
    if unknown:
        raise OptionError(
            f"provider {provider.value}: the OpenVINO runtime takes no option {', '.join(unknown)}"
            f" (it takes: {', '.join(sorted(OPENVINO_RUNTIME_KEYS))})"
        )
    precision = given.get("precision", "f32").lower()
    if precision not in OPENVINO_PRECISIONS:
        raise OptionError(f"provider {provider.value}: precision is one of {', '.join(OPENVINO_PRECISIONS)}")
    # FP32 by default: the CPU plugin's own default is BF16 on CPUs with AVX-512 BF16 or AMX, which changes every
    # logit (measured on an EPYC Zen 4: a ResNet-50's FP32 file ran BF16, 1.93x onnxruntime FP32, issue 24).
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": given.get("hint", "LATENCY").upper()}
    if "streams" in given:
        config["NUM_STREAMS"] = given["streams"]
    if "pinning" in given:
        if given["pinning"] not in ("0", "1"):
            raise OptionError(f"provider {provider.value}: pinning is 1 (threads pinned to cores) or 0")
        config["ENABLE_CPU_PINNING"] = "YES" if given["pinning"] == "1" else "NO"
    if threads is not None:  # at least 1: open_session checked it
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def _placement(compiled: Any, provider: Provider, node_count: int | None) -> Placement:
    """The whole model on the plugin, noted with the precision it inferred in and its Conv/MatMul layers' own."""
    ran = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    layers: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in ("Convolution", "FullyConnected", "MatMul"):
            layers[f"{kind} {info['runtimePrecision'].astype(str)}"] += 1
    note = f"OpenVINO {openvino_runtime_version()} CPU, inference precision {ran}" + (
        f" ({', '.join(f'{n} {k}' for k, n in sorted(layers.items()))})" if layers else ""
    )
    total = node_count or len(compiled.get_runtime_model().get_ordered_ops())
    return Placement(provider.short, total, [ProviderShare(provider.short, total, {"<subgraph>": 1}, 1)], note=note)
