"""Quantization-aware training to a deployable file: fine-tune with fake quantization, export, write the QDQ model.

The three stages it chains are the toolkit's own, so the QAT file is an INT8 file like any other, with the same
calibration record, checks and judgement: :func:`resnet_edge.training.qat.train_qat` fine-tunes the checkpoint with
the recipe's rounding in the forward pass and saves it (weights already on the grid, BatchNorms folded into
identities), :func:`~resnet_edge.conversion.export.export_onnx` exports that checkpoint, and
:func:`~resnet_edge.quantization.quantize.quantize_onnx` quantizes it with the same recipe: its weight scales give
back exactly the integers QAT trained (the result's ``grid_mismatches`` counts any that would move), and its
activation ranges are min/max calibration on the same data QAT observed them on.

Why not torch's own QDQ export: torch's fake-quantize ops export as QuantizeLinear/DequantizeLinear pairs, but in a
placement of torch's choosing, with weights as float initializers behind a QuantizeLinear and none of the record,
the integer-coverage check or the strict-integer check ``quantize`` gives every other INT8 file; going through
``quantize`` keeps one writer of QDQ files.

Here, above both training and quantization (DESIGN.md: conversion sits over training), because it is the one
place that may call the export.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from resnet_edge.artifacts import refuse_overwriting_inputs, require_writable_destination
from resnet_edge.calibration.sources import dataset_name, default_evaluation_data
from resnet_edge.conversion.export import ExportResult, export_onnx
from resnet_edge.conversion.options import ExportOptions
from resnet_edge.errors import OptionError
from resnet_edge.progress import ProgressCallback
from resnet_edge.quantization.options import QuantizeOptions
from resnet_edge.quantization.quantize import QuantizeResult, quantize_onnx
from resnet_edge.training.options import TrainOptions
from resnet_edge.training.qat import QatResult, train_qat

__all__ = ["QatExport", "qat_onnx", "qat_quantize_options"]

ONNX_SUFFIX = ".onnx"


@dataclass(frozen=True)
class QatExport:
    """A QAT run and the file it wrote.

    Attributes:
        output: the QDQ model (its calibration record beside it, ``output + ".json"``).
        checkpoint: the fine-tuned checkpoint (weights on the grid), beside the model.
        qat: the training run; ``export``: the FP32 export of the checkpoint; ``quantize``: the QDQ model, judged
            against that export on the held-out images.
        seconds: the whole run.
    """

    output: Path
    checkpoint: Path
    qat: QatResult
    export: ExportResult
    quantize: QuantizeResult
    seconds: float


def qat_quantize_options(source: str | Path, options: TrainOptions) -> QuantizeOptions:
    """The quantize options that write a QAT run's file: its recipe, no post-training recovery, its data."""
    return QuantizeOptions(
        calib=options.calib or str(source),
        # The held-out images: --val, else the training set's own test split (a built-in one's), as export records
        # it for the other stages; never a quarter of the calibration images when a test split exists.
        eval_data=options.val or default_evaluation_data(dataset_name(str(source))),
        limit=options.calib_limit,
        seed=options.seed,
        target=options.target,
        per_channel=options.per_channel,
        weight_bits=options.weight_bits,
        equalize=False,
        bias_correction=False,
        adaround=False,
        measure_speed=False,
    )


def qat_onnx(
    source: str | Path,
    output: Path | str,
    options: TrainOptions,
    *,
    on_progress: ProgressCallback | None = None,
) -> QatExport:
    """Quantization-aware fine-tuning of ``options.weights`` on the images ``source``, written as the QDQ model
    ``output`` (``.onnx``), with the fine-tuned checkpoint beside it (``.safetensors``).

    Args:
        source: the training images.
        output: the QDQ model to write.
        options: training options with ``qat`` set (recipe: ``target``, ``weight_bits``, ``per_channel``).
        on_progress: the training's, then quantize's events.

    Returns:
        The run, the export and the quantization.

    Raises:
        OptionError: options without ``qat``, an output not named ``.onnx``; and as the three stages raise.
        CheckFailedError: the QDQ model misses quantize's checks against the exported checkpoint (the checkpoint
            is kept).
    """
    started = time.perf_counter()
    if not options.qat:
        raise OptionError("qat_onnx needs TrainOptions(qat=True, ...)")
    output = Path(output)
    if output.suffix != ONNX_SUFFIX:
        raise OptionError(f"--qat writes a QDQ ONNX model: name it {output.with_suffix(ONNX_SUFFIX).name}")
    output = require_writable_destination(output)
    checkpoint = output.with_suffix(".safetensors")
    quantize_options = qat_quantize_options(source, options)
    if quantize_options.recipe() != options.qat_recipe():
        raise RuntimeError("QAT's recipe and quantize's differ")  # a bug: both resolve the same options
    refuse_overwriting_inputs(
        [output, Path(f"{output}.json"), checkpoint],
        [source, options.val, options.weights, options.calib],
        command="train --qat output",
    )
    qat = train_qat(source, checkpoint, options, on_progress=on_progress)
    with tempfile.TemporaryDirectory(prefix="resnet-edge-qat-") as tmp:
        exported = export_onnx(checkpoint, Path(tmp, "fp32.onnx"), ExportOptions())
        quantized = quantize_onnx(
            exported.output, output, quantize_options, on_progress=on_progress, trained=qat.record()
        )
    return QatExport(
        output=quantized.output,
        checkpoint=checkpoint,
        qat=qat,
        export=exported,
        quantize=quantized,
        seconds=time.perf_counter() - started,
    )
