"""Loading checkpoints from the ecosystem into the registered architectures.

Accepts ``.pt``/``.pth`` (read with ``torch.load(..., weights_only=True)``: a checkpoint must never be able to run
code) and ``.safetensors``; plain state dicts or ones wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``, with
``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefixes. Loading is always ``strict=True``; a mismatch
is one line naming the first missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from resnet_edge.artifacts import require_file, sha256_file
from resnet_edge.errors import CheckpointError, InputFileError, OptionError, ResnetEdgeWarning
from resnet_edge.models.registry import Variant
from resnet_edge.models.resnet import ResNet, create_model

BUILTIN_DIGITS_WEIGHTS = Path(__file__).resolve().parents[1] / "data" / "digits_resnet20.safetensors"
# Checkpoints shipped in the package, by the name a user types for --weights.
BUILTIN_WEIGHTS = {"builtin:digits-resnet20": BUILTIN_DIGITS_WEIGHTS}
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
_PREFIXES = ("module.", "_orig_mod.")
_KEYS_SHOWN = 3  # how many keys of each kind a mismatch message names


@dataclass(frozen=True)
class LoadedModel:
    """A model with its weights and where they came from."""

    model: ResNet
    arch: str
    num_classes: int
    in_chans: int
    variant: Variant
    checkpoint: Path | None
    checkpoint_sha256: str | None


def resolve_weights(weights: Path | str) -> Path:
    """A checkpoint path, with ``builtin:NAME`` resolved to the file shipped in the package.

    Raises:
        OptionError: an unknown built-in name.
        InputFileError: the file is missing or empty.
    """
    text = str(weights)
    if text.startswith("builtin:"):
        if text not in BUILTIN_WEIGHTS:
            raise OptionError(f"unknown built-in weights {text!r}; choose one of: {', '.join(BUILTIN_WEIGHTS)}")
        return require_file(BUILTIN_WEIGHTS[text], what="built-in checkpoint")
    return require_file(text, what="checkpoint")


def write_safetensors(path: Path | str, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors checkpoint through plain file I/O, so that a full disk is an ``OSError`` as in every other
    write (which :func:`resnet_edge.artifacts.atomic_output` turns into one line); safetensors' own writer raises
    its own error type."""
    from safetensors.torch import save

    Path(path).write_bytes(save(state, metadata=metadata))


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped and with wrapper prefixes removed.

    Raises:
        InputFileError: the file is missing, empty, truncated, not a checkpoint, or holds no tensors.
    """
    path = resolve_weights(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw: object = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputFileError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns about pickle protocols before failing on them
                raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # Garbage and pickled code look alike to the safe unpickler; quote its verdict, not its page of advice.
            detail = str(exc).rpartition("WeightsUnpickler error:")[2].strip().splitlines()
            reason = detail[0].strip() if detail and detail[0].strip() else "unreadable pickle"
            raise InputFileError(
                f"{path}: not a plain tensor checkpoint, torch.load(weights_only=True) refused it ({reason[:120]})"
            ) from None
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputFileError(f"{path}: not a readable PyTorch checkpoint ({first[:160]})") from None
        except (IndexError, KeyError, TypeError, AttributeError, UnicodeDecodeError, MemoryError) as exc:
            # torch.load's legacy reader on a file that is no checkpoint at all (/etc/shadow: IndexError).
            raise InputFileError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__} reading it)") from None
    return _unwrap(raw, path)


def _unwrap(raw: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(raw, dict) and not _is_state_dict(raw):
        inner = next((raw[k] for k in _WRAPPER_KEYS if k in raw and isinstance(raw[k], dict)), None)
        if inner is None:
            raise InputFileError(f"{path}: no state dict found (top-level keys: {', '.join(map(str, list(raw)[:6]))})")
        raw = inner
    if not isinstance(raw, dict) or not raw:
        raise InputFileError(f"{path}: holds {type(raw).__name__}, not a state dict of tensors")
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    return state


def _is_state_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def load_weights(model: ResNet, state: dict[str, torch.Tensor], *, arch: str, source: Path) -> None:
    """Load ``state`` into ``model`` strictly, raising one line that names what does not fit.

    Raises:
        CheckpointError: keys are missing or unexpected, or shapes differ.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [
        f"{k} {list(state[k].shape)} vs {list(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape checkpoint vs model", misshaped)):
        if items:
            more = f" (+{len(items) - _KEYS_SHOWN} more)" if len(items) > _KEYS_SHOWN else ""
            problems.append(f"{label}: {', '.join(items[:_KEYS_SHOWN])}{more}")
    if problems:
        raise CheckpointError(f"{source} does not fit {arch}: {'; '.join(problems)}")
    check_tensor_values(state, own, source=source)
    model.load_state_dict(state, strict=True)


# Floating-point types that become float32 with nothing lost that matters: float16 and bfloat16 exactly; float64
# rounded to float32's precision, which is what the model computes in anyway (overflow to inf is refused below).
_WIDENED_FLOATS = (torch.float16, torch.bfloat16, torch.float64)


