"""Typed JSON documents: frozen dataclasses that write themselves and are read back by the same types.

report.json (:mod:`resnet_edge.pipeline.document`), the calibration record a quantized model carries in its metadata
and beside it (:mod:`resnet_edge.quantization.record`) and tune's record of its choice
(:mod:`resnet_edge.evaluation.tune_record`) are such documents, so every key is declared once, as a field: one
reader (:func:`read_document`) reads any of these dataclasses from its field types (``str``, ``int``, ``float``,
``bool``, ``object``, ``X | None``, ``tuple[X, ...]``, ``dict[str, X]``, ``dict[int, X]``, a nested dataclass), and
one writer (:func:`write_document`) writes it back. A field is read from and written to the key of its name, or
where :func:`at` says (``config.target``: under another object); a field with a default may be missing (a document
written before it existed), one typed ``X | None`` may be null, one made by :func:`absent_when_none` is left out
when None. A field not passed to the constructor (``init=False``) is a view: a typed reading of part of what another
field holds whole, filled by :func:`derive` in ``__post_init__``, never written. A class checks what spans its
fields in ``__post_init__``, raising a :class:`DocumentFormatError` that names the key from the class's own object.

A document that lacks a key or holds it with the wrong type raises one :class:`DocumentFormatError` (an
:class:`~resnet_edge.errors.InputFileError`: one ``error:`` line, exit 1) naming the key:
``calibration.files[0].sha256: missing``; each kind of document says which file it was in its own subclass.
"""

from __future__ import annotations

import functools
import json
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, field, fields, is_dataclass
from typing import Any, TypeVar

from resnet_edge.errors import InputFileError
from resnet_edge.jsonable import to_jsonable

__all__ = [
    "DocumentFormatError",
    "absent_when_none",
    "at",
    "derive",
    "malformed",
    "read_as",
    "read_document",
    "write_document",
]

T = TypeVar("T")


class DocumentFormatError(InputFileError):
    """A JSON document lacks a key its type declares, or holds it with the wrong type; ``detail`` names it."""

    def __init__(self, detail: str, *, source: str = "document", hint: str | None = None) -> None:
        super().__init__(f"malformed {source}: {detail}" + (f" ({hint})" if hint else ""))
        self.detail = detail


