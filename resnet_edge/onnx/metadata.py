"""What an ONNX model says about itself, in its ``metadata_props``.

Export writes the architecture, class count and labels, the preprocessing and the provenance; simplify and quantize
carry every key over and add a record of their own. Later stages read from here, so nobody repeats an option.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from resnet_edge.artifacts import atomic_output
from resnet_edge.calibration.labels import ModelClasses
from resnet_edge.calibration.preprocess import PreprocessSpec
from resnet_edge.errors import InputFileError, OptionError, ResnetEdgeWarning
from resnet_edge.onnx.graph import graph_input

PRODUCER = "resnet-edge"
# Keys holding JSON; everything else is a plain string.
SIMPLIFICATION_KEY = "simplification"
QUANTIZATION_KEY = "quantization"
# The provenance's checkpoint of a model whose weights were drawn at random (no checkpoint given, or one that says so).
RANDOM_INIT = "random init"


@dataclass
class ModelMetadata:
    """The self-description resnet-edge writes into every model it produces.

    Attributes that an ONNX file from another tool lacks are None.
    """

    arch: str | None = None
    variant: str | None = None
    num_classes: int | None = None
    in_chans: int | None = None
    preprocessing: PreprocessSpec | None = None
    labels: list[str] | None = None
    dataset: str | None = None
    checkpoint_sha256: str | None = None
    batch: str | None = None  # "dynamic" or the fixed batch size
    provenance: dict[str, str] = field(default_factory=dict)  # exporter, versions, opset, source hashes

    @property
    def random_weights(self) -> bool:
        """The weights are known to be random: agreement on decisions then measures noise (issue 24)."""
        return self.provenance.get("checkpoint") == RANDOM_INIT

    def to_props(self) -> dict[str, str]:
        props: dict[str, str] = {"producer": PRODUCER}
        for key in ("arch", "variant", "dataset", "checkpoint_sha256", "batch"):
            value = getattr(self, key)
            if value is not None:
                props[key] = str(value)
        for key in ("num_classes", "in_chans"):
            value = getattr(self, key)
            if value is not None:
                props[key] = str(int(value))
        if self.preprocessing is not None:
            props["preprocessing"] = self.preprocessing.to_json()
            props["input_size"] = str(self.preprocessing.crop)
        if self.labels is not None:
            props["labels"] = json.dumps(self.labels)
        props["provenance"] = json.dumps(self.provenance, sort_keys=True)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ModelMetadata:
        def as_int(key: str) -> int | None:
            return int(props[key]) if key in props else None

        return cls(
            arch=props.get("arch"),
            variant=props.get("variant"),
            num_classes=as_int("num_classes"),
            in_chans=as_int("in_chans"),
            preprocessing=PreprocessSpec.from_json(props["preprocessing"]) if "preprocessing" in props else None,
            labels=_labels(json.loads(props["labels"])) if "labels" in props else None,
            dataset=props.get("dataset"),
            checkpoint_sha256=props.get("checkpoint_sha256"),
            batch=props.get("batch"),
            provenance=json.loads(props.get("provenance", "{}")),
        )


def _labels(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(label, str) for label in value):
        raise ValueError(f"labels must be a list of class names, got {str(value)[:80]}")
    return value


def model_classes(model: onnx.ModelProto, *, label_map: Path | str | None = None) -> ModelClasses:
    """What ``model`` says about its classes (its labels, its class count: the metadata's, else its output's width),
    with the user's ``--label-map``: what :func:`resnet_edge.calibration.sources.open_source` maps labels to.

    Raises:
        InputFileError: malformed metadata.
    """
    meta = read_metadata(model)
    num_classes = meta.num_classes
    if num_classes is None:
        dims = model.graph.output[0].type.tensor_type.shape.dim if model.graph.output else []
        num_classes = dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None
    return ModelClasses(
        labels=tuple(meta.labels) if meta.labels is not None else None,
        num_classes=num_classes,
        label_map=Path(label_map) if label_map is not None else None,
    )


def read_props(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def write_props(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Set ``props`` on ``model``, replacing keys that exist and keeping the others.

    A model that describes itself as resnet-edge's (its ``producer`` key) is also stamped so in the ONNX header:
    onnxruntime's quantizer writes ``onnx.quantize 0.1.0`` there, and a file shows one producer (issue 22).
    """
    from resnet_edge import __version__

    merged = read_props(model) | props
    del model.metadata_props[:]
    for key, value in merged.items():
        model.metadata_props.add(key=key, value=value)
    if merged.get("producer") == PRODUCER:
        model.producer_name, model.producer_version = PRODUCER, __version__


def write_with_record(
    model: onnx.ModelProto, output: Path, sidecar: Path, *, key: str, embedded: dict, record: dict
) -> int:
    """Embed ``embedded`` in ``model``'s metadata under ``key`` and write the model to ``output`` and ``record`` to
    its JSON ``sidecar``, both atomically (neither is left half-written, and a failure leaves neither new).

    Returns:
        The model file's size in bytes.

    Raises:
        OutputWriteError: a file could not be written (a full disk), naming it.
    """
    write_props(model, {key: json.dumps(embedded, sort_keys=True)})
    data = model.SerializeToString()
    with atomic_output(output) as tmp_model, atomic_output(sidecar) as tmp_sidecar:
        tmp_model.write_bytes(data)
        tmp_sidecar.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return len(data)


def read_metadata(model: onnx.ModelProto) -> ModelMetadata:
    """The model's self-description.

    Raises:
        InputFileError: a key resnet-edge reads holds something it cannot parse.
    """
    props = read_props(model)
    try:
        return ModelMetadata.from_props(props)
    except (ValueError, KeyError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise InputFileError(f"the model's metadata_props are malformed ({type(exc).__name__}: {exc})") from None
    except OptionError as exc:  # a preprocessing record that parses but makes no sense (NaN std, absurd resize)
        raise InputFileError(f"the model's metadata_props hold an unusable preprocessing record: {exc}") from None


def read_record(model: onnx.ModelProto, key: str) -> dict | None:
    """A JSON record written by a stage (``simplification``, ``quantization``), or None."""
    text = read_props(model).get(key)
    return json.loads(text) if text else None


def static_input_shape(model: onnx.ModelProto) -> tuple[int | None, ...]:
    """The first graph input's shape; None for a symbolic or unknown dimension."""
    dims = graph_input(model).type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)


def preprocessing_for(model: onnx.ModelProto, *, source: str = "model") -> PreprocessSpec:
    """The preprocessing a model carries or, for an ONNX file from another tool, ImageNet's at its input size.

    Raises:
        InputFileError: the model carries none and its input is not a fixed-size NCHW image.
    """
    meta = read_metadata(model)
    if meta.preprocessing is not None:
        return meta.preprocessing
    shape = static_input_shape(model)
    if len(shape) != 4 or shape[1] not in (1, 3) or shape[2] is None or shape[2] != shape[3]:
        raise InputFileError(
            f"{source} carries no preprocessing metadata and its input {list(shape)} is not a square NCHW image;"
            " export it with resnet-edge"
        )
    warnings.warn(
        f"{source} carries no preprocessing metadata; assuming ImageNet normalisation at {shape[2]}x{shape[3]}",
        ResnetEdgeWarning,
        stacklevel=2,
    )
    return PreprocessSpec.imagenet(shape[2], channels=shape[1])
