"""Does the ONNX model still give PyTorch's answers, on the execution provider that will run it?

Every model is run on every requested provider over the same preprocessed images (the preprocessing each model
carries), and compared with a reference: the PyTorch checkpoint, or an FP32 ONNX file. Thresholds turn the result
into a pass or fail, so ``resnet-edge validate`` can gate a deployment.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from resnet_edge.artifacts import sha256_file
from resnet_edge.calibration.labels import ModelClasses
from resnet_edge.calibration.preprocess import PreprocessSpec
from resnet_edge.calibration.sources import ImageSource, default_test_images, iter_batches, open_source
from resnet_edge.errors import CheckFailedError, InputFileError, OptionError, ResnetEdgeWarning
from resnet_edge.evaluation.options import ValidateOptions
from resnet_edge.onnx.graph import is_quantized, output_step
from resnet_edge.onnx.io import load_onnx
from resnet_edge.onnx.metadata import (
    ModelMetadata,
    model_classes,
    preprocessing_for,
    read_metadata,
    static_input_shape,
)
from resnet_edge.onnx.parity import (
    FP32_MAX_ABS_ERROR,
    FP32_RELATIVE_ERROR,
    INT8_MAX_TOP1_DROP,
    INT8_MIN_AGREEMENT,
    Accuracy,
    Parity,
    accuracy,
    compare_outputs,
)
from resnet_edge.onnx.placement import ExecutedNode, Placement
from resnet_edge.onnx.providers import Provider
from resnet_edge.onnx.runtime import fallbacks_already_run, open_session
from resnet_edge.progress import Progress, ProgressCallback
from resnet_edge.quantization.coverage import IntegerCoverage, coverage_of
from resnet_edge.quantization.record import calibrated_hashes

STAGE = "validate"
# Below this many images a top-1 agreement moves in steps of more than 2%: say so rather than judge quietly.
FEW_VALIDATION_IMAGES = 50


@dataclass(frozen=True)
class Reference:
    """What the models are compared with: a checkpoint (with its arch) or an FP32 ONNX file."""

    checkpoint: str | None = None  # a path or builtin:NAME
    arch: str | None = None
    onnx: Path | None = None

    @classmethod
    def parse(cls, text: str, *, arch: str | None = None) -> Reference:
        """An ``.onnx`` file is an FP32 ONNX reference; anything else a checkpoint (path or builtin:NAME)."""
        if text.lower().endswith(".onnx"):
            if arch is not None:
                raise OptionError("--arch applies to a checkpoint reference, not to an ONNX one")
            return cls(onnx=Path(text))
        return cls(checkpoint=text, arch=arch)


@dataclass(frozen=True)
class ValidateRow:
    model: str
    path: str
    quantized: bool
    provider: str
    ran_on: str
    providers_used: list[str]
    parity: Parity
    accuracy: Accuracy | None
    reference_accuracy: Accuracy | None
    passed: bool
    failures: list[str] = field(default_factory=list)
    placement: Placement | None = None  # where each node ran (runtime module docstring)
    coverage: IntegerCoverage | None = None  # INT8 models: which Conv/Gemm ran as integer kernels, there
    max_error_steps: float | None = None  # INT8 models: max abs logit error in units of the output's step

    @property
    def fell_back(self) -> bool:
        return self.ran_on != self.provider.split("[", 1)[0]  # the provider asked for, without its [options]

    @property
    def top1_drop_points(self) -> float | None:
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return 100.0 * (self.reference_accuracy.top1 - self.accuracy.top1)


@dataclass(frozen=True)
class ValidateResult:
    rows: list[ValidateRow]
    reference: str
    data: str
    images: int
    labelled: bool
    thresholds: dict[str, float | str]
    file_sha256: dict[str, str]
    calibration_excluded: int = 0  # images left out because a quantized model was calibrated on them

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def absent_providers(self) -> list[str]:
        """Requested providers that ran nothing: every row of theirs fell back (to cpu), so no figure is theirs."""
        requested = list(dict.fromkeys(row.provider for row in self.rows))
        return [p for p in requested if all(r.fell_back for r in self.rows if r.provider == p)]


@dataclass
class Plan:
    """A validation, prepared: the models read and checked, the reference ready, the data opened, and the models
    grouped by preprocessing (models that share one see the same tensors)."""

    protos: dict[str, onnx.ModelProto]
    reference: _ReferenceModel
    source: ImageSource
    indices: list[int]
    specs: dict[str, PreprocessSpec]  # preprocessing (as JSON) -> spec
    groups: dict[str, list[str]]  # preprocessing (as JSON) -> model paths
    options: ValidateOptions
    calibrated_on: set[str] = field(default_factory=set)  # SHA-256 of images a quantized model was calibrated on
    images: int = 0  # images judged (after leaving out calibration images), known once the data was read
    calibration_excluded: int = 0


def plan_validation(models: Sequence[Path | str], reference: Reference | None, options: ValidateOptions) -> Plan:
    """Check the options, read the models, find and load the reference, open the data.

    Raises:
        as :func:`validate_models`.
    """
    if not models:
        raise OptionError("give at least one model to validate")
    protos = {str(m): load_onnx(m) for m in models}
    first_meta = read_metadata(next(iter(protos.values())))
    reference = reference or _builtin_reference(protos)
    data_name = options.data or default_test_images(first_meta.dataset)
    source = open_source(data_name, classes=_shared_classes(protos, options), labels_file=options.labels_file)
    reference_model = _ReferenceModel(reference, first_meta)
    groups: dict[str, list[str]] = {}
    specs: dict[str, PreprocessSpec] = {}
    for name, proto in protos.items():
        spec = preprocessing_for(proto, source=name)
        _check_fits(proto, spec, name)
        reference_model.check_takes(spec.input_shape, name)
        specs[spec.to_json()] = spec
        groups.setdefault(spec.to_json(), []).append(name)
    calibrated_on = calibrated_hashes(protos.values())
    return Plan(protos, reference_model, source, source.indices(), specs, groups, options, calibrated_on)


def _shared_classes(protos: dict[str, onnx.ModelProto], options: ValidateOptions) -> ModelClasses:
    """The classes the data's labels are mapped to: those of the models that carry labels, which must agree (one
    image has one label for all the models judged on it).

    Raises:
        InputFileError: two models label their classes differently.
    """
    every = {name: model_classes(proto, label_map=options.label_map) for name, proto in protos.items()}
    labelled = {name: c for name, c in every.items() if c.labels is not None}
    first = next(iter(labelled.values()), next(iter(every.values())))
    for name, classes in labelled.items():
        if classes.labels != first.labels:
            raise InputFileError(
                f"{name} and {next(iter(labelled))} label their classes differently; validate them separately"
            )
    return first


def held_out_batches(plan: Plan, key: str) -> Iterator[tuple[np.ndarray, list]]:
    """The preprocessed batches of a group, less every image a quantized model was calibrated on (an image it was
    calibrated on says nothing about how it generalises); counts what was judged and left out on the plan.

    Raises:
        InputFileError: every image was a calibration image.
    """
    plan.images, plan.calibration_excluded = 0, 0
    for batch_images, batch_samples in iter_batches(plan.source, plan.specs[key], plan.indices, plan.options.batch):
        keep = [i for i, s in enumerate(batch_samples) if s.sha256 not in plan.calibrated_on]
        plan.calibration_excluded += len(batch_samples) - len(keep)
        plan.images += len(keep)
        if keep:
            yield batch_images[keep], [batch_samples[i] for i in keep]
    if not plan.images:
        raise InputFileError(
            f"{plan.source.name}: all {plan.calibration_excluded} images were used to calibrate the INT8 model;"
            " pass --data with other images"
        )


def validate_models(
    sources: Sequence[Path | str],
    reference: Reference | None = None,
    options: ValidateOptions | None = None,
    *,
    on_progress: ProgressCallback | None = None,
) -> ValidateResult:
    """Compare each model on each provider with the reference over the same images.

    Args:
        sources: the ONNX models to judge.
        reference: None finds the built-in checkpoint a model was exported from (by its recorded SHA-256).
        options: data, providers and thresholds.
        on_progress: told after each batch of images: ``Progress("validate", "images", done)``.

    Raises:
        OptionError: no models, no reference to be found, bad batch or thresholds.
        InputFileError: unreadable models or data, data that does not fit a model's input.
        CheckpointError: the reference checkpoint does not fit its arch.
        ProviderError: ``strict_ep`` and a provider is missing or took only part of the compute ops.
    """
    options = options or ValidateOptions()
    plan = plan_validation(sources, reference, options)
    rows = []
    done = 0
    labelled = True
    for key, names in plan.groups.items():
        opened = {
            (name, p): open_session(plan.protos[name], p, strict=options.strict_ep)
            for name in names
            for p in options.providers
        }
        same_as = fallbacks_already_run(opened, model_of=lambda key: key[0])
        sessions = {k: s for k, s in opened.items() if k not in same_as}
        expected_parts: list[np.ndarray] = []
        got_parts: dict[tuple[str, Provider], list[np.ndarray]] = {k: [] for k in sessions}
        labels: list[int | None] = []
        for images, samples in held_out_batches(plan, key):
            expected_parts.append(plan.reference(images))
            for (name, provider), session in sessions.items():
                got_parts[(name, provider)].append(session.logits(images))
            labels.extend(s.label for s in samples)
            done += len(samples)
            if on_progress is not None:
                on_progress(Progress(STAGE, "images", done, unit="img"))
        y = np.asarray(labels, np.int64) if all(label is not None for label in labels) else None
        labelled = labelled and y is not None
        outputs = {
            (name, provider.value): Outputs(
                np.concatenate(got_parts[same_as.get((name, provider), (name, provider))]),
                s.ran_on,
                s.providers_used,
                s.placement,
                s.executed,
            )
            for (name, provider), s in opened.items()
        }
        rows += judge_outputs(plan, np.concatenate(expected_parts), y, outputs)
    return finish_validation(plan, rows, labelled)


@dataclass(frozen=True)
class Outputs:
    """One model's logits on one provider, and where they were computed."""

    logits: np.ndarray
    ran_on: str
    providers_used: list[str]
    placement: Placement | None = None
    executed: list[ExecutedNode] = field(default_factory=list)  # the audited kernels, for integer coverage


