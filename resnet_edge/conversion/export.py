"""PyTorch ResNet to a self-describing, verified ONNX file.

The exporter is chosen deliberately: TorchScript by default, because it honours the requested opset (the dynamo exporter
writes opset 18 or higher whatever is asked, see tests/conversion/test_export.py), needs nothing beyond torch, and names
every node by its module path (``/layer1/layer1.0/conv1/Conv``), which lets later stages map nodes back to residual
blocks. The dynamo exporter is available with ``exporter="dynamo"`` (needs onnxscript).

Nothing is written until the exported graph has been run under onnxruntime, at batch 1 and at a second batch size
when the batch is dynamic, and matched PyTorch within float32 tolerance.

BatchNorm: by default (``fold_bn=True``) the exporter folds each eval-mode BatchNormalization into the Conv before it,
so a file meant to be deployed as it is carries no BN node. ``fold_bn=False`` keeps every BatchNormalization node
(constant folding off, as PyTorch has the graph), for a flow whose next step folds them and proves it: the
pipeline exports that way, so ``simplify`` shows the fold it makes and checks (``BatchNormalization 19 -> 0`` on
resnet20). Either file is checked against PyTorch in eval mode before it is written.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from resnet_edge import __version__
from resnet_edge.artifacts import (
    read_user_text,
    refuse_overwriting_inputs,
    require_writable_destination,
    sha256_bytes,
)
from resnet_edge.calibration.preprocess import PreprocessSpec
from resnet_edge.conversion.options import (
    Exporter,
    ExportOptions,
)
from resnet_edge.errors import InputFileError, OptionError, ResnetEdgeWarning
from resnet_edge.memory import check_fits
from resnet_edge.models.checkpoints import LoadedModel, build_model, read_checkpoint_metadata
from resnet_edge.models.memory import torch_estimate
from resnet_edge.models.registry import default_preprocessing, get_arch
from resnet_edge.onnx.graph import count_ops, opset_of
from resnet_edge.onnx.io import save_onnx
from resnet_edge.onnx.metadata import RANDOM_INIT, ModelMetadata, write_props
from resnet_edge.onnx.parity import PARITY_IMAGES, Parity, check_fp32_parity
from resnet_edge.onnx.runtime import open_session
from resnet_edge.progress import Progress, ProgressCallback

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
STAGE = "export"


@dataclass(frozen=True)
class ExportResult:
    output: Path
    arch: str
    variant: str
    num_classes: int
    input_shape: tuple[int | str, ...]
    opset: int
    exporter: str
    file_bytes: int
    sha256: str
    parity: dict[int, Parity]  # batch size -> ONNX (onnxruntime CPU) against PyTorch
    op_counts: dict[str, int]
    metadata: dict[str, str] = field(repr=False)

    @property
    def batch_norm_nodes(self) -> int:
        return self.op_counts.get("BatchNormalization", 0)


def resolve_export(source: Path | str | None, options: ExportOptions) -> tuple[LoadedModel, ModelMetadata]:
    """The model with its weights (``source``, a checkpoint; None for random weights), and the metadata the exported
    file will carry.

    Raises:
        OptionError: no arch given or recorded, input size below the arch's minimum, labels of the wrong count.
        InputFileError, CheckpointError: see :func:`resnet_edge.models.checkpoints.build_model`.
    """
    recorded = read_checkpoint_metadata(source) if source is not None else {}
    arch = options.arch or recorded.get("arch")
    if arch is None:
        raise OptionError("no arch given; pass --arch" if source is None else f"{source} records no arch; pass --arch")
    spec = get_arch(arch)
    if options.input_size is not None and options.input_size < spec.min_input_size:
        raise OptionError(f"{arch} needs inputs of at least {spec.min_input_size} pixels, got {options.input_size}")
    if options.num_classes is not None or options.input_size is not None or options.batch is not None:
        # A class count, input size or batch that cannot fit must fail now, not after the machine swaps.
        size = options.input_size or spec.default_input_size
        estimate = torch_estimate(
            arch,
            num_classes=options.num_classes,
            in_chans=3 if options.in_chans is None else options.in_chans,
            variant=options.variant or recorded.get("variant", "residual"),
            input_size=max(size, spec.min_input_size),
        )
        check_fits(
            f"exporting {arch} at {size}x{size} with {options.num_classes or spec.default_num_classes} classes",
            estimate,
            options.batch or PARITY_IMAGES,
            hint="use a smaller --input-size, --batch or --num-classes",
        )
    loaded = build_model(
        arch,
        weights=source,
        num_classes=options.num_classes,
        in_chans=options.in_chans,
        variant=options.variant or recorded.get("variant", "residual"),
    )
    preprocessing = options.preprocessing
    if preprocessing is None and "preprocessing" in recorded:
        # The checkpoint's own normalisation stays; only the size follows --input-size.
        preprocessing = PreprocessSpec.from_json(recorded["preprocessing"]).resized(options.input_size)
    if preprocessing is None:
        preprocessing = default_preprocessing(arch, size=options.input_size, channels=loaded.in_chans)
    if options.input_size is not None and preprocessing.crop != options.input_size:
        raise OptionError(f"--input-size {options.input_size} contradicts the preprocessing crop {preprocessing.crop}")
    if preprocessing.crop < spec.min_input_size:
        raise OptionError(f"{arch} needs inputs of at least {spec.min_input_size} pixels, got {preprocessing.crop}")
    if preprocessing.channels != loaded.in_chans:
        raise OptionError(
            f"preprocessing gives {preprocessing.channels} channels but the model takes {loaded.in_chans}"
        )
    labels = (
        list(options.labels) if options.labels else (json.loads(recorded["labels"]) if "labels" in recorded else None)
    )
    if labels is not None and len(labels) != loaded.num_classes:
        raise OptionError(f"{len(labels)} labels given for {loaded.num_classes} classes")
    metadata = ModelMetadata(
        arch=arch,
        variant=loaded.variant.value,
        num_classes=loaded.num_classes,
        in_chans=loaded.in_chans,
        preprocessing=preprocessing,
        labels=labels,
        dataset=recorded.get("dataset"),
        checkpoint_sha256=loaded.checkpoint_sha256,
        batch="dynamic" if options.batch is None else str(options.batch),
    )
    return loaded, metadata


def _random_init(source: Path | str | None) -> bool:
    """No checkpoint, or one whose metadata says its weights were drawn at random (the pipeline's fresh weights)."""
    return source is None or read_checkpoint_metadata(source).get("weights") == RANDOM_INIT


def export_onnx(
    source: Path | str | None,
    output: Path | str,
    options: ExportOptions | None = None,
    *,
    on_progress: ProgressCallback | None = None,
) -> ExportResult:
    """Export a registered ResNet to ``output``, verified against PyTorch before it is written.

    Args:
        source: the checkpoint (.pt, .pth, .safetensors, or builtin:NAME); None for fresh random weights.
        output: the ONNX file to write.
        options: how to export; unset fields come from the checkpoint.
        on_progress: told of each step (``build``, ``export``, ``check``) as it starts.

    Returns:
        What was written, with parity at batch 1 and at a second batch size (dynamic batch) or the fixed batch.

    Raises:
        OptionError: bad options, or an opset the exporter cannot write exactly.
        CheckFailedError: onnxruntime's output differs from PyTorch's beyond float32 tolerance.
        InputFileError, CheckpointError: bad checkpoint or unwritable output.
    """
    options = options or ExportOptions()
    output = require_writable_destination(output)
    refuse_overwriting_inputs([output], [source], command="export output")
    requested = options.resolved_opset
    exporter = Exporter(options.exporter)
    report = on_progress or (lambda progress: None)
    report(Progress(STAGE, "build", detail=options.arch or (str(source) if source else None)))
    loaded, metadata = resolve_export(source, options)
    if source is None:
        warnings.warn(
            f"{loaded.arch} has random weights (no --weights): outputs are checked against PyTorch, but any"
            " accuracy figure from this file is meaningless, and agreement thresholds on a random model measure"
            " noise",
            ResnetEdgeWarning,
            stacklevel=2,
        )
    report(Progress(STAGE, "export", detail=f"{exporter.value} exporter, opset {requested}"))
    model_proto = run_exporter(loaded.model, metadata.preprocessing, options)
    remove_identity_nodes(model_proto)

    opset = opset_of(model_proto)
    if opset != requested:
        raise OptionError(f"the {exporter.value} exporter wrote opset {opset}, not the requested {requested}")
    metadata.provenance = {
        "exporter": exporter.value,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "opset": str(opset),
        "checkpoint": RANDOM_INIT if _random_init(source) else loaded.checkpoint.name,
    }
    write_props(model_proto, metadata.to_props())
    model_proto.producer_name = "resnet-edge"
    model_proto.producer_version = __version__

    report(Progress(STAGE, "check", detail="onnxruntime against PyTorch"))
    parity = check_against_torch(loaded.model, model_proto, metadata.preprocessing, batch=options.batch)
    file_bytes = save_onnx(model_proto, output)
    data = model_proto.SerializeToString()
    return ExportResult(
        output=output,
        arch=loaded.arch,
        variant=loaded.variant.value,
        num_classes=loaded.num_classes,
        input_shape=("batch" if options.batch is None else options.batch, *metadata.preprocessing.input_shape),
        opset=opset,
        exporter=exporter.value,
        file_bytes=file_bytes,
        sha256=sha256_bytes(data),
        parity=parity,
        op_counts=count_ops(model_proto),
        metadata=metadata.to_props(),
    )


def run_exporter(model: torch.nn.Module, spec: PreprocessSpec, options: ExportOptions) -> onnx.ModelProto:
    example = torch.zeros(options.batch or 1, *spec.input_shape)
    model.eval()
    if options.exporter is Exporter.TORCHSCRIPT:
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            # torch deprecates this exporter in favour of dynamo; we choose it on purpose (module docstring).
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                opset_version=options.resolved_opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=None if options.batch else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                # Constant folding is what folds eval-mode BatchNorm into the preceding Conv; off, every BN stays
                # (as an inference-mode BatchNormalization node: the graph is still the eval-mode model).
                do_constant_folding=options.fold_bn,
                training=torch.onnx.TrainingMode.EVAL,
            )
        return onnx.load_from_string(buffer.getvalue())
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency; fail with a clear message)
    except ImportError:
        raise OptionError(
            "the dynamo exporter needs onnxscript: pip install onnxscript"
            " (or, from a source checkout, pip install -e '.[dynamo]')"
        ) from None
    dynamic_shapes = None if options.batch else ({0: torch.export.Dim("batch", min=1, max=1024)},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=options.resolved_opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic_shapes,
            # The exporter's optimizer folds BatchNorm into Conv along with other constants.
            optimize=options.fold_bn,
            verbose=False,
        )
    model_proto = program.model_proto
    name_nodes_by_module(model_proto)
    return model_proto


