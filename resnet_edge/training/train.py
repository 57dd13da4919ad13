"""``resnet-edge train``: a ResNet trained from scratch, or fine-tuned from any checkpoint the toolkit loads, on a
folder of class sub-folders (or arrays, or a built-in data set), into a checkpoint that describes itself.

The checkpoint (``.safetensors``) records in its metadata the architecture, variant, labels in index order, the
preprocessing, the data set and its hash, the validation accuracy and the command, so ``export``, ``validate`` and
``pipeline --weights model.safetensors`` need no other option. After every epoch three files are written atomically
beside it: the checkpoint itself, ``NAME.metrics.json`` (every epoch so far) and ``NAME.resume.pt`` (model, optimiser,
scheduler and random state), so an interruption keeps the last complete epoch and ``--resume`` continues from it to
the same weights an uninterrupted run gives. The resume file is removed when the run completes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from resnet_edge import formatting as fmt
from resnet_edge.artifacts import (
    atomic_output,
    refuse_overwriting_inputs,
    require_writable_destination,
    sha256_file,
    write_json_atomic,
)
from resnet_edge.calibration.preprocess import PreprocessSpec
from resnet_edge.errors import CheckpointError, InputFileError, OptionError, ResnetEdgeWarning
from resnet_edge.jsonable import to_jsonable
from resnet_edge.memory import check_fits
from resnet_edge.models.checkpoints import (
    build_model,
    infer_in_chans,
    infer_num_classes,
    read_checkpoint_metadata,
    read_state_dict,
    resolve_weights,
    write_safetensors,
)
from resnet_edge.models.memory import torch_estimate
from resnet_edge.models.registry import Stem, Variant, default_preprocessing, get_arch
from resnet_edge.models.resnet import ResNet, create_model
from resnet_edge.progress import Progress, ProgressCallback
from resnet_edge.training.data import (
    STAGE,
    BatchAugment,
    LabelledTensors,
    centre_crop,
    check_val_classes,
    class_names_of,
    data_statistics,
    dataset_sha256,
    decode,
    open_labelled,
    stratified_split,
    training_spec,
    unnormalised,
)
from resnet_edge.training.loop import EpochMetrics, SGDStep, fit
from resnet_edge.training.options import ONECYCLE_MOMENTUM_SWING, Augment, Normalize, Schedule, TrainOptions

logger = logging.getLogger("resnet_edge")

CHECKPOINT_SUFFIX = ".safetensors"
METRICS_SUFFIX = ".metrics.json"
RESUME_SUFFIX = ".resume.pt"
RESUME_FORMAT = 1  # bumped when the resume file's contents change meaning
TRAINED_BY = "resnet-edge train"
_NAMES_SHOWN = 8  # class names quoted in a mismatch message


@dataclass(frozen=True)
class TrainResult:
    """A finished training run.

    Attributes:
        output: the checkpoint; ``metrics``: the per-epoch JSON beside it.
        labels: class names by output index, as the checkpoint records them.
        fine_tuned_from: the checkpoint fine-tuned, with ``new_head`` if its classifier was replaced; None from
            scratch. ``frozen``: the module names kept fixed.
        train_images, val_images: how many images each epoch trained on, and judged on.
        val_data: where the held-out images came from.
        epochs: the epochs planned; ``history``: every epoch's metrics so far, those of an interrupted run that this
            one resumed included.
        resumed_from: the epochs already complete when this run started (0 for a fresh run).
        command: the command line (or library call) that started the run.
        seconds: this run's wall time so far, decoding included.
    """

    output: Path
    metrics: Path
    arch: str
    variant: str
    labels: list[str]
    preprocessing: PreprocessSpec
    fine_tuned_from: str | None
    new_head: bool
    frozen: list[str]
    dataset: str
    dataset_sha256: str
    train_images: int
    val_images: int
    val_data: str
    epochs: int
    history: list[EpochMetrics]
    resumed_from: int
    seed: int
    threads: int
    command: str
    seconds: float

    @property
    def val_accuracy(self) -> float | None:
        """The last epoch's held-out accuracy (None without held-out images)."""
        return self.history[-1].val_accuracy if self.history else None


