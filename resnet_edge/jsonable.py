"""Result objects as plain JSON data, for ``--json``, reports and sidecar records."""

from __future__ import annotations

import dataclasses
import enum
import math
import sys
from pathlib import Path


def to_jsonable(value: object) -> object:
    """Dataclasses, enums, paths, tuples and NumPy scalars as JSON-ready data; NaN and Inf become None.

    A dataclass field marked ``metadata={"json": False}`` (an image array, say) is left out.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {
            f.name: to_jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.metadata.get("json", True)
        }
        # Derived facts (properties) belong in the JSON too: a reader should not recompute them.
        for name in dir(type(value)):
            if isinstance(getattr(type(value), name, None), property) and not name.startswith("_"):
                data[name] = to_jsonable(getattr(value, name))
        return data
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    # numpy is looked up, not imported: a NumPy scalar can only exist once numpy is loaded, and the CLI's
    # start-up (which imports this module) stays free of it.
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
