"""What is inside an ONNX file: ``resnet-edge inspect``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from resnet_edge.artifacts import sha256_file
from resnet_edge.onnx.graph import batch_norm_nodes, count_ops, is_quantized, macs_per_image, opset_of, parameter_count
from resnet_edge.onnx.io import load_onnx
from resnet_edge.onnx.metadata import read_props


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: list[int | str]


@dataclass(frozen=True)
class InspectResult:
    path: Path
    file_bytes: int
    sha256: str
    opset: int
    producer: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    op_counts: dict[str, int]
    parameters: int
    macs_per_image: int
    quantized: bool
    batch_norm_nodes: list[tuple[str, str]]
    metadata: dict[str, str]


def inspect_onnx(path: Path | str) -> InspectResult:
    """Describe an ONNX model.

    Raises:
        InputFileError: missing, empty, truncated or not ONNX.
    """
    path = Path(path)
    model = load_onnx(path)
    initializers = {init.name for init in model.graph.initializer}
    return InspectResult(
        path=path,
        file_bytes=path.stat().st_size,
        sha256=sha256_file(path),
        opset=opset_of(model),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=[_tensor_info(v) for v in model.graph.input if v.name not in initializers],
        outputs=[_tensor_info(v) for v in model.graph.output],
        op_counts=count_ops(model),
        parameters=parameter_count(model),
        macs_per_image=macs_per_image(model),
        quantized=is_quantized(model),
        batch_norm_nodes=batch_norm_nodes(model),
        # The producer is said once, in the header (write_props keeps the header and the key the same).
        metadata={k: v for k, v in read_props(model).items() if k != "producer"},
    )


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor = value.type.tensor_type
    shape: list[int | str] = [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim
    ]
    return TensorInfo(value.name, onnx.TensorProto.DataType.Name(tensor.elem_type).lower(), shape)