def reference_inputs(plan: Plan, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """All images of a preprocessing group at once (for a device), the reference's logits and the labels (or None)."""
    images, expected, labels = [], [], []
    for batch, samples in held_out_batches(plan, key):
        images.append(batch)
        expected.append(plan.reference(batch))
        labels.extend(s.label for s in samples)
    y = np.asarray(labels, np.int64) if all(label is not None for label in labels) else None
    return np.concatenate(images), np.concatenate(expected), y


def judge_outputs(
    plan: Plan, expected: np.ndarray, y: np.ndarray | None, outputs: dict[tuple[str, str], Outputs]
) -> list[ValidateRow]:
    """Rows for one preprocessing group: each (model, provider)'s outputs judged against the reference's.

    The one place where parity becomes pass or fail, for outputs computed here or on a device alike.

    Raises:
        InputFileError: a model's class count differs from the reference's.
    """
    for (name, _), got in outputs.items():
        if got.logits.shape[1] != expected.shape[1]:
            raise InputFileError(
                f"{name} has {got.logits.shape[1]} classes but the reference ({plan.reference.description}) has"
                f" {expected.shape[1]}"
            )
    ref_acc = accuracy(expected, y) if y is not None else None
    rows = []
    for (name, provider), got in outputs.items():
        quantized = is_quantized(plan.protos[name])
        parity = compare_outputs(expected, got.logits)
        acc = accuracy(got.logits, y) if y is not None else None
        # FP16 changes every logit a little, as INT8 does: judged on decisions too.
        reduced = quantized or has_float16_weights(plan.protos[name])
        failures = _judge(parity, acc, ref_acc, reduced, plan.options, float(np.abs(expected).max()))
        rows.append(
            ValidateRow(
                model=Path(name).name,
                path=name,
                quantized=quantized,
                provider=provider,
                ran_on=got.ran_on,
                providers_used=got.providers_used,
                parity=parity,
                accuracy=acc,
                reference_accuracy=ref_acc,
                passed=not failures,
                failures=failures,
                placement=got.placement,
                coverage=coverage_of(plan.protos[name], got.executed),
                max_error_steps=_in_steps(parity.max_abs_error, plan.protos[name]) if quantized else None,
            )
        )
    return rows


def finish_validation(plan: Plan, rows: list[ValidateRow], labelled: bool) -> ValidateResult:
    """The result, rows in the order the models and providers were given."""
    providers = [p.value for p in plan.options.providers]
    rows.sort(key=lambda r: (list(plan.protos).index(r.path), providers.index(r.provider)))
    if plan.images < FEW_VALIDATION_IMAGES:
        left_out = (
            f" after leaving out {plan.calibration_excluded} calibration images" if plan.calibration_excluded else ""
        )
        warnings.warn(
            f"validating on only {plan.images} images from {plan.source.name}{left_out}; each image moves top-1"
            f" agreement by {1 / plan.images:.1%}: pass --data with more images",
            ResnetEdgeWarning,
            stacklevel=3,
        )
    return ValidateResult(
        rows=rows,
        reference=plan.reference.description,
        data=plan.source.name,
        calibration_excluded=plan.calibration_excluded,
        images=plan.images,
        labelled=labelled,
        thresholds=thresholds(plan.options),
        file_sha256={name: sha256_file(name) for name in plan.protos},
    )


def thresholds(options: ValidateOptions) -> dict[str, float | str]:
    return {
        "fp32_max_abs_error": f"max({FP32_MAX_ABS_ERROR:g}, {FP32_RELATIVE_ERROR:g} x max |reference logit|)",
        "fp32_min_agreement": options.min_agreement if options.min_agreement is not None else 1.0,
        "int8_min_agreement": options.min_agreement if options.min_agreement is not None else INT8_MIN_AGREEMENT,
        "int8_max_top1_drop_points": options.max_top1_drop if options.max_top1_drop is not None else INT8_MAX_TOP1_DROP,
        "fp32_max_top1_drop_points": options.max_top1_drop if options.max_top1_drop is not None else 0.0,
    }


def _judge(
    parity: Parity,
    acc: Accuracy | None,
    ref_acc: Accuracy | None,
    quantized: bool,
    options: ValidateOptions,
    scale: float,
) -> list[str]:
    failures = []
    if parity.non_finite:
        failures.append(f"{parity.non_finite} outputs contain NaN or Inf")
    limits = thresholds(options)
    kind = "int8" if quantized else "fp32"
    min_agreement = float(limits[f"{kind}_min_agreement"])
    if parity.top1_agreement < min_agreement:
        failures.append(f"top-1 agreement {parity.top1_agreement:.2%} < {min_agreement:.2%}")
    if not quantized:
        bound = max(FP32_MAX_ABS_ERROR, FP32_RELATIVE_ERROR * scale)
        if not parity.max_abs_error <= bound:
            failures.append(f"max abs logit error {parity.max_abs_error:.3g} > {bound:.3g}")
    if acc is not None and ref_acc is not None:
        drop = 100.0 * (ref_acc.top1 - acc.top1)
        max_drop = float(limits[f"{kind}_max_top1_drop_points"])
        if drop > max_drop + 1e-9:
            failures.append(f"top-1 accuracy drop {drop:.2f} points > {max_drop:g}")
    return failures


def _in_steps(error: float, proto: onnx.ModelProto) -> float | None:
    step = output_step(proto)
    return error / step if step else None


def has_float16_weights(model: onnx.ModelProto) -> bool:
    return any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)