def metrics_path(output: Path | str) -> Path:
    """``model.safetensors`` -> ``model.metrics.json`` beside it."""
    output = Path(output)
    return output.with_name(output.name.removesuffix(CHECKPOINT_SUFFIX) + METRICS_SUFFIX)


def resume_path(output: Path | str) -> Path:
    """``model.safetensors`` -> ``model.resume.pt`` beside it."""
    output = Path(output)
    return output.with_name(output.name.removesuffix(CHECKPOINT_SUFFIX) + RESUME_SUFFIX)


def initial_model(arch: str, *, variant: Variant | str, num_classes: int, seed: int, in_chans: int = 3) -> ResNet:
    """The freshly initialised network a from-scratch run starts from, drawn with ``seed`` (the caller's random
    state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(arch, num_classes=num_classes, in_chans=in_chans, variant=variant)


@dataclass(frozen=True)
class _Plan:
    """What the options and the checkpoint say about the model, before any image is read."""

    arch: str
    variant: Variant
    spec: PreprocessSpec
    weights: Path | None
    weights_labels: list[str] | None
    weights_classes: int | None
    in_chans: int


@dataclass(frozen=True)
class _Data:
    train: LabelledTensors
    val: LabelledTensors | None
    class_names: list[str]
    spec: PreprocessSpec  # as the checkpoint records it (normalisation from the data where asked)
    dataset: str
    sha256: str
    val_data: str


def train_model(
    source: str | Path,
    output: Path | str,
    options: TrainOptions | None = None,
    *,
    on_progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train a ResNet on ``source`` and write the checkpoint ``output`` (``.safetensors``) after every epoch.

    Args:
        source: the training images: a folder of class sub-folders, an ``.npz`` with labels, or ``builtin:NAME``.
        output: the checkpoint to write; its metrics and resume files go beside it.
        options: architecture, fine-tuning, data split, schedule, seed (:class:`TrainOptions`).
        on_progress: told of decoding (``decode train``/``decode val``, images), of each batch (``epoch E/N``,
            images, with the running loss and accuracy) and of each saved epoch (``epochs``, with a summary).

    Returns:
        The run: files, labels, data set, per-epoch metrics.

    Raises:
        OptionError: bad options, no arch, a resume with other options, a run that cannot fit in memory.
        InputFileError: unreadable or unlabelled data, one class, an empty class, the data's classes not the
            fine-tuned checkpoint's, an output that is an input, a missing resume file.
        CheckpointError: the checkpoint does not fit the architecture.
    """
    options = options or TrainOptions()
    started = time.perf_counter()
    report = on_progress or (lambda event: None)
    output, metrics_file, resume_file = _check_files(source, output, options)
    threads = options.threads or torch.get_num_threads()
    with _torch_settings(threads):
        plan = _plan(options)
        _check_memory(plan, options.batch)
        data = _load_data(str(source), options, plan, threads=threads, on_progress=report)
        model, fine_tuned_from, new_head = _build(plan, data.class_names, options)
        frozen = _freeze(model, options.freeze)
        step = _sgd_step(model, options, steps_per_epoch=math.ceil(len(data.train) / options.batch))
        generator = torch.Generator().manual_seed(options.seed)
        history = _restore(resume_file, options, data.sha256, model, step, generator) if options.resume else []
        result = _initial_result(
            output,
            options,
            plan,
            data,
            metrics=metrics_file,
            fine_tuned_from=fine_tuned_from,
            new_head=new_head,
            frozen=[name for name, _ in frozen],
            history=history,
            threads=threads,
            command=options.command or _library_call(source, output, options),
        )

        def on_epoch(metrics: EpochMetrics) -> None:
            nonlocal result
            history.append(metrics)
            result = replace(result, history=list(history), seconds=time.perf_counter() - started)
            _save_checkpoint(result, model, options)
            write_json_atomic(metrics_file, to_jsonable(result))
            _save_resume(resume_file, options, data.sha256, model, step, generator, history)
            report(Progress(STAGE, "epochs", metrics.epoch, options.epochs, unit="epoch", detail=_summary(metrics)))

        if result.resumed_from < options.epochs:
            fit(
                model,
                data.train,
                epochs=options.epochs,
                batch=options.batch,
                step=step,
                generator=generator,
                augment=_augmentation(plan, options),
                val=data.val,
                start_epoch=result.resumed_from,
                frozen=[module for _, module in frozen],
                on_epoch=on_epoch,
                on_progress=report,
            )
    resume_file.unlink(missing_ok=True)  # ours, and the run it could continue is complete
    return replace(result, seconds=time.perf_counter() - started)


