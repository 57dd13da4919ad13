"""Which class of the model each labelled image belongs to: the one rule, for every stage that reads labels.

Labelled data names its classes its own way: class sub-folders (``cat/``, ``dog/``), a labels file
(``relative/path,label``), or a data set's own names (Fashion-MNIST's ``tshirt``, ``trouser``, ...). A model numbers
its classes, and names them when it carries ``labels``. Every accuracy figure depends on matching the two, so it is
done here once (issue 21: a quantize that numbered class folders alphabetically printed 35.80% for a model that
scores 89.65%):

- the model carries labels: each class name must be one of them, and maps to its index; a name that is not is
  refused, naming both sides, never guessed;
- ``--label-map FILE`` says it explicitly: one ``name,class`` line per data class (class: a model label or an index);
- the model carries no labels: integer names are class indices, other names are numbered in sorted order
  (torchvision's ``ImageFolder`` convention), and a note says so.

This module imports nothing heavy, so that the options classes declare ``--label-map`` here once.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from resnet_edge.errors import InputFileError, OptionError, ResnetEdgeWarning

LABEL_MAP_HELP = (
    "Which model class each data class is: a file of 'name,class' lines (class folder or data set class name; class:"
    " a model label or index). [default: the model's labels; without labels, sorted names, as torchvision]"
)
# How many names an error lists of each side before it says how many more there are: one line stays readable.
NAMES_SHOWN = 12


# The ``label_map`` field's metadata in every options class that reads labelled images (``field(default=None,
# metadata=LABEL_MAP)``): the flag, declared once.
LABEL_MAP = MappingProxyType({"flag": "--label-map", "metavar": "FILE", "help": LABEL_MAP_HELP})


@dataclass(frozen=True)
class ModelClasses:
    """What a model says about its classes, and what the user said about the data's.

    Attributes:
        labels: the model's class names, by index (its ``labels`` metadata), or None.
        num_classes: how many classes the model outputs, or None where unknown.
        label_map: the user's ``--label-map`` file, or None.
    """

    labels: tuple[str, ...] | None = None
    num_classes: int | None = None
    label_map: Path | None = None

    def __post_init__(self) -> None:
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(str(label) for label in self.labels))


@dataclass(frozen=True)
class ClassMapping:
    """Each data class name's model class index, and the rule that gave it (said in results and notes)."""

    index: dict[str, int]
    rule: str


def map_classes(names: Sequence[str], classes: ModelClasses, *, what: str) -> ClassMapping:
    """The model class index of each data class name, by the rule in the module docstring.

    Args:
        names: the data's class names (sub-folder names, a data set's class names).
        classes: the model's labels and class count, and the user's label map.
        what: how an error or a note names the data (``class folders of val/``).

    Returns:
        The mapping; with no label map and no model labels, a :class:`ResnetEdgeWarning` says which convention.

    Raises:
        InputFileError: a name the model's labels or the label map do not hold, a label map naming an unknown class,
            an index beyond the model's classes, or a model label given twice.
        OptionError: the label map is missing or malformed.
    """
    names = sorted(set(names))
    if classes.label_map is not None:
        given = read_label_map(classes.label_map)
        missing = [n for n in names if n not in given]
        if missing:
            raise InputFileError(
                f"{what}: {_listing(missing)} not in --label-map {classes.label_map} (it maps {_listing(list(given))})"
            )
        index = {n: class_index(given[n], classes, what=f"--label-map {classes.label_map}") for n in names}
        return ClassMapping(index, label_map_rule(classes.label_map))
    if classes.labels is not None:
        unknown = [n for n in names if n not in classes.labels]
        if unknown:
            raise InputFileError(
                f"{what}: {_listing(unknown)} are not among the model's labels ({_listing(list(classes.labels))});"
                " name the classes after the labels, or pass --label-map FILE"
            )
        return ClassMapping({n: _label_index(n, classes, what=what) for n in names}, "the model's labels")
    if all(n.isdigit() for n in names):
        index, rule = {n: int(n) for n in names}, "integer names as class indices"
    else:
        # Sorted numbering is right only when every class is there: one missing folder shifts all after it.
        if classes.num_classes is not None and len(names) != classes.num_classes:
            raise InputFileError(
                f"{what}: {len(names)} classes ({_listing(names)}) for a model of {classes.num_classes} classes that"
                " carries no labels: numbered in sorted order they would not line up with its classes; pass"
                " --label-map FILE"
            )
        index, rule = {n: i for i, n in enumerate(names)}, "sorted names (torchvision's ImageFolder convention)"
    for name, i in index.items():
        _check_range(i, classes, what=f"{what}: {name!r}")
    warnings.warn(
        f"{what}: the model carries no labels, so classes are numbered by {rule} ({describe_mapping(index)});"
        " pass --label-map FILE to say otherwise",
        ResnetEdgeWarning,
        stacklevel=3,
    )
    return ClassMapping(index, rule)