def remove_identity_nodes(model: onnx.ModelProto) -> int:
    """Remove the graph's Identity nodes, each reader reading the Identity's input instead; returns how many.

    The TorchScript exporter's constant folding shares equal initializers (the zero biases BatchNorm folding leaves,
    say) and gives each user its own name through an Identity: 47 of them in a ResNet-50, in a file meant to be
    deployed as it is (issue 22). An Identity that writes a graph output stays (the output keeps its name).
    """
    outputs = {o.name for o in model.graph.output}
    renamed: dict[str, str] = {}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.output[0] not in outputs:
            renamed[node.output[0]] = renamed.get(node.input[0], node.input[0])
        else:
            kept.append(node)
    if not renamed:
        return 0
    for node in kept:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    dropped = [v for v in model.graph.value_info if v.name not in renamed]
    del model.graph.value_info[:]
    model.graph.value_info.extend(dropped)
    return len(renamed)


def name_nodes_by_module(model: onnx.ModelProto) -> None:
    """Rename dynamo-exported nodes the way the TorchScript exporter names them: ``/layer1/layer1.0/conv1/Conv``.

    Later stages map nodes to residual blocks by these names (see ``onnx.graph.module_path``); the dynamo exporter
    names nodes ``node_Conv_12`` but records each node's module path in its ``namespace`` metadata.
    """
    taken: set[str] = set()
    for node in model.graph.node:
        namespace = next((p.value for p in node.metadata_props if p.key == "namespace"), None)
        if not namespace:
            continue
        modules = [segment.split(":")[0].strip() for segment in namespace.split("/")][1:-1]  # drop root and op
        parts: list[str] = []
        previous = ""
        for full in modules:
            relative = full[len(previous) + 1 :] if previous and full.startswith(previous + ".") else full
            # A child of an nn.Sequential is scoped "<parent>.<index>", as TorchScript does (layer1.0, downsample.0).
            parts.append(f"{parts[-1]}.{relative}" if relative.isdigit() and parts else relative)
            previous = full
        base = "/" + "/".join([*parts, node.op_type])
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        node.name = name


def check_against_torch(
    model: torch.nn.Module, model_proto: onnx.ModelProto, spec: PreprocessSpec, *, batch: int | None
) -> dict[int, Parity]:
    """Run the ONNX graph under onnxruntime (CPU) and PyTorch on real photos; require float32 parity.

    Raises:
        CheckFailedError: any batch size misses float32 tolerance.
    """
    session = open_session(model_proto, audit=False)

    def torch_logits(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(images)).numpy()

    sizes = [batch] if batch else [1, PARITY_IMAGES]
    return check_fp32_parity(torch_logits, session.run, spec, sizes, what="ONNX output against PyTorch")


def read_labels_file(path: Path | str) -> tuple[str, ...]:
    """Class names from a text file, one per line (blank lines ignored).

    Raises:
        InputFileError: missing or empty.
    """
    text = read_user_text(path, what="labels file")
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not labels:
        raise InputFileError(f"labels file has no labels: {path}")
    return labels