def malformed(where: str, what: str, value: object) -> DocumentFormatError:
    shown = json.dumps(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return DocumentFormatError(f"{where or 'the document'}: expected {what}, found {shown}")


_PATH = "document_path"  # field metadata: where the field's value sits, when not under the field's own name
_OMITTED = "document_omitted_when_none"  # field metadata: left out of the JSON when None


def at(path: str) -> dict[str, str]:
    """The metadata of a field read from ``path`` in its object (``config.target``: key ``target`` of the object
    under ``config``; ``""``: the object itself, for a dataclass that gathers keys of its parent)."""
    return {_PATH: path}


def absent_when_none(path: str | None = None) -> Any:
    """A field that is None where its key is missing, and written only when it is not None (a key documents written
    before it existed lack, or a plot that was not drawn)."""
    return field(default=None, metadata={_OMITTED: True, **(at(path) if path else {})})


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


# What a JSON value of each Python type is called in an error; bool is no integer and no number here.
_SCALARS: dict[object, tuple[tuple[type, ...], str]] = {
    str: ((str,), "a string"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    bool: ((bool,), "true or false"),
}


def _read(kind: Any, value: object, where: str) -> Any:
    """``value`` (found at ``where``) read as the type ``kind``; a DocumentFormatError where it is not one."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (kind,) = (a for a in args if a is not type(None))  # only ``X | None`` is declared here
        origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is object:  # any JSON value (a configuration option's)
        return value
    if is_dataclass(kind):
        return read_document(kind, value, where)
    if origin is tuple:  # tuple[X, ...]: a JSON list
        if not isinstance(value, list):
            raise malformed(where, "a list", value)
        return tuple(_read(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise malformed(where, "an object", value)
        if args[0] is int:  # JSON writes an integer key as a string: every such object here is keyed by batch size
            try:
                value = {int(key): item for key, item in value.items()}
            except ValueError:
                raise malformed(where, "an object keyed by batch size", value) from None
        return {key: _read(args[1], item, _join(where, str(key))) for key, item in value.items()}
    kinds, what = _SCALARS[kind]
    if not isinstance(value, kinds) or (isinstance(value, bool) and kind is not bool):
        raise malformed(where, what, value)
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _read_field(cls: type, f: Field, data: dict, where: str, values: dict[str, Any]) -> None:
    """Put the field ``f`` of ``cls``, read from the JSON object ``data`` (found at ``where``), into ``values``;
    nothing where it is missing and has a default."""
    *parents, key = f.metadata.get(_PATH, f.name).split(".")
    found, place = data, where
    for parent in parents:
        if parent not in found:
            raise DocumentFormatError(f"{_join(place, parent)}: missing")
        found, place = found[parent], _join(place, parent)
        if not isinstance(found, dict):
            raise malformed(place, "an object", found)
    if key == "":  # the object itself
        values[f.name] = _read(_hints(cls)[f.name], found, place)
    elif key in found:
        values[f.name] = _read(_hints(cls)[f.name], found[key], _join(place, key))
    elif f.default is MISSING and f.default_factory is MISSING:
        raise DocumentFormatError(f"{_join(place, key)}: missing")


def read_document(cls: type[T], data: object, where: str = "") -> T:
    """The dataclass ``cls`` read from the JSON object ``data`` (found at ``where``), field by field in declared order
    (the document's, so that the first key amiss is the one named); its views are read by its ``__post_init__``.

    Raises:
        DocumentFormatError: a key is missing (and its field has no default) or holds the wrong type; names the key.
    """
    if not isinstance(data, dict):
        raise malformed(where, "an object", data)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.init:
            _read_field(cls, f, data, where, values)
    try:
        return cls(**values)
    except DocumentFormatError as exc:  # a class's own check across its fields names a key relative to the object
        raise DocumentFormatError(_join(where, exc.detail)) from None


def read_as(
    cls: type[T], data: object, source: str, *, error: Callable[..., DocumentFormatError] = DocumentFormatError
) -> T:
    """:func:`read_document` of a whole document, a malformed one said as ``source``'s: ``malformed tune record:
    chosen.name: missing``; ``error`` is the kind's own error class (called with the detail and ``source``).

    Raises:
        DocumentFormatError: a key is missing (and its field has no default) or holds the wrong type; names the key.
    """
    try:
        return read_document(cls, data)
    except DocumentFormatError as exc:
        raise error(exc.detail, source=source) from None


def derive(document: object) -> None:
    """Fill the views of ``document`` (its fields not passed to the constructor), each read from its path in the JSON
    the document writes, and checked as any field is; for a class's ``__post_init__``.

    Raises:
        DocumentFormatError: what a view reads is missing or of the wrong type; names the key from the document.
    """
    views = [f for f in fields(document) if not f.init]
    roots = {_root(f) for f in views}
    # Only the fields a view reads from are written (one holding the stages' records whole is large).
    data, values = _place(document, [f for f in fields(document) if f.init and _root(f) in roots | {""}]), {}
    for f in views:
        _read_field(type(document), f, data, "", values)
    for name, value in values.items():
        object.__setattr__(document, name, value)  # a frozen dataclass's own fields, set once while it is made


def _write(value: object) -> object:
    """A field's value as JSON: a document written by :func:`write_document`, a tuple as a list, a key as text."""
    if is_dataclass(value) and not isinstance(value, type):
        return write_document(value)
    if isinstance(value, dict):
        return {str(key): _write(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_write(item) for item in value]
    return to_jsonable(value)  # a scalar: a NumPy number as a Python one, NaN as null


def write_document(document: object) -> dict[str, Any]:
    """One of these dataclasses as the JSON object :func:`read_document` reads it from: each field at its key (or
    where :func:`at` puts it), in declared order; views left out (the field they read holds the value whole), and a
    field made by :func:`absent_when_none` left out when None."""
    return _place(document, [f for f in fields(document) if f.init])


def _root(f: Field) -> str:
    """The first key of the path a field is written at (``""``: it gathers keys of its object)."""
    return f.metadata.get(_PATH, f.name).split(".")[0]


def _place(document: object, chosen: list[Field]) -> dict[str, Any]:
    """The JSON object holding ``chosen`` fields of ``document``, each at its path (:func:`write_document`)."""
    data: dict[str, Any] = {}
    for f in chosen:
        value = getattr(document, f.name)
        if value is None and f.metadata.get(_OMITTED):
            continue
        *parents, key = f.metadata.get(_PATH, f.name).split(".")
        place = data
        for parent in parents:
            place = place.setdefault(parent, {})
        if key == "":  # a dataclass that gathers keys of this object
            place.update(_write(value))
        else:
            place[key] = _write(value)
    return data