def _initial_result(
    output: Path,
    options: TrainOptions,
    plan: _Plan,
    data: _Data,
    *,
    metrics: Path,
    fine_tuned_from: str | None,
    new_head: bool,
    frozen: list[str],
    history: list[EpochMetrics],
    threads: int,
    command: str,
) -> TrainResult:
    """The run before its first epoch here (a resumed run's earlier epochs are in ``history``)."""
    return TrainResult(
        output=output,
        metrics=metrics,
        arch=plan.arch,
        variant=plan.variant.value,
        labels=data.class_names,
        preprocessing=data.spec,
        fine_tuned_from=fine_tuned_from,
        new_head=new_head,
        frozen=frozen,
        dataset=data.dataset,
        dataset_sha256=data.sha256,
        train_images=len(data.train),
        val_images=len(data.val) if data.val is not None else 0,
        val_data=data.val_data,
        epochs=options.epochs,
        history=list(history),
        resumed_from=len(history),
        seed=options.seed,
        threads=threads,
        command=command,
        seconds=0.0,
    )


def _check_files(source: str | Path, output: Path | str, options: TrainOptions) -> tuple[Path, Path, Path]:
    """The checkpoint, its metrics file and its resume file, checked: none is an input, the checkpoint is a
    writable ``.safetensors``, and a resume file is there exactly when ``--resume`` asks for one.

    Raises:
        OptionError: another suffix, or a resume file left by an interrupted run that ``--resume`` does not continue.
        InputFileError: ``--resume`` without a resume file, or an output that is an input.
    """
    metrics_file, resume_file = metrics_path(output), resume_path(output)
    refuse_overwriting_inputs(
        [output, metrics_file, resume_file], [source, options.val, options.weights], command="train output"
    )
    output = _check_output(output)
    if options.resume and not resume_file.is_file():
        raise InputFileError(f"nothing to resume: {resume_file} not found (it is removed when a run completes)")
    if not options.resume and resume_file.exists():
        raise OptionError(
            f"{resume_file} holds an interrupted run: pass --resume to continue it, or delete it to start afresh"
        )
    return output, metrics_file, resume_file


def _sgd_step(model: nn.Module, options: TrainOptions, *, steps_per_epoch: int) -> SGDStep:
    """Nesterov SGD over the trainable parameters, label-smoothed cross-entropy, the schedule stepped per batch."""
    lr = options.resolved_lr()
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=lr,
        momentum=options.momentum,
        weight_decay=options.weight_decay,
        nesterov=True,
    )
    scheduler = _scheduler(optimizer, options, lr, steps_per_epoch=steps_per_epoch)
    return SGDStep(optimizer, nn.CrossEntropyLoss(label_smoothing=options.label_smoothing), scheduler)


def _check_output(output: Path | str) -> Path:
    output = Path(output)
    if output.suffix != CHECKPOINT_SUFFIX:
        raise OptionError(
            f"the checkpoint is written as safetensors, whose metadata carries its description: name it"
            f" {output.with_suffix(CHECKPOINT_SUFFIX).name}, not {output.name}"
        )
    return require_writable_destination(output)


@contextlib.contextmanager
def _torch_settings(threads: int) -> Iterator[None]:
    """PyTorch's thread count and deterministic algorithms for the run, restored after it."""
    before, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        torch.use_deterministic_algorithms(deterministic)


