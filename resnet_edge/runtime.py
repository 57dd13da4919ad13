"""The one way to open an onnxruntime session.

It takes the execution provider the user asked for, opens the session, and reports the providers the session really
uses. Asking for CUDA where it is not there is never silent: strictly it is an error listing requested and available
providers; otherwise a visible warning, and the session is marked as having fallen back to the CPU.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from resnet_edge.errors import InputFileError, OptionError, ProviderError, ResnetEdgeWarning

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
_ORT_ERROR_ONLY = 3  # onnxruntime's log severity: print errors and fatal messages, not its graph-partition chatter


class Provider(enum.StrEnum):
    CPU = "cpu"
    CUDA = "cuda"

    @property
    def ort_name(self) -> str:
        return {Provider.CPU: "CPUExecutionProvider", Provider.CUDA: "CUDAExecutionProvider"}[self]


def parse_providers(names: str | Sequence[str]) -> list[Provider]:
    """``"cpu,cuda"`` (or a list of names) as providers, in order, without repeats.

    Raises:
        OptionError: an unknown name; the message lists the known ones.
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    providers: list[Provider] = []
    for raw in items:
        name = raw.strip().lower()
        try:
            provider = Provider(name)
        except ValueError:
            raise OptionError(
                f"unknown execution provider {raw.strip()!r}; choose from: {', '.join(p.value for p in Provider)}"
            ) from None
        if provider not in providers:
            providers.append(provider)
    if not providers:
        raise OptionError("no execution provider given; choose from: cpu, cuda")
    return providers


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


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

    @property
    def fell_back(self) -> bool:
        """True when the requested provider is not the one the session runs on."""
        return self.providers_used[0] != self.requested.ort_name

    @property
    def ran_on(self) -> str:
        """The short name of the provider that really runs the model (``cpu`` or ``cuda``)."""
        return next(p.value for p in Provider if p.ort_name == self.providers_used[0])

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
) -> Session:
    """Open ``model`` on ``provider`` and audit where it really runs.

    Args:
        model: a path, a ModelProto or serialized bytes.
        provider: the execution provider asked for.
        strict: raise instead of falling back to the CPU when ``provider`` is not there.
        threads: intra-op threads; onnxruntime's default (one per physical core) when None.
        spinning: let idle worker threads spin between calls. Off by default: whenever several sessions (or a
            session and PyTorch) take turns in one process, an idle pool that spins takes cores from the one that
            is running, and interleaved timings become meaningless.
        classifier: require one float NCHW input and (batch, classes) logits as the first output; off only for
            analysis graphs that expose intermediate tensors first.

    Raises:
        ProviderError: ``strict`` and the provider is not available or failed to initialise.
        InputFileError: onnxruntime cannot load the model, or it is not an image classifier.
    """
    options = ort.SessionOptions()
    options.log_severity_level = _ORT_ERROR_ONLY
    if threads is not None:
        if threads < 1:
            raise OptionError(f"threads must be at least 1, got {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")

    available = available_providers()
    chain = [provider.ort_name, Provider.CPU.ort_name] if provider is not Provider.CPU else [Provider.CPU.ort_name]
    if provider.ort_name not in available:
        _fallback(provider, f"{provider.ort_name} is not available (available: {', '.join(available)})", strict)
        chain = [Provider.CPU.ort_name]

    source = _as_loadable(model)
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=chain)
    except _LOAD_ERRORS as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputFileError(f"onnxruntime cannot load {_describe(model)}: {first[:240]}") from None
    used = list(session.get_providers())
    if provider is not Provider.CPU and used[0] != provider.ort_name and provider.ort_name in available:
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
    batch_dim = inputs[0].shape[0]
    return Session(
        session=session,
        requested=provider,
        providers_used=used,
        input_name=inputs[0].name,
        output_name=outputs[0].name,
        threads=threads,
        fixed_batch=batch_dim if isinstance(batch_dim, int) else None,
    )


def _fallback(provider: Provider, reason: str, strict: bool) -> None:
    if strict:
        raise ProviderError(f"requested {provider.value}: {reason}")
    warnings.warn(f"requested {provider.value} but {reason}; running on cpu instead", ResnetEdgeWarning, stacklevel=3)


def _as_loadable(model: Path | str | onnx.ModelProto | bytes) -> str | bytes:
    if isinstance(model, bytes):
        return model
    if isinstance(model, (str, Path)):
        return str(model)
    return model.SerializeToString()  # an onnx.ModelProto


def _describe(model: Path | str | onnx.ModelProto | bytes) -> str:
    return str(model) if isinstance(model, (str, Path)) else "the model"
