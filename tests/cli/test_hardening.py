"""Issue 13's fixes that need more than one refused command line: decoding every image mode, lossless checkpoint
casts, quantize's accuracy bar, uniform calibration batches, a crashed pipeline stage, and signals."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_edge.calibration.preprocess import ChannelOrder, PreprocessSpec, preprocess_image
from resnet_edge.calibration.sources import FolderSource
from resnet_edge.errors import CheckFailedError, ResnetEdgeWarning
from resnet_edge.models.checkpoints import build_model, read_state_dict

SIZE = 8
RGB_IDENTITY = PreprocessSpec(SIZE, SIZE, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # no resize, pixels / 255 out
GREY_IDENTITY = PreprocessSpec(SIZE, SIZE, (0.0,), (1.0,), ChannelOrder.GRAY)


def _decoded(data: bytes, spec: PreprocessSpec) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return preprocess_image(image, spec)


def _png(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **params)
    return buffer.getvalue()


def _png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG written byte by byte (Pillow cannot write 16-bit RGB), so the reference owes nothing to Pillow."""
    import struct
    import zlib

    height, width = array.shape[:2]
    colour = 2 if array.ndim == 3 else 0
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


RNG = np.random.default_rng(13)
ONE_LEVEL = 1 / 255 + 1e-6  # 8-bit rounding


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    wide = RNG.integers(0, 65536, (SIZE, SIZE), dtype=np.uint16)
    expected = wide / 65535.0
    got = _decoded(_png16(wide), GREY_IDENTITY)[0]
    assert np.abs(got - expected).max() <= ONE_LEVEL
    rgb = _decoded(_png16(wide), RGB_IDENTITY)
    assert all(np.abs(rgb[c] - expected).max() <= ONE_LEVEL for c in range(3))
    assert (got > 0.99).mean() < 0.05  # the bug: 99.75% white


def test_16_bit_rgb() -> None:
    wide = RNG.integers(0, 65536, (SIZE, SIZE, 3), dtype=np.uint16)
    got = _decoded(_png16(wide), RGB_IDENTITY)
    assert np.abs(got - (wide / 65535.0).transpose(2, 0, 1)).max() <= ONE_LEVEL


def test_palette_with_transparency_alpha_and_grey_alpha_drop_alpha() -> None:
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    index = RNG.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.tobytes())
    expected = (palette[index] / 255.0).transpose(2, 0, 1)
    assert np.abs(_decoded(_png(image), RGB_IDENTITY) - expected).max() < 1e-6
    assert np.abs(_decoded(_png(image, transparency=0), RGB_IDENTITY) - expected).max() < 1e-6

    rgba = RNG.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    got = _decoded(_png(Image.fromarray(rgba, "RGBA")), RGB_IDENTITY)
    assert np.abs(got - (rgba[..., :3] / 255.0).transpose(2, 0, 1)).max() < 1e-6  # dropped, not composited

    la = RNG.integers(0, 256, (SIZE, SIZE, 2), dtype=np.uint8)
    got = _decoded(_png(Image.fromarray(la, "LA")), RGB_IDENTITY)
    assert all(np.abs(got[c] - la[..., 0] / 255.0).max() < 1e-6 for c in range(3))


def test_cmyk_jpeg() -> None:
    cmyk = np.zeros((SIZE, SIZE, 4), np.uint8)
    cmyk[...] = (200, 100, 0, 40)  # flat, so JPEG's loss is small
    buffer = io.BytesIO()
    Image.fromarray(cmyk, "CMYK").save(buffer, "JPEG", quality=100)
    expected = (255.0 - cmyk[..., :3]) * (255.0 - cmyk[..., 3:]) / 255.0 / 255.0
    assert np.abs(_decoded(buffer.getvalue(), RGB_IDENTITY) - expected.transpose(2, 0, 1)).max() < 4 / 255