def _plan(options: TrainOptions) -> _Plan:
    """Arch, variant, preprocessing and the checkpoint's classes, from the options and the checkpoint's record."""
    weights = resolve_weights(options.weights) if options.weights is not None else None
    recorded = read_checkpoint_metadata(weights) if weights is not None else {}
    state = read_state_dict(weights) if weights is not None else None
    arch = options.arch or recorded.get("arch")
    if arch is None:
        where = "no arch given" if weights is None else f"{weights} records no arch"
        raise OptionError(f"{where}; pass --arch")
    spec_of_arch = get_arch(arch)
    if options.input_size is not None and options.input_size < spec_of_arch.min_input_size:
        raise OptionError(
            f"{arch} needs inputs of at least {spec_of_arch.min_input_size} pixels, got {options.input_size}"
        )
    variant = Variant(options.variant or recorded.get("variant") or Variant.RESIDUAL)
    in_chans = (infer_in_chans(state) if state is not None else None) or 3
    if "preprocessing" in recorded:
        spec = PreprocessSpec.from_json(recorded["preprocessing"]).resized(options.input_size)
    else:
        spec = default_preprocessing(arch, size=options.input_size, channels=in_chans)
    if spec.crop < spec_of_arch.min_input_size:
        raise OptionError(f"{arch} needs inputs of at least {spec_of_arch.min_input_size} pixels, got {spec.crop}")
    labels = json.loads(recorded["labels"]) if "labels" in recorded else None
    return _Plan(
        arch=arch,
        variant=variant,
        spec=spec,
        weights=weights,
        weights_labels=labels,
        weights_classes=infer_num_classes(state) if state is not None else None,
        in_chans=in_chans,
    )


def _load_data(
    source: str, options: TrainOptions, plan: _Plan, *, threads: int, on_progress: ProgressCallback
) -> _Data:
    """Open, decode (once), check and split the training and held-out images."""
    train_source = open_labelled(source)
    names = train_source.label_names()
    own = plan.weights_labels
    if own and not options.new_head and names and names != own and set(names) == set(own):
        # The checkpoint's own classes: each keeps the output it was trained for.
        train_source = open_labelled(source, class_names=own)
    indices = train_source.indices(limit=options.limit, seed=options.seed)
    spec = plan.spec
    if options.normalize is Normalize.DATA:
        raw = decode(train_source, unnormalised(training_spec(spec)), indices, threads=threads, what="train")
        mean, std = data_statistics(raw.tensors)
        spec = replace(spec, mean=mean, std=std)
        del raw
    train = decode(train_source, training_spec(spec), indices, threads=threads, what="train", on_progress=on_progress)
    class_names = class_names_of(train)
    train_tensors, val_tensors = train.tensors, None
    parts: list[tuple[str, list[str], torch.Tensor]] = []
    if options.val is not None:
        val_source = open_labelled(options.val, class_names=class_names if train.class_names else None)
        val_indices = val_source.indices(limit=options.val_limit, seed=options.seed)
        val = decode(val_source, spec, val_indices, threads=threads, what="val", on_progress=on_progress)
        check_val_classes(val, class_names)
        val_tensors = val.tensors
        val_data = (
            val.name
            if options.val_limit is None
            else f"{len(val_indices):,} images of {val.name} (seed {options.seed})"
        )
        parts = [("train", train.sha256, train.tensors.labels), ("val", val.sha256, val.tensors.labels)]
    else:
        fraction = options.resolved_val_fraction
        kept, held = stratified_split(train.tensors.labels, fraction, seed=options.seed)
        if held:
            train_tensors = train.tensors.subset(kept)
            held_out = train.tensors.subset(held)
            val_tensors = LabelledTensors(centre_crop(held_out.images, spec.crop), held_out.labels)
        val_data = f"{fraction:g} of each class of {train.name}, drawn with seed {options.seed}" if held else "none"
        parts = [
            ("train", [train.sha256[i] for i in kept], train.tensors.labels[kept]),
            ("val", [train.sha256[i] for i in held], train.tensors.labels[held]),
        ]
    return _Data(
        train=train_tensors,
        val=val_tensors,
        class_names=class_names,
        spec=spec,
        dataset=train.dataset,
        sha256=dataset_sha256(class_names, parts),
        val_data=val_data,
    )


def _build(plan: _Plan, class_names: list[str], options: TrainOptions) -> tuple[ResNet, str | None, bool]:
    """The model to train, the checkpoint it was fine-tuned from (None from scratch), and whether its classifier
    is new."""
    classes = len(class_names)
    if plan.weights is None:
        return initial_model(plan.arch, variant=plan.variant, num_classes=classes, seed=options.seed), None, False
    new_head = options.new_head or _needs_new_head(plan, class_names)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        model = build_model(plan.arch, weights=plan.weights, variant=plan.variant).model
        if new_head:
            model.fc = nn.Linear(model.fc.in_features, classes)
    origin = f"{plan.weights.name} (sha256 {sha256_file(plan.weights)})"
    return model, origin, new_head


