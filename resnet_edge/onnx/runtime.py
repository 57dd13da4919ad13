"""The one way to open an onnxruntime session: providers chained, their options, the placement audit.

The providers and their text form are :mod:`resnet_edge.onnx.providers`; which of them load here,
:mod:`resnet_edge.onnx.plugins`; the audit of where each node ran, :mod:`resnet_edge.onnx.placement`. Asking for a
provider that is not there is never silent: strictly (``--strict-ep``) it is a :class:`ProviderError` that lists
what is available; otherwise a warning, and the session runs on the CPU. Threads and the latency hint go to OpenVINO
through its ``load_config`` (``{"CPU": {"INFERENCE_NUM_THREADS": "2", "PERFORMANCE_HINT": "LATENCY"}}``): the plugin
ignores onnxruntime's ``intra_op_num_threads``. TensorRT gets an engine cache by default
(``~/.cache/resnet-edge/tensorrt``, or ``cache=DIR``), ``trt_int8_enable`` for a quantized (QDQ) model, FP16 when
asked (``fp16=1``), and CUDA then CPU behind it for what it does not take.

The OpenVINO runtime itself (``openvino-runtime``) opens behind the same :class:`Session`
(:mod:`resnet_edge.onnx.openvino_runtime`); onnxruntime's session options do not apply to it.

Each session opens with profiling on, runs one inference on zeros, and stops profiling (so timed runs are not
profiled); :mod:`resnet_edge.onnx.placement` reads the profile.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from resnet_edge.errors import InputFileError, OptionError, ProviderError, ResnetEdgeWarning
from resnet_edge.onnx.op_types import INT8_ACTIVATION_OPS
from resnet_edge.onnx.placement import ExecutedNode, Placement, executed_nodes_from_profile, placement_from_profile
from resnet_edge.onnx.plugins import available_providers, openvino_plugin, openvino_runtime_version
from resnet_edge.onnx.providers import CPU_ORT_NAME, OPENVINO_RUNTIME, PROVIDERS, Provider, short_name

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
DEFAULT_TRT_CACHE = Path("~/.cache/resnet-edge/tensorrt")
_TRT_SHORT_KEYS = {"fp16": "trt_fp16_enable", "int8": "trt_int8_enable", "cache": "trt_engine_cache_path"}


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


def fallbacks_already_run(sessions: Mapping[Any, Session], model_of: Callable[[Any], object]) -> dict:
    """Sessions that fell back to the CPU where a plain CPU session of the same model runs too (``--providers
    cpu,cuda`` without a GPU), each mapped to that one: the same provider is not run twice (issue 22), on the host
    or on a device. Their rows keep their outputs and say they fell back. ``model_of`` names a key's model."""
    runs: dict = {}  # (model, providers really used) -> the session that runs there: one asked for there, if any
    for key, session in sessions.items():
        if not session.fell_back and not session.requested.options:  # a CPU session with options is another run
            runs.setdefault((model_of(key), tuple(session.providers_used)), key)
    same_as = {}
    for key, session in sessions.items():
        if session.fell_back:
            where = (model_of(key), tuple(session.providers_used))
            if where in runs:
                same_as[key] = runs[where]
            else:
                runs[where] = key  # the first fallback runs; another to the same place shares it
    return same_as


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
    if threads is not None and threads < 1:  # for every backend, before any is opened
        raise OptionError(f"threads must be at least 1, got {threads}")
    on_cpu = functools.partial(  # the same settings on the CPU, where the provider asked for cannot run
        open_session,
        model,
        Provider.CPU,
        threads=threads,
        spinning=spinning,
        classifier=classifier,
        optimization=optimization,
        session_config=session_config,
    )
    if provider.ort_name == OPENVINO_RUNTIME:
        if openvino_runtime_version() is not None:
            return _open_openvino_runtime(model, provider, threads=threads, classifier=classifier)
        _fallback(provider, f"the OpenVINO runtime is not installed ({PROVIDERS['openvino-runtime'].install})", strict)
        fallen_back = on_cpu(audit=audit)
        fallen_back.requested = provider  # what was asked for, so that the session says it fell back
        return fallen_back
    options = _session_options(threads=threads, spinning=spinning, optimization=optimization, config=session_config)
    chain = _provider_chain(provider, options, threads=threads, quantized=_looks_quantized(model), strict=strict)
    opened = _open_audited(
        model, provider, options, chain, strict=strict, threads=threads, classifier=classifier, audit=audit
    )
    if opened is None:  # the provider failed to load the model (warned): run on the CPU
        return on_cpu()
    placement = opened.placement
    if placement is not None and placement.partial and not opened.fell_back and provider.name != "cpu":
        message = f"requested {provider.value} but it left compute ops to another provider: {placement.describe()}"
        if strict:
            raise ProviderError(message)
        warnings.warn(message, ResnetEdgeWarning, stacklevel=2)
    return opened


