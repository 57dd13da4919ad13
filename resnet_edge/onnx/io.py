"""Reading and writing ONNX files: checked on the way in, self-contained and atomic on the way out.

An ONNX model never silently depends on a stray ``.onnx.data`` sidecar: weights kept beside a model are read only
from regular files in the model's own folder, and every model written is one file.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from resnet_edge.artifacts import atomic_output, require_file
from resnet_edge.errors import InputFileError

# protobuf cannot serialise a single message of 2 GiB or more; ResNets up to resnet152 are ~240 MB.
_PROTOBUF_LIMIT = 2**31 - 1


def load_onnx(path: Path | str) -> onnx.ModelProto:
    """Read an ONNX model with its weights, checked.

    Raises:
        InputFileError: missing, empty, truncated or not ONNX, or it fails ``onnx.checker``.
    """
    path = require_file(path, what="ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError or ValueError depending on the damage
        raise InputFileError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    _load_external_data(model, path)
    if not model.graph.node or not model.graph.input:
        raise InputFileError(f"{path}: not an ONNX model (no graph nodes or inputs)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputFileError(f"{path}: invalid ONNX model ({first[:200]})") from None
    return model


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Read the weights a model keeps in files beside it, refusing (by tensor, file and reason) any that lie
    outside the model's folder or are not regular files: a model must not make us read ``/etc`` or a FIFO."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    folder = path.resolve().parent
    external = [t for t in model.graph.initializer if uses_external_data(t)]
    for tensor in external:
        location = ExternalDataInfo(tensor).location
        target = (folder / location).resolve()
        if Path(location).is_absolute() or folder not in target.parents:
            raise InputFileError(
                f"{path}: tensor {tensor.name} keeps its data in {location!r}, outside the model's folder; refused"
                " (external data must sit beside the model)"
            )
        if not target.is_file():
            why = "is missing" if not target.exists() and not target.is_symlink() else "is not a regular file"
            raise InputFileError(f"{path}: tensor {tensor.name} keeps its data in {location!r}, which {why}")
    if external:
        try:
            onnx.load_external_data_for_model(model, str(folder))
        except Exception as exc:  # onnx's own checks (sizes, offsets) in its own words
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputFileError(f"{path}: cannot read its external data ({first[:200]})") from None


def save_onnx(model: onnx.ModelProto, path: Path | str) -> int:
    """Write ``model`` as one self-contained file, atomically, after a full ``onnx.checker`` pass.

    Returns:
        The file size in bytes.

    Raises:
        InputFileError: the destination is not writable, or the model is over protobuf's 2 GiB limit.
    """
    if model.ByteSize() >= _PROTOBUF_LIMIT:
        raise InputFileError(
            f"model is {model.ByteSize() / 2**30:.1f} GiB, over the 2 GiB limit of a self-contained ONNX file"
        )
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return len(data)