def _needs_new_head(plan: _Plan, class_names: list[str]) -> bool:
    """Whether the checkpoint's classifier must be replaced for these classes.

    Raises:
        InputFileError: the checkpoint's labels are other class names, as many as the data's.
    """
    if plan.weights_labels:
        if plan.weights_labels == class_names:
            return False
        if len(plan.weights_labels) == len(class_names):
            raise InputFileError(
                f"the data's classes ({_names(class_names)}) are not the ones {_name(plan.weights)}"
                f" was trained on ({_names(plan.weights_labels)}); pass --new-head to train a new classifier for them"
            )
        return True
    if plan.weights_classes == len(class_names):
        warnings.warn(
            f"{_name(plan.weights)} records no labels: its {len(class_names)}"
            f" outputs are taken to be the data's classes in order ({_names(class_names)}); --new-head trains a new"
            " classifier instead",
            ResnetEdgeWarning,
            stacklevel=3,
        )
        return False
    return True


def _name(weights: Path | None) -> str:
    return weights.name if weights is not None else "the checkpoint"


def _names(names: list[str]) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > _NAMES_SHOWN else ""
    return ", ".join(names[:_NAMES_SHOWN]) + more


def _freeze(model: ResNet, parts: int) -> list[tuple[str, nn.Module]]:
    """Keep the first ``parts`` parts (the stem, then each stage) fixed: no gradients, BatchNorm in eval mode.

    Raises:
        OptionError: more parts than the network has besides its classifier.
    """
    stem = [(name, module) for name in ("conv1", "bn1") if (module := getattr(model, name, None)) is not None]
    available = [("stem", nn.ModuleList([m for _, m in stem]))] + [
        (f"layer{i + 1}", stage) for i, stage in enumerate(model.stages())
    ]
    if parts > len(available):
        names = ", ".join(name for name, _ in available)
        raise OptionError(f"--freeze {parts}: the network has {len(available)} parts before its classifier ({names})")
    chosen = available[:parts]
    for _, module in chosen:
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    return chosen


def _check_memory(plan: _Plan, batch: int) -> None:
    """Refuse, before any image is read, a training batch the machine cannot hold."""
    estimate = torch_estimate(
        plan.arch,
        num_classes=plan.weights_classes,
        in_chans=plan.in_chans,
        variant=plan.variant.value,
        input_size=plan.spec.crop,
        training=True,
    )
    size = plan.spec.crop
    check_fits(f"training {plan.arch} at {size}x{size}", estimate, batch, hint="use a smaller --batch")


def _scheduler(
    optimizer: torch.optim.Optimizer, options: TrainOptions, lr: float, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if options.schedule is Schedule.ONECYCLE:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=lr,
            epochs=options.epochs,
            steps_per_epoch=steps_per_epoch,
            # rounded: 0.9 + 0.05 is 0.9500000000000001 in binary floating point
            base_momentum=round(options.momentum - ONECYCLE_MOMENTUM_SWING, 10),
            max_momentum=round(options.momentum + ONECYCLE_MOMENTUM_SWING, 10),
        )
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.epochs * steps_per_epoch)


def _augmentation(plan: _Plan, options: TrainOptions) -> BatchAugment | None:
    if options.augment is Augment.NONE:
        # Training images are kept at the resized size; without a random crop they are cropped at the centre.
        return None if plan.spec.resize == plan.spec.crop else BatchAugment(plan.spec.crop, 0, crop=False, flip=False)
    # The 32x32 family has no resize margin to crop from: its images are padded (He et al. 2015, 4.2).
    pad = options.pad if get_arch(plan.arch).stem is Stem.SMALL else 0
    return BatchAugment(plan.spec.crop, pad, crop=True, flip=options.augment is Augment.CROP_FLIP)