def _session_options(
    *, threads: int | None, spinning: bool, optimization: str, config: Mapping[str, str] | None
) -> ort.SessionOptions:
    """onnxruntime's session options for :func:`open_session`'s settings (its Args).

    Raises:
        OptionError: an unknown optimisation level.
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
    if threads is not None:  # at least 1: open_session checked it
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return options


def _open_audited(
    model: Path | str | onnx.ModelProto | bytes,
    provider: Provider,
    options: ort.SessionOptions,
    chain: list[Any] | None,
    *,
    strict: bool,
    threads: int | None,
    classifier: bool,
    audit: bool,
) -> Session | None:
    """The session, checked and (with ``audit``) its placement read; None when ``provider`` failed to load the model
    and the caller is to fall back to the CPU (warned here; with ``strict`` a :class:`ProviderError`)."""
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
                return None
            raise InputFileError(f"onnxruntime cannot load {_describe(model)}: {first[:240]}") from None
        used = list(session.get_providers())
        _check_options_taken(session, provider, chain)
        logger.debug("session on %s: requested %s, providers %s", _describe(model), provider.value, ", ".join(used))
        fell_back = used[0] != provider.ort_name
        if provider.name != "cpu" and fell_back and provider.ort_name in available_providers():
            # Listed as available, yet the session came up without it: usually a missing CUDA/cuDNN library.
            _fallback(provider, f"{provider.ort_name} failed to initialise (session runs on {used[0]})", strict)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if classifier:
            _check_classifier(model, inputs, outputs)
        placement, executed = None, []
        if profile_dir:
            requested = provider.short if not fell_back else short_name(used[0])
            placement, executed = _audit(session, requested, model_nodes=_node_count(model))
    finally:
        _remove_profile(profile_dir, session)
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


def _check_classifier(model: Path | str | onnx.ModelProto | bytes, inputs: list[Any], outputs: list[Any]) -> None:
    """Raises: InputFileError: the session is not an image classifier's (one float NCHW input, (batch, classes))."""
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
        found = ", ".join(f"{i.type} {i.shape}" for i in inputs)
        raise InputFileError(f"{_describe(model)} takes {found}; an image classifier takes one float NCHW tensor")
    if len(outputs[0].shape) != 2:
        raise InputFileError(
            f"{_describe(model)} outputs {outputs[0].shape}; an image classifier outputs (batch, classes) logits"
        )


def _open_openvino_runtime(
    model: Path | str | onnx.ModelProto | bytes, provider: Provider, *, threads: int | None, classifier: bool
) -> Session:
    from resnet_edge.onnx.openvino_runtime import compile_on_cpu  # imports openvino: only when asked for

    compiled = compile_on_cpu(
        _as_loadable(model),
        _describe(model),
        provider,
        threads=threads,
        classifier=classifier,
        node_count=_node_count(model),
    )
    return Session(
        session=compiled.request,  # type: ignore[arg-type]  (it answers the InferenceSession calls Session makes)
        requested=provider,
        providers_used=[OPENVINO_RUNTIME],
        input_name=compiled.input_name,
        output_name=compiled.output_name,
        threads=threads,
        fixed_batch=compiled.fixed_batch,
        placement=compiled.placement,
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
