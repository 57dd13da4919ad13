"""Reading and writing ONNX files: a round trip, a damaged file, weights outside the model's folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from resnet_edge.errors import InputFileError
from resnet_edge.onnx.io import load_onnx, save_onnx


def tiny_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    size = save_onnx(tiny_model(), path)
    assert size == path.stat().st_size and not list(tmp_path.glob("*.tmp*"))
    loaded = load_onnx(path)
    assert [n.name for n in loaded.graph.node] == ["mm"]
    assert numpy_helper.to_array(loaded.graph.initializer[0]).tolist() == np.arange(64).reshape(8, 8).tolist()


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    save_onnx(tiny_model(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputFileError, match="not a readable ONNX model|not an ONNX model|invalid ONNX model"):
        load_onnx(path)


def test_missing_and_empty_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputFileError):
        load_onnx(tmp_path / "absent.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(InputFileError):
        load_onnx(tmp_path / "empty.onnx")


def external(tmp_path: Path, location: str) -> Path:
    """A model whose weight names ``location`` as its external data file."""
    model = tiny_model()
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    path = tmp_path / "models" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_outside_the_models_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(np.zeros(64, np.float32).tobytes())
    with pytest.raises(InputFileError, match="outside the model's folder"):
        load_onnx(external(tmp_path, "../secret.bin"))


def test_missing_external_data_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="which is missing"):
        load_onnx(external(tmp_path, "w.data"))


def test_external_data_beside_the_model_is_read(tmp_path: Path) -> None:
    path = external(tmp_path, "w.data")
    (path.parent / "w.data").write_bytes(np.arange(64, dtype=np.float32).tobytes())
    loaded = load_onnx(path)
    assert numpy_helper.to_array(loaded.graph.initializer[0])[7, 7] == 63.0