def label_map_rule(path: Path) -> str:
    """How a result names the rule of labels mapped by the user's file."""
    return f"--label-map {path}"


def class_index(text: str, classes: ModelClasses, *, what: str) -> int:
    """A class given by the user (a labels or label-map file): a model label, else an integer index.

    Raises:
        InputFileError: neither, or an index beyond the model's classes.
    """
    if classes.labels is not None and text in classes.labels:
        return _label_index(text, classes, what=what)
    if text.isdigit():
        return _check_range(int(text), classes, what=what)
    known = f" (the model's labels: {_listing(list(classes.labels))})" if classes.labels else ""
    raise InputFileError(f"{what}: class {text!r} is neither a model label nor a class index{known}")


def check_class_indices(values: Sequence[int], classes: ModelClasses, *, what: str) -> None:
    """Refuse integer labels (an array's) below 0 or beyond the model's classes.

    Raises:
        InputFileError: the first such value, named.
    """
    for value in values:
        _check_range(int(value), classes, what=what)


def remap_named_classes(
    data_names: Sequence[str], classes: ModelClasses, *, what: str
) -> tuple[dict[int, int], ClassMapping]:
    """For data labelled by index into its own class names (a data set's): data index -> model index.

    When the model carries labels (or a label map is given), the data's names are mapped through them, so that a model
    whose labels come in another order is scored right; otherwise the data's indices are the model's.

    Raises:
        InputFileError: as :func:`map_classes`.
    """
    if classes.labels is None and classes.label_map is None:
        for i in range(len(data_names)):
            _check_range(i, classes, what=what)
        return {i: i for i in range(len(data_names))}, ClassMapping(
            {n: i for i, n in enumerate(data_names)}, "the data set's class order"
        )
    mapping = map_classes(data_names, classes, what=what)
    return {i: mapping.index[n] for i, n in enumerate(data_names)}, mapping


def read_label_map(path: Path | str) -> dict[str, str]:
    """A ``--label-map`` file: ``name,class`` per line (``#`` comments and blank lines skipped).

    Raises:
        OptionError: missing, not UTF-8, a malformed line or a name given twice.
    """
    from resnet_edge.artifacts import read_user_text

    path = Path(path)
    try:
        text = read_user_text(path, what="label map")
    except InputFileError as exc:
        raise OptionError(str(exc)) from None
    given: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, target = line.rpartition(",")
        name, target = name.strip(), target.strip()
        if not sep or not name or not target:
            raise OptionError(f"{path}:{number}: expected 'name,class', got {line[:80]!r}")
        if name in given:
            raise OptionError(f"{path}:{number}: {name!r} is mapped twice")
        given[name] = target
    if not given:
        raise OptionError(f"label map {path} maps no class")
    return given


def _label_index(label: str, classes: ModelClasses, *, what: str) -> int:
    assert classes.labels is not None  # callers checked; not user input
    positions = [i for i, name in enumerate(classes.labels) if name == label]
    if len(positions) > 1:
        raise InputFileError(
            f"{what}: the model's labels name {label!r} {len(positions)} times (classes"
            f" {', '.join(map(str, positions))}); pass --label-map FILE with class indices"
        )
    return _check_range(positions[0], classes, what=what)


def _check_range(index: int, classes: ModelClasses, *, what: str) -> int:
    if index < 0:
        raise InputFileError(f"{what}: class {index} is negative; classes are numbered from 0")
    if classes.num_classes is not None and index >= classes.num_classes:
        raise InputFileError(
            f"{what}: class {index} is beyond the model's {classes.num_classes} classes"
            f" (0 to {classes.num_classes - 1})"
        )
    return index


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def describe_mapping(mapping: Mapping[str, int]) -> str:
    """``a=0, b=1, ...`` for a note or a result."""
    items = list(mapping.items())
    return ", ".join(f"{n}={i}" for n, i in items[:NAMES_SHOWN]) + (", ..." if len(items) > NAMES_SHOWN else "")