def _builtin_reference(protos: dict[str, onnx.ModelProto]) -> Reference:
    from resnet_edge.models.checkpoints import BUILTIN_WEIGHTS

    recorded = {read_metadata(p).checkpoint_sha256 for p in protos.values()}
    for name, path in BUILTIN_WEIGHTS.items():
        if sha256_file(path) in recorded:
            return Reference(checkpoint=name)
    raise OptionError(
        "no --reference given and the model was not exported from a built-in checkpoint;"
        " pass --reference CKPT (with --arch) or --reference FP32.onnx"
    )


def _check_fits(proto: onnx.ModelProto, spec: PreprocessSpec, name: str) -> None:
    shape = static_input_shape(proto)
    if len(shape) != 4 or any(d is not None and d != s for d, s in zip(shape[1:], spec.input_shape, strict=False)):
        raise InputFileError(
            f"{name}: input {list(shape)} does not fit the data, preprocessed to {list(spec.input_shape)}"
        )


class _ReferenceModel:
    """The reference as a function from an image batch to logits."""

    def __init__(self, reference: Reference, meta: ModelMetadata) -> None:
        if reference.onnx is not None:
            ref_proto = load_onnx(reference.onnx)
            if is_quantized(ref_proto):
                raise OptionError(f"reference {reference.onnx} is quantized; the reference must be FP32")
            session = open_session(ref_proto, audit=False)
            self.run = session.logits
            self.description = f"ONNX {reference.onnx}"
            shape = static_input_shape(ref_proto)
            self.input_shape = tuple(shape[1:]) if len(shape) == 4 else None
            return
        import torch

        from resnet_edge.models.checkpoints import build_model, read_checkpoint_metadata

        arch = reference.arch or read_checkpoint_metadata(reference.checkpoint).get("arch") or meta.arch
        if arch is None:
            raise OptionError("cannot tell the reference checkpoint's arch; pass --arch")
        model = build_model(arch, weights=reference.checkpoint, variant=meta.variant or "residual").model
        self.description = f"PyTorch {arch} {reference.checkpoint}"
        self.input_shape = (model.conv1.in_channels, None, None)  # a ResNet takes any size it is not too small for

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        self.run = run

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.run(images)

    def check_takes(self, shape: tuple[int, ...], name: str) -> None:
        """Refuse a model whose (C, H, W) input the reference cannot take, naming both shapes.

        Raises:
            InputFileError: a known dimension differs.
        """
        if self.input_shape is None:
            return
        if any(r is not None and r != s for r, s in zip(self.input_shape, shape, strict=False)):
            shown = ["?" if d is None else d for d in self.input_shape]
            raise InputFileError(
                f"{name} takes input {list(shape)} (C, H, W) but the reference ({self.description}) takes {shown};"
                " compare models of the same input"
            )


def describe_failures(result: ValidateResult) -> str:
    """One line per failed row, for the CLI."""
    return "; ".join(f"{row.model} on {row.ran_on}: {', '.join(row.failures)}" for row in result.rows if not row.passed)


class ValidationFailedError(CheckFailedError):
    """A validation that ran and found models off their reference; ``result`` holds every row, passed or not."""

    def __init__(self, result: ValidateResult, *, where: str | None = None) -> None:
        super().__init__(f"{where + ': ' if where else ''}validation failed: {describe_failures(result)}")
        self.result = result


def require_passed(result: ValidateResult, *, where: str | None = None) -> ValidateResult:
    """``result`` if every row passed.

    Raises:
        ValidationFailedError: a row failed (``where`` names the target it ran on, if any).
    """
    if not result.passed:
        raise ValidationFailedError(result, where=where)
    return result
