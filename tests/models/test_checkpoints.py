"""Loading checkpoints as the ecosystem writes them, and refusing the ones that do not fit."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from resnet_edge.errors import CheckpointError, InputFileError, OptionError
from resnet_edge.models.checkpoints import build_model, read_checkpoint_metadata, read_state_dict
from resnet_edge.models.resnet import create_model


@pytest.fixture(scope="module")
def resnet20_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return create_model("resnet20").state_dict()


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix"])
@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_loads_plain_and_wrapped_torch_checkpoints(tmp_path: Path, resnet20_state, wrap: str, suffix: str) -> None:
    state = {f"module.{k}": v for k, v in resnet20_state.items()} if wrap == "module_prefix" else resnet20_state
    payload = {"plain": state, "module_prefix": state}.get(wrap) or {wrap: state, "epoch": 3}
    path = tmp_path / f"ckpt{suffix}"
    torch.save(payload, path)
    loaded = build_model("resnet20", weights=path)
    torch.testing.assert_close(loaded.model.state_dict()["fc.weight"], resnet20_state["fc.weight"])
    assert loaded.checkpoint_sha256 and len(loaded.checkpoint_sha256) == 64
    assert not loaded.model.training


def test_loads_safetensors_and_its_metadata(tmp_path: Path, resnet20_state) -> None:
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in resnet20_state.items()}, str(path), metadata={"arch": "resnet20"})
    assert read_checkpoint_metadata(path) == {"arch": "resnet20"}
    loaded = build_model("resnet20", weights=path)
    torch.testing.assert_close(loaded.model.state_dict()["conv1.weight"], resnet20_state["conv1.weight"])


def test_class_count_comes_from_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "seven.pt"
    torch.save(create_model("resnet20", num_classes=7).state_dict(), path)
    assert build_model("resnet20", weights=path).num_classes == 7
    with pytest.raises(CheckpointError, match=r"shape checkpoint vs model: fc.weight \[7, 64\] vs \[10, 64\]"):
        build_model("resnet20", weights=path, num_classes=10)


def test_checkpoint_of_another_arch_is_one_line_naming_keys(tmp_path: Path) -> None:
    path = tmp_path / "r32.pt"
    torch.save(create_model("resnet32").state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        build_model("resnet20", weights=path)
    message = str(info.value)
    assert "\n" not in message
    assert "does not fit resnet20" in message and "unexpected: layer1.3.conv1.weight" in message


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Exploit()}, f)
    with pytest.raises(
        InputFileError, match=r"evil.pt: not a plain tensor checkpoint, torch.load\(weights_only=True\) refused"
    ):
        read_state_dict(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty"),
        (b"not a checkpoint at all", "refused"),
    ],
)
def test_bad_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(InputFileError, match=match):
        read_state_dict(path)


def test_truncated_checkpoint(tmp_path: Path, resnet20_state) -> None:
    full, cut = tmp_path / "full.pt", tmp_path / "cut.pt"
    torch.save(resnet20_state, full)
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputFileError, match="cut.pt"):
        read_state_dict(cut)
    st_full, st_cut = tmp_path / "full.safetensors", tmp_path / "cut.safetensors"
    save_file({k: v.contiguous() for k, v in resnet20_state.items()}, str(st_full))
    st_cut.write_bytes(st_full.read_bytes()[:1000])
    with pytest.raises(InputFileError, match="cut.safetensors"):
        read_state_dict(st_cut)


def test_missing_and_builtin(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="checkpoint not found"):
        read_state_dict(tmp_path / "nope.pt")
    with pytest.raises(OptionError, match="unknown built-in weights"):
        read_state_dict("builtin:nope")
    assert build_model("resnet20", weights="builtin:digits-resnet20").num_classes == 10