def check_tensor_values(
    state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], *, source: Path | str
) -> list[str]:
    """Refuse checkpoint tensors that loading would silently turn into other numbers.

    ``load_state_dict`` casts to the model's dtype: integer or boolean weights (a quantized or mangled checkpoint)
    would load as a model at chance accuracy, and NaN or Inf would only surface later, blamed on the ONNX output.

    Returns:
        A note per cast dtype (float16, bfloat16, float64 into float32), also issued as a warning.

    Raises:
        CheckpointError: an integer, boolean or complex tensor where the model holds floats, or a NaN or Inf
            (also after the cast to float32), naming the tensor.
    """
    cast: dict[torch.dtype, list[str]] = {}
    for key, expected in own.items():
        tensor = state[key]
        if not expected.is_floating_point() or tensor.dtype == expected.dtype:
            pass
        elif tensor.dtype in _WIDENED_FLOATS:
            cast.setdefault(tensor.dtype, []).append(key)
        else:
            raise CheckpointError(
                f"{source}: {key} is {str(tensor.dtype).removeprefix('torch.')}, but the model holds"
                f" {str(expected.dtype).removeprefix('torch.')} there; a cast would change its values"
                " (a quantized or converted checkpoint?): give the floating-point checkpoint"
            )
        if expected.is_floating_point() and tensor.is_floating_point():
            values = tensor.to(expected.dtype)
            if not bool(torch.isfinite(values).all()):
                what = "NaN or Inf" if not bool(torch.isfinite(tensor).all()) else "values beyond float32"
                bad = int((~torch.isfinite(values)).sum())
                raise CheckpointError(f"{source}: {key} holds {what} ({bad} of {values.numel()} values)")
    notes = [
        f"{len(keys)} {str(dtype).removeprefix('torch.')} tensor(s) (e.g. {keys[0]}) cast to float32"
        for dtype, keys in cast.items()
    ]
    for note in notes:
        warnings.warn(f"{Path(str(source)).name}: {note}", ResnetEdgeWarning, stacklevel=2)
    return notes


def infer_num_classes(state: dict[str, torch.Tensor]) -> int | None:
    """The class count a checkpoint was trained for, read from its ``fc.weight``."""
    weight = state.get("fc.weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def infer_in_chans(state: dict[str, torch.Tensor]) -> int | None:
    weight = state.get("conv1.weight")
    return int(weight.shape[1]) if weight is not None and weight.ndim == 4 else None


def build_model(
    arch: str,
    *,
    weights: Path | str | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    variant: Variant | str = Variant.RESIDUAL,
    zero_init_residual: bool = False,
) -> LoadedModel:
    """Build ``arch`` in eval mode, with ``weights`` loaded strictly when given.

    Class and channel counts default to what the checkpoint holds (its ``fc`` and ``conv1`` shapes), else to the
    architecture's defaults; given explicitly, they must match the checkpoint.

    Raises:
        OptionError: unknown arch or variant.
        InputFileError: unreadable checkpoint.
        CheckpointError: the checkpoint does not fit.
    """
    weights = resolve_weights(weights) if weights is not None else None
    state = read_state_dict(weights) if weights is not None else None
    if state is not None:
        num_classes = num_classes if num_classes is not None else infer_num_classes(state)
        in_chans = in_chans if in_chans is not None else infer_in_chans(state)
    model = create_model(
        arch,
        num_classes=num_classes,
        in_chans=3 if in_chans is None else in_chans,  # not `or 3`: --in-chans 0 must be refused, not taken as 3
        variant=variant,
        zero_init_residual=zero_init_residual,
    )
    if state is not None and weights is not None:
        load_weights(model, state, arch=arch, source=weights)
    model.eval()
    return LoadedModel(
        model=model,
        arch=arch,
        num_classes=model.fc.out_features,
        in_chans=model.conv1.in_channels,
        variant=model.variant,
        checkpoint=weights,
        checkpoint_sha256=sha256_file(weights) if weights is not None else None,
    )


def read_checkpoint_metadata(path: Path | str) -> dict[str, str]:
    """The string metadata a ``.safetensors`` checkpoint carries (arch, preprocessing, labels, ...), else {}.

    resnet-edge's own trained checkpoints describe themselves this way, so exporting one needs no other option.
    """
    path = resolve_weights(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputFileError(f"{path}: not a readable safetensors file ({exc})") from None
    _check_recorded(metadata, path)
    return metadata


def _check_recorded(metadata: dict[str, str], path: Path) -> None:
    """Refuse, naming the checkpoint, a preprocessing or labels record that later stages could not read.

    Raises:
        InputFileError: malformed JSON, or values of the wrong kind.
    """
    import json

    from resnet_edge.calibration.preprocess import PreprocessSpec

    if "preprocessing" in metadata:
        try:
            PreprocessSpec.from_json(metadata["preprocessing"])
        except OptionError as exc:
            raise InputFileError(f"{path}: its metadata's {exc}") from None
    if "labels" in metadata:
        try:
            labels = json.loads(metadata["labels"])
        except ValueError:
            labels = None
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise InputFileError(f"{path}: its metadata's labels are not a JSON list of class names")