def _summary(metrics: EpochMetrics) -> str:
    held = (
        f", val loss {metrics.val_loss:.4f}, val accuracy {fmt.percent(metrics.val_accuracy)}"
        if metrics.val_loss is not None
        else ""
    )
    return (
        f"epoch {metrics.epoch}: train loss {metrics.train_loss:.4f}, train accuracy"
        f" {fmt.percent(metrics.train_accuracy)}{held}, {metrics.images_per_second:,.0f} img/s, {metrics.seconds:.1f} s"
    )


def _library_call(source: str | Path, output: Path, options: TrainOptions) -> str:
    """What a library call looked like, for the checkpoint's record: the options that differ from the defaults."""
    defaults = TrainOptions().recipe()
    changed = [f"{k}={v!r}" for k, v in options.recipe().items() if v != defaults[k]]
    return f"train_model({str(source)!r}, {str(output)!r}, TrainOptions({', '.join(changed)}))"


def _save_checkpoint(result: TrainResult, model: nn.Module, options: TrainOptions) -> None:
    """The checkpoint, describing itself in its metadata (string values, as safetensors keeps them)."""
    last = result.history[-1]
    metadata = {
        "arch": result.arch,
        "variant": result.variant,
        "labels": json.dumps(result.labels),
        "preprocessing": result.preprocessing.to_json(),
        "dataset": result.dataset,
        "dataset_sha256": result.dataset_sha256,
        "train_images": str(result.train_images),
        "val_images": str(result.val_images),
        "val_data": result.val_data,
        "epochs": str(result.epochs),
        "epochs_completed": str(last.epoch),
        "seed": str(result.seed),
        "threads": str(result.threads),
        "torch": torch.__version__,
        "trained_by": TRAINED_BY,
        "command": result.command,
        "train_options": json.dumps(options.recipe(), sort_keys=True),
    }
    if last.val_accuracy is not None:
        metadata["val_accuracy"] = f"{last.val_accuracy:.4f}"
    if result.fine_tuned_from is not None:
        metadata["fine_tuned_from"] = result.fine_tuned_from
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_output(result.output) as tmp:
        write_safetensors(tmp, state, metadata)


def _save_resume(
    path: Path,
    options: TrainOptions,
    data_sha256: str,
    model: nn.Module,
    step: SGDStep,
    generator: torch.Generator,
    history: list[EpochMetrics],
) -> None:
    state = {
        "format": RESUME_FORMAT,
        "recipe": json.dumps(options.recipe(), sort_keys=True),
        "dataset_sha256": data_sha256,
        "history": json.dumps([dataclasses.asdict(m) for m in history]),
        "model": model.state_dict(),
        "optimizer": step.optimizer.state_dict(),
        "scheduler": step.scheduler.state_dict() if step.scheduler is not None else {},
        "generator": generator.get_state(),
    }
    buffer = io.BytesIO()  # written with plain file I/O: a full disk is then an OSError, not torch's RuntimeError
    torch.save(state, buffer)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def _restore(
    path: Path,
    options: TrainOptions,
    data_sha256: str,
    model: nn.Module,
    step: SGDStep,
    generator: torch.Generator,
) -> list[EpochMetrics]:
    """Put the model, optimiser, scheduler and generator back as the interrupted run left them after its last
    complete epoch; the epochs' metrics so far.

    Raises:
        InputFileError: not a resume file of this version.
        OptionError: the run was started with other options, or on other data.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != RESUME_FORMAT:
            raise KeyError("format")
        recipe = json.loads(state["recipe"])
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, AttributeError) as exc:
        raise InputFileError(f"{path}: not a resume file of this resnet-edge version ({exc})") from None
    current = options.recipe()
    changed = [f"{k} {recipe.get(k)!r} -> {v!r}" for k, v in current.items() if recipe.get(k) != v]
    if changed:
        raise OptionError(
            f"--resume continues the run in {path.name} with its own options; these differ: {'; '.join(changed)}"
        )
    if state["dataset_sha256"] != data_sha256:
        raise OptionError(f"--resume: the images differ from those the run in {path.name} started on")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the saved model does not fit ({str(exc).splitlines()[0]})") from None
    step.optimizer.load_state_dict(state["optimizer"])
    if step.scheduler is not None:
        step.scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    history = [EpochMetrics(**m) for m in json.loads(state["history"])]
    logger.debug("resumed %s after epoch %d", path, len(history))
    return history
