"""Simplify with onnxsim and prove every BatchNormalization was folded into its convolution.

onnxsim runs in a child process with a time limit: a crash, a hang or a failed check there cannot take the command
down or leave a half-written file. The result is then verified here, not trusted: BatchNormalization nodes are
counted, outputs are compared with the input model on real images at batch 1 and at a second batch size, and the
dynamic batch dimension must survive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from resnet_edge.artifacts import refuse_overwriting_inputs, require_writable_destination
from resnet_edge.conversion.options import (
    SimplifyOptions,
)
from resnet_edge.errors import CheckFailedError, InputFileError
from resnet_edge.onnx.graph import batch_norm_nodes, count_ops, is_quantized
from resnet_edge.onnx.io import load_onnx, save_onnx
from resnet_edge.onnx.metadata import SIMPLIFICATION_KEY, preprocessing_for, read_props, static_input_shape, write_props
from resnet_edge.onnx.parity import PARITY_IMAGES, Parity, check_fp32_parity
from resnet_edge.onnx.runtime import open_session
from resnet_edge.progress import Progress, ProgressCallback

STAGE = "simplify"
_NAMES_SHOWN = 3


@dataclass(frozen=True)
class SimplifyResult:
    output: Path
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    batch_norm_remaining: list[tuple[str, str]]  # (node, op type feeding it) that could not be folded
    parity: dict[int, Parity]  # batch size -> simplified against input model
    bytes_before: int
    bytes_after: int
    onnxsim_version: str
    seconds: float

    @property
    def batch_norm_before(self) -> int:
        return self.ops_before.get("BatchNormalization", 0)

    @property
    def batch_norm_folded(self) -> int:
        return self.batch_norm_before - len(self.batch_norm_remaining)


def simplify_onnx(
    source: Path | str,
    output: Path | str,
    options: SimplifyOptions | None = None,
    *,
    on_progress: ProgressCallback | None = None,
) -> SimplifyResult:
    """Simplify ``source`` into ``output`` with every BatchNormalization folded, verified.

    Args:
        source: an FP32 ONNX model.
        output: the simplified model to write.
        options: see :class:`SimplifyOptions` (unfolded BatchNorms allowed or not, onnxsim's time limit).
        on_progress: told of each step (``onnxsim``, ``check``) as it starts.

    Raises:
        InputFileError: the input is not a readable ONNX model, is already quantized, or output is unwritable.
        CheckFailedError: onnxsim failed, crashed or timed out; a BatchNormalization remains (unless allowed); the
            outputs changed; or the dynamic batch dimension was lost.
    """
    options = options or SimplifyOptions()
    started = time.perf_counter()
    report = on_progress or (lambda progress: None)
    model_path = Path(source)
    output = require_writable_destination(output)
    refuse_overwriting_inputs([output], [model_path], command="simplify output")
    model = load_onnx(model_path)
    if is_quantized(model):
        raise InputFileError(f"{model_path} is already quantized; simplify the FP32 model, then quantize")
    import onnxsim

    report(Progress(STAGE, "onnxsim"))
    simplified = _run_onnxsim(model, options.timeout_s)
    remaining = batch_norm_nodes(simplified)
    if remaining and not options.allow_unfolded_bn:
        shown = ", ".join(f"{name} (fed by {producer})" for name, producer in remaining[:_NAMES_SHOWN])
        more = f" and {len(remaining) - _NAMES_SHOWN} more" if len(remaining) > _NAMES_SHOWN else ""
        raise CheckFailedError(
            f"{len(remaining)} BatchNormalization node(s) could not be folded into a convolution: {shown}{more};"
            " pass --allow-unfolded-bn to keep them"
        )
    if static_input_shape(model)[0] is None and static_input_shape(simplified)[0] is not None:
        raise CheckFailedError("onnxsim fixed the dynamic batch dimension")

    report(Progress(STAGE, "check"))
    parity = check_same_function(model, simplified, source=str(model_path))
    # onnxsim writes its own onnxsim.* keys, some listing every removed node; keep its counts in our record only.
    onnxsim_props = {k: v for k, v in read_props(simplified).items() if k.startswith("onnxsim.")}
    record = {
        "tool": "onnxsim",
        "onnxsim": onnxsim.__version__,
        "batch_norm_before": count_ops(model).get("BatchNormalization", 0),
        "batch_norm_after": len(remaining),
        "removed_nodes": int(onnxsim_props.get("onnxsim.removed_nodes.count", 0) or 0),
    }
    del simplified.metadata_props[:]
    write_props(simplified, read_props(model) | {SIMPLIFICATION_KEY: json.dumps(record, sort_keys=True)})
    bytes_after = save_onnx(simplified, output)
    return SimplifyResult(
        output=output,
        ops_before=count_ops(model),
        ops_after=count_ops(simplified),
        batch_norm_remaining=remaining,
        parity=parity,
        bytes_before=model_path.stat().st_size,
        bytes_after=bytes_after,
        onnxsim_version=onnxsim.__version__,
        seconds=time.perf_counter() - started,
    )


def worker_command(source: Path, destination: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "resnet_edge.conversion.onnxsim_worker",
        str(source),
        str(destination),
        str(os.getpid()),
    ]


def _run_onnxsim(model: onnx.ModelProto, timeout_s: float) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory(prefix="resnet-edge-onnxsim-") as tmp:
        source, destination = Path(tmp, "in.onnx"), Path(tmp, "out.onnx")
        source.write_bytes(model.SerializeToString())
        try:
            done = subprocess.run(
                worker_command(source, destination), capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            raise CheckFailedError(f"onnxsim did not finish within {timeout_s:g} s") from None
        if done.returncode < 0:
            raise CheckFailedError(f"onnxsim crashed (signal {-done.returncode})")
        if done.returncode != 0 or not destination.is_file():
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            raise CheckFailedError(f"onnxsim failed: {lines[-1] if lines else f'exit code {done.returncode}'}")
        return onnx.load(str(destination))


def check_same_function(
    reference: onnx.ModelProto, candidate: onnx.ModelProto, *, source: str = "model"
) -> dict[int, Parity]:
    """Compare two FP32 ONNX models on real photos at batch 1 and, if dynamic, a second batch size.

    Raises:
        CheckFailedError: outputs differ beyond float32 tolerance at any batch size.
    """
    fixed = static_input_shape(reference)[0]
    return check_fp32_parity(
        open_session(reference, audit=False).run,
        open_session(candidate, audit=False).run,
        preprocessing_for(reference, source=source),
        [fixed] if fixed else [1, PARITY_IMAGES],
        what="simplified model against its input",
    )