@pytest.mark.parametrize(("orientation", "turn"), [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(orientation: int, turn: int) -> None:
    pixels = RNG.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", exif=exif)
    # EXIF 6 = "rotate 90 clockwise to view", 8 = counter-clockwise, 3 = 180; np.rot90 turns counter-clockwise.
    expected = (np.rot90(pixels, turn) / 255.0).transpose(2, 0, 1)
    assert np.abs(_decoded(buffer.getvalue(), RGB_IDENTITY) - expected).max() < 1e-6


def test_a_fifo_and_a_broken_symlink_in_an_image_folder_are_skipped_and_counted(tmp_path: Path) -> None:
    Image.new("RGB", (SIZE, SIZE)).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.png")
    (tmp_path / "c.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.warns(ResnetEdgeWarning, match="skipped 2 entries that are not regular files"):
        source = FolderSource(tmp_path)
    assert [f.name for f in source.files] == ["a.png"] and source.skipped == 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_lossless_checkpoint_casts_load_with_a_note(dtype: torch.dtype, tmp_path: Path) -> None:
    state = read_state_dict("builtin:digits-resnet20")
    narrow = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / "cast.pt"
    torch.save(narrow, path)
    with pytest.warns(ResnetEdgeWarning, match=f"{str(dtype).removeprefix('torch.')} tensor"):
        model = build_model("resnet20", weights=path).model
    expected = {k: v.to(dtype).float() if v.is_floating_point() else v for k, v in state.items()}
    got = model.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_quantize_fails_below_validates_bar_unless_allowed(digits_sim: Path, tmp_path: Path) -> None:
    from resnet_edge.quantization.options import QuantizeOptions
    from resnet_edge.quantization.quantize import quantize_onnx

    flat = tmp_path / "flat.npy"
    np.save(flat, np.full((16, 8, 8), 255, np.uint8))  # white calibration images: every range is wrong
    options = QuantizeOptions(calib=str(flat), eval_data="builtin:digits-test", measure_speed=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckFailedError, match=r"misses validate's bar .*--allow-accuracy-drop"):
            quantize_onnx(digits_sim, tmp_path / "q.onnx", options)
        assert not (tmp_path / "q.onnx").exists()
        from dataclasses import replace

        result = quantize_onnx(digits_sim, tmp_path / "q.onnx", replace(options, allow_accuracy_drop=True))
    assert result.parity.top1_agreement < 0.99 and (tmp_path / "q.onnx").is_file()


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_takes_a_short_final_batch(digits_sim: Path, tmp_path: Path, method: str) -> None:
    from resnet_edge.quantization.configs import Method
    from resnet_edge.quantization.options import QuantizeOptions
    from resnet_edge.quantization.quantize import quantize_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = quantize_onnx(  # 13 = one batch of 8 and a short one of 5 inside the first chunk
            digits_sim, tmp_path / "q.onnx", QuantizeOptions(method=Method(method), limit=13, measure_speed=False)
        )
    assert result.calibration_images == 13


@pytest.mark.slow
def test_a_crash_inside_a_stage_keeps_the_earlier_stages_and_a_report(tmp_path: Path) -> None:
    import json

    from resnet_edge.pipeline import PipelineConfig, run_pipeline
    from resnet_edge.pipeline.publish import MARKER
    from tests.conftest import FailingStage

    crash = FailingStage("simplify", RuntimeError("a bug in simplify"))  # any bug: a real one is fixed once found
    with pytest.raises(RuntimeError, match="a bug in simplify"):
        run_pipeline(PipelineConfig(int8=False), tmp_path / "out", stages=[crash])
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"model.onnx", "report.json", MARKER} <= names and "model.sim.onnx" not in names
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "simplify" in json.dumps(report) and "a bug in simplify" in json.dumps(report)


def _runtime_cache(path: Path) -> bool:
    """Files the libraries keep in the temp folder across runs, not litter of one: PyTorch's compile cache
    (torchinductor_<user>) and onnxruntime's native session-id file (.ses)."""
    return path.name.startswith("torchinductor_") or path.name == ".ses"


def _script() -> list[str]:
    script = shutil.which("resnet-edge", path=str(Path(sys.executable).parent))
    assert script, "the resnet-edge script is installed beside the test's Python"
    return [script]


def test_sigterm_cleans_up_like_ctrl_c(digits_sim: Path, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    output = tmp_path / "q.onnx"
    process = subprocess.Popen(
        [*_script(), "quantize", str(digits_sim), "-o", str(output), "--no-speed"],
        env={**os.environ, "TMPDIR": str(tmp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list(tmp.glob("resnet-edge-quantize-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # wait until quantize has made its temporary folder
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    left = [p.name for p in tmp.iterdir() if not _runtime_cache(p)]
    assert not left and not output.exists()


def test_ctrl_c_during_start_up_prints_one_line(tmp_path: Path) -> None:
    # --help no longer imports torch, so start-up is a command's own imports: export imports torch (seconds).
    command = [*_script(), "export", "--arch", "resnet20", "-o", str(tmp_path / "m.onnx")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # inside the imports
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert "Traceback" not in stderr
    assert process.returncode == 130 and stderr.strip().splitlines()[-1].startswith("interrupted"), stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_onnxsim_worker_ends_with_its_parent(tmp_path: Path) -> None:
    fifo = tmp_path / "in.onnx"
    os.mkfifo(fifo)  # the worker blocks reading it: a stand-in for onnxsim busy on a large model
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time\n"
            f"from resnet_edge.conversion.simplify import worker_command\n"
            f"child = subprocess.Popen(worker_command({str(fifo)!r}, {str(tmp_path / 'out.onnx')!r}))\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    worker = int(parent.stdout.readline())
    time.sleep(1.0)  # let the worker reach prctl and block on the FIFO
    parent.kill()  # SIGKILL: no clean-up code of the parent runs
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(worker):
        time.sleep(0.05)
    assert not _alive(worker)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- issue 21: SIGHUP, one run per output folder, a folder made for -o --------------------------------------------

PIPELINE_FAST = ["--no-int8", "--no-tune", "--no-torch-eager", "--iterations", "2", "--batch", "1"]


def test_a_hangup_that_nohup_ignores_stays_ignored() -> None:
    from resnet_edge.cli import interrupts

    saved = {s: signal.getsignal(s) for s in interrupts.UNWINDING_SIGNALS}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup starts a program
        interrupts.install_signal_handlers()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        interrupts.install_signal_handlers()
        assert signal.getsignal(signal.SIGHUP) is interrupts._raise_terminated
        assert interrupts.interrupt_exit_code(interrupts.Terminated(signal.SIGHUP)) == 129
        assert interrupts.interrupt_exit_code(interrupts.Terminated(signal.SIGTERM)) == 143
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


@pytest.mark.slow
def test_a_second_pipeline_into_one_folder_refuses_and_a_hangup_unwinds(tmp_path: Path) -> None:
    """Two real runs into one -o: the second refuses at its start (the lock). A folder a user makes at -o meanwhile,
    and a closed terminal (SIGHUP) in the middle of simplify: the first run unwinds as for Ctrl-C, leaving no staging
    folder, no onnxsim temporary folder and no lock, and the user's folder as it is. (A run that reaches publishing
    with something new at -o: test_what_appears_at_the_pipeline_output_mid_run_is_never_touched.)
    """
    from click.testing import CliRunner

    from resnet_edge.cli.main import main

    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    first = subprocess.Popen(
        [*_script(), "pipeline", "-o", str(out), *PIPELINE_FAST],
        env={**os.environ, "TMPDIR": str(tmp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = tmp_path / ".out.resnet-edge-lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    second = CliRunner().invoke(main, ["pipeline", "-o", str(out), *PIPELINE_FAST])
    assert second.exit_code == 2 and "Traceback" not in second.output
    assert [line for line in second.output.splitlines() if line.startswith("error:")] == [
        f"error: another resnet-edge pipeline is writing {out} (pid {first.pid}, lock {lock}); wait for it or choose"
        " another -o"
    ]
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    while not list(tmp.glob("resnet-edge-onnxsim-*")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the simplify stage's temporary folder: its onnxsim worker is running
    first.send_signal(signal.SIGHUP)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 129, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tmp"]  # no .out.*.partial, no lock file
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "the user's"
    assert not [p.name for p in tmp.iterdir() if not _runtime_cache(p)]  # no resnet-edge-onnxsim-*


def test_an_interrupted_analyze_removes_the_folder_it_made(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from resnet_edge.cli.main import main
    from resnet_edge.quantization import sensitivity

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sensitivity, "analyze_sensitivity", interrupted)
    args = ["analyze", "fp32.onnx", "int8.onnx", "-o"]
    result = CliRunner().invoke(main, [*args, str(tmp_path / "new" / "deeper")])
    assert result.exit_code == 130 and list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    CliRunner().invoke(main, [*args, str(tmp_path / "mine")])
    assert (tmp_path / "mine").is_dir()  # a folder that was there stays
