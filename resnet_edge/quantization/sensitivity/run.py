"""Where INT8 loses accuracy, block by block: the analysis run (error attribution by residual block).

Two measurements per block, on held-out images, at the block's output against FP32:

- **cumulative**: the INT8 model as it is; the error includes everything upstream.
- **isolated**: only this block quantized, FP32 everywhere else (:func:`.splice.isolate_block`, no re-calibration).
  Ranking blocks by the logit error of that model is the sensitivity measure of ZeroQ (Cai et al., 2020: quantize
  one layer, measure the output); it is what a mixed-precision search keeps in FP32 first.

Residual additions whose two inputs carry very different scales are flagged (see
:data:`.metrics.RESIDUAL_SCALE_RATIO`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from resnet_edge.artifacts import refuse_overwriting_inputs, sha256_file, write_json_atomic
from resnet_edge.calibration.labels import LABEL_MAP
from resnet_edge.calibration.sources import default_test_images, open_source
from resnet_edge.errors import InputFileError, OptionError, ResnetEdgeWarning
from resnet_edge.jsonable import to_jsonable
from resnet_edge.onnx.graph import OUTPUT_QPARAMS, is_quantized
from resnet_edge.onnx.io import load_onnx
from resnet_edge.onnx.metadata import (
    model_classes,
    preprocessing_for,
    read_metadata,
    static_input_shape,
)
from resnet_edge.onnx.parity import accuracy, compare_outputs
from resnet_edge.onnx.providers import Provider
from resnet_edge.onnx.runtime import open_session
from resnet_edge.progress import Progress, ProgressCallback
from resnet_edge.quantization.record import calibrated_hashes, read_quantization_record
from resnet_edge.quantization.sensitivity.blocks import (
    HEAD,
    BlockMap,
    _single_boundaries,
    block_sort_key,
    exclusion_items,
    map_blocks,
)
from resnet_edge.quantization.sensitivity.chart import write_chart
from resnet_edge.quantization.sensitivity.metrics import (
    RESIDUAL_SCALE_RATIO,
    BlockError,
    _compute_nodes,
    _ErrorAccumulator,
    residual_scales,
)
from resnet_edge.quantization.sensitivity.result import SensitivityResult, block_changes
from resnet_edge.quantization.sensitivity.splice import _expose_block_outputs, isolate_block

STAGE = "analyze"
DEFAULT_IMAGES = 64  # held-out images analysed by default: SQNR pools every activation value, so 64 images are plenty
ANALYSIS_BATCH = 4  # every block's output of both models is held per batch: ~200 MB at batch 4 for ResNet-50 at 224


@dataclass(frozen=True)
class SensitivityOptions:
    """What to analyse on.

    Attributes:
        data: held-out images (folder, .npy/.npz, builtin:NAME); default: the model's built-in test split, else the
            bundled photos. Images the INT8 model was calibrated on (by the hashes in its record) are dropped.
        label_map: which model class each class of ``data`` is (``calibration.labels``); default: the model's labels.
        limit: analyse at most this many images, drawn with ``seed``; None for all.
        seed: seed of the draw.
        provider: the execution provider every session runs on (validate's ``--providers`` syntax); the CPU EP
            when None.
        strict_ep: fail (ProviderError) instead of falling back to the CPU, or when the provider leaves compute ops
            of the analysed graphs to another.
    """

    data: str | None = None
    label_map: Path | None = field(default=None, metadata=LABEL_MAP)
    limit: int | None = DEFAULT_IMAGES
    seed: int = 0
    provider: Provider | None = None
    strict_ep: bool = False

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise OptionError(f"limit must be at least 1, got {self.limit}")
        if self.seed < 0:
            raise OptionError(f"seed must be 0 or more, got {self.seed}")


def analyze_quantization(
    fp32: onnx.ModelProto,
    int8: onnx.ModelProto,
    options: SensitivityOptions = SensitivityOptions(),
    *,
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    fp32_path: Path | None = None,
    int8_path: Path | None = None,
    on_progress: ProgressCallback | None = None,
) -> SensitivityResult:
    """Measure, block by block, the error an INT8 model shows against its FP32 source.

    Cost: one run of each model with every block output exposed, then one run per quantized block of the FP32 model
    with that block spliced in from the INT8 model (:func:`isolate_block`); no calibration.

    Args:
        fp32, int8: the FP32 model and its INT8 quantization (QDQ or QOperator), both exported by resnet-edge.
        options: which held-out images.
        images: preprocessed NCHW images to use instead of ``options.data``.
        labels: ``images``' labels in the model's classes (for the accuracy figures), or None.
        fp32_path, int8_path: recorded in the result.
        on_progress: called before each model is run, with ``Progress("analyze", what, done, total)``: ``what``
            describes the model, ``done`` of ``total`` counts the models run.

    Raises:
        InputFileError: a model is not of the expected kind, the two do not match, or no held-out image is left.
        OptionError: a bad limit.
    """
    started = time.perf_counter()
    fp32_map, int8_map = _check_pair(fp32, int8)
    source_name, dropped = "given images", 0
    if images is None:
        images, labels, source_name, dropped = _held_out_images(fp32, int8, options)
    batch = static_input_shape(fp32)[0] or ANALYSIS_BATCH
    batches = [images[i : i + batch] for i in range(0, len(images), batch)]
    runs = 1 + sum(_compute_nodes(int8, int8_map, b)[0] > 0 for b in fp32_map.blocks)
    if on_progress:
        on_progress(Progress(STAGE, "FP32 and INT8 models, every block output", 0, runs))
    whole = _run_whole(fp32, int8, fp32_map, int8_map, batches, options)
    blocks: list[BlockError] = []
    for block in fp32_map.blocks:
        if on_progress and _compute_nodes(int8, int8_map, block)[0]:
            on_progress(
                Progress(STAGE, f"only {block} quantized", 1 + sum(b.isolated is not None for b in blocks), runs)
            )
        blocks.append(_block_error(fp32, int8, fp32_map, int8_map, block, batches, whole, options))
    ranked = sorted(
        (b for b in blocks if b.sensitivity_db is not None), key=lambda b: (b.sensitivity_db, block_sort_key(b.block))
    )
    reference_logits, int8_logits = whole.reference_logits, whole.int8_logits
    return SensitivityResult(
        fp32_model=fp32_path,
        int8_model=int8_path,
        format=_quantization_format(int8),
        data_source=source_name,
        images=len(images),
        calibration_images_dropped=dropped,
        parity=compare_outputs(reference_logits, int8_logits),
        fp32_accuracy=accuracy(reference_logits, labels) if labels is not None else None,
        int8_accuracy=accuracy(int8_logits, labels) if labels is not None else None,
        blocks=blocks,
        ranking=[b.block for b in ranked],
        flagged_additions=[b.block for b in blocks if b.residual is not None and b.residual.flagged],
        residual_scale_ratio=RESIDUAL_SCALE_RATIO,
        isolated_models=sum(b.isolated is not None for b in blocks),
        seconds=time.perf_counter() - started,
        provider=whole.asked.value,
        ran_on=whole.ran_on,
        placement=whole.placement,
    )


def _check_pair(fp32: onnx.ModelProto, int8: onnx.ModelProto) -> tuple[BlockMap, BlockMap]:
    """The two models' blocks, once checked that ``int8`` is a quantization of ``fp32`` made of the same blocks.

    Raises:
        InputFileError: the models are given the wrong way round, their blocks differ, or the FP32 model is not a
            chain of one-in, one-out blocks ending in a head.
    """
    if is_quantized(fp32):
        raise InputFileError("the first model is quantized; give the FP32 model first, then the INT8 one")
    if not is_quantized(int8):
        raise InputFileError("the second model is not quantized; give the FP32 model first, then the INT8 one")
    fp32_map, int8_map = map_blocks(fp32), map_blocks(int8)
    if fp32_map.blocks != int8_map.blocks:
        differ = sorted(set(fp32_map.blocks) ^ set(int8_map.blocks), key=block_sort_key)
        raise InputFileError(
            f"the models have different blocks ({', '.join(differ[:4])}); is the INT8 model a"
            " quantization of this FP32 model?"
        )
    if HEAD not in fp32_map.blocks:
        raise InputFileError("the FP32 model has no head (pooling and fc) after its last block")
    _single_boundaries(fp32, fp32_map, "FP32 model")  # fail early on a graph that is not a chain of blocks
    return fp32_map, int8_map


@dataclass(frozen=True)
class _WholeRun:
    """Both models run whole, every block output exposed: the cumulative error at each block, and the logits."""

    cumulative: dict[str, _ErrorAccumulator]
    fp32_logits: list[np.ndarray]  # per batch
    reference_logits: np.ndarray  # the FP32 logits of every image
    int8_logits: np.ndarray
    asked: Provider
    provider: Provider  # the one the isolated models run on: the CPU when the INT8 model fell back to it
    ran_on: str
    placement: dict


def _run_whole(
    fp32: onnx.ModelProto,
    int8: onnx.ModelProto,
    fp32_map: BlockMap,
    int8_map: BlockMap,
    batches: list[np.ndarray],
    options: SensitivityOptions,
) -> _WholeRun:
    """Cumulative: both models whole, every block output exposed; the logits are the head's output."""
    fp32_exposed, fp32_names = _expose_block_outputs(fp32, fp32_map)
    int8_exposed, int8_names = _expose_block_outputs(int8, int8_map)
    cumulative = {b: _ErrorAccumulator() for b in fp32_map.blocks}
    fp32_logits, int8_logits = [], []
    asked = options.provider or Provider.CPU
    fp32_session = open_session(fp32_exposed, asked, strict=options.strict_ep, classifier=False)
    int8_session = open_session(int8_exposed, asked, strict=options.strict_ep, classifier=False)
    for x in batches:
        refs = fp32_session.predict(x, [fp32_names[b] for b in fp32_map.blocks])
        cands = int8_session.predict(x, [int8_names[b] for b in fp32_map.blocks])
        for block, ref, cand in zip(fp32_map.blocks, refs, cands, strict=True):
            cumulative[block].add(ref, cand)
        fp32_logits.append(refs[-1])
        int8_logits.append(cands[-1])
    return _WholeRun(
        cumulative=cumulative,
        fp32_logits=fp32_logits,
        reference_logits=np.concatenate(fp32_logits),
        int8_logits=np.concatenate(int8_logits),
        asked=asked,
        provider=asked if not int8_session.fell_back else Provider.CPU,  # warned once above; no warning per block
        ran_on=int8_session.ran_on,
        placement={"fp32": fp32_session.placement, "int8": int8_session.placement},
    )


def _block_error(
    fp32: onnx.ModelProto,
    int8: onnx.ModelProto,
    fp32_map: BlockMap,
    int8_map: BlockMap,
    block: str,
    batches: list[np.ndarray],
    whole: _WholeRun,
    options: SensitivityOptions,
) -> BlockError:
    """One block's error: cumulative (from ``whole``) and, when INT8 quantizes it, isolated (one spliced model run
    once over the same batches)."""
    quantized, total = _compute_nodes(int8, int8_map, block)
    isolated = isolated_logits = agreement = None
    if quantized:
        model, names = isolate_block(fp32, int8, block, fp32_map=fp32_map, int8_map=int8_map)
        session = open_session(model, whole.provider, strict=options.strict_ep, classifier=False, audit=False)
        at_block, at_logits = _ErrorAccumulator(), _ErrorAccumulator()
        logits = []
        for x, ref_logits in zip(batches, whole.fp32_logits, strict=True):
            ref, cand, out = session.predict(x, list(names))
            at_block.add(ref, cand)
            at_logits.add(ref_logits, out)
            logits.append(out)
        del session
        isolated, isolated_logits = at_block.result(), at_logits.result()
        agreement = compare_outputs(whole.reference_logits, np.concatenate(logits)).top1_agreement
    return BlockError(
        block=block,
        quantized_compute_nodes=quantized,
        compute_nodes=total,
        cumulative=whole.cumulative[block].result(),
        isolated=isolated,
        isolated_logits=isolated_logits,
        isolated_top1_agreement=agreement,
        residual=residual_scales(int8, int8_map, block),
        exclude=exclusion_items(fp32, fp32_map, block),
    )


def _held_out_images(
    fp32: onnx.ModelProto, int8: onnx.ModelProto, options: SensitivityOptions, *, also: onnx.ModelProto | None = None
) -> tuple[np.ndarray, np.ndarray | None, str, int]:
    """Up to ``options.limit`` preprocessed images, none of which the INT8 model (nor ``also``) was calibrated on (by
    the hashes in its record), with their labels in the model's classes (or None); the source's name and the number of
    calibration images passed over."""
    spec = preprocessing_for(fp32, source="FP32 model")
    source = open_source(
        options.data or default_test_images(read_metadata(fp32).dataset),
        classes=model_classes(fp32, label_map=options.label_map),
    )
    calibrated = calibrated_hashes(m for m in (int8, also) if m is not None)
    # Draw in a seeded random order and stop at the limit, so a large folder is not loaded whole. Each draw of the
    # images still needed is read in index order, so that a compressed .npz streams forward (calibration.arrays).
    order = np.random.default_rng(options.seed).permutation(len(source)) if options.limit else range(len(source))
    wanted = options.limit or len(source)
    kept: list[tuple[int, np.ndarray, int | None]] = []
    dropped = position = 0
    while len(kept) < wanted and position < len(source):
        draw = sorted(int(i) for i in order[position : position + wanted - len(kept)])
        position += len(draw)
        for index in draw:
            sample = source.load(index, spec)
            if sample.sha256 in calibrated:
                dropped += 1
            else:
                kept.append((index, sample.tensor, sample.label))
    if not kept:
        raise InputFileError(f"{source.name}: every image was used to calibrate the INT8 model; give held-out --data")
    kept.sort(key=lambda item: item[0])
    labels = np.asarray([k[2] for k in kept], np.int64) if source.labelled else None
    return np.stack([k[1] for k in kept]), labels, source.name, dropped


def analyze_sensitivity(
    sources: Sequence[Path | str],
    output_dir: Path | str | None,
    options: SensitivityOptions = SensitivityOptions(),
    *,
    before: Path | str | None = None,
    on_progress: ProgressCallback | None = None,
) -> SensitivityResult:
    """Load two model files, analyse them (:func:`analyze_quantization`) and write the chart and JSON report.

    Writes ``<output_dir>/<INT8 name>.analysis.png`` and ``.analysis.json``, each atomically; nothing when
    ``output_dir`` is None.

    Args:
        sources: the FP32 model and its INT8 quantization, in that order.
        output_dir: an existing folder for the chart and the JSON report, or None to write nothing.
        options: which held-out images.
        before: another INT8 quantization of the same FP32 model (say, without ``--equalize`` or ``--adaround``):
            analysed on the same images, each block's error in both is in ``changes``.
        on_progress: see :func:`analyze_quantization`.

    Returns:
        The analysis, with the files written.

    Raises:
        OptionError: ``sources`` is not two models.
        InputFileError: unreadable models, a missing output folder, or see :func:`analyze_quantization`.
    """
    if len(sources) != 2:
        raise OptionError(f"analyze takes two models, the FP32 one and its INT8 quantization; got {len(sources)}")
    fp32_path, int8_path = (Path(p) for p in sources)
    if output_dir is not None and not Path(output_dir).is_dir():
        raise InputFileError(f"output folder does not exist: {output_dir}")
    stem = int8_path.name.removesuffix(".onnx")
    if output_dir is not None:
        refuse_overwriting_inputs(
            [Path(output_dir, f"{stem}.analysis.png"), Path(output_dir, f"{stem}.analysis.json")],
            [fp32_path, int8_path, options.data],
            command="analyze output",
        )
    fp32, int8 = load_onnx(fp32_path), load_onnx(int8_path)
    if before is None:
        analysis = analyze_quantization(
            fp32, int8, options, fp32_path=fp32_path, int8_path=int8_path, on_progress=on_progress
        )
    else:
        analysis = _before_and_after(fp32, fp32_path, int8, int8_path, Path(before), options, on_progress)
    analysis = replace(analysis, notes=_other_source_notes(fp32_path, int8, int8_path))
    if output_dir is None:
        return analysis
    analysis = replace(
        analysis, chart=Path(output_dir, f"{stem}.analysis.png"), report=Path(output_dir, f"{stem}.analysis.json")
    )
    write_chart(analysis, analysis.chart)
    write_json_atomic(analysis.report, to_jsonable(analysis))
    return analysis


def _quantization_format(int8: onnx.ModelProto) -> str:
    """``qoperator`` when quantized operators (QLinearConv, ...) carry the quantization, else ``qdq``."""
    if any(n.op_type in OUTPUT_QPARAMS and n.op_type != "QuantizeLinear" for n in int8.graph.node):
        return "qoperator"
    return "qdq"


def _other_source_notes(fp32_path: Path, int8: onnx.ModelProto, int8_path: Path) -> list[str]:
    """A note (and a warning) when the INT8 model's record says it was quantized from another file."""
    record = read_quantization_record(int8)
    if record is None or not record.source_model_sha256 or record.source_model_sha256 == sha256_file(fp32_path):
        return []
    # Said only now that the analysis found the same blocks in both.
    note = f"{int8_path.name} was quantized from another file than {fp32_path.name}; its blocks match"
    warnings.warn(note, ResnetEdgeWarning, stacklevel=3)
    return [note]


def _before_and_after(
    fp32: onnx.ModelProto,
    fp32_path: Path,
    int8: onnx.ModelProto,
    int8_path: Path,
    before_path: Path,
    options: SensitivityOptions,
    on_progress: ProgressCallback | None,
) -> SensitivityResult:
    """Both INT8 models analysed on the same held-out images (none either was calibrated on), and each block's
    error in both."""
    earlier = load_onnx(before_path)
    images, labels, source_name, dropped = _held_out_images(fp32, int8, options, also=earlier)
    given = {"images": images, "labels": labels, "on_progress": on_progress}
    old = analyze_quantization(fp32, earlier, options, int8_path=before_path, **given)
    new = analyze_quantization(fp32, int8, options, fp32_path=fp32_path, int8_path=int8_path, **given)
    return replace(
        new,
        data_source=source_name,
        calibration_images_dropped=dropped,
        before_model=before_path,
        before_parity=old.parity,
        changes=block_changes(old, new),
        seconds=old.seconds + new.seconds,
    )
