"""One serializer for results: frozen dataclasses to JSON-safe dicts, one rule for NaN and infinity.

Standard library only (every package may use it). The rule: a float that is
NaN or infinite becomes ``None`` (JSON ``null``); tuples become lists; a
datetime becomes ISO-8601 in UTC with a ``Z``; dataclass fields whose name
starts with ``_`` are internal and left out.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timezone
from typing import Any

__all__ = ["to_jsonable", "json_float", "Serializable"]


def json_float(value: float) -> float | None:
    """``value`` as a JSON-safe float: NaN and infinities become ``None``.

    Examples
    --------
    >>> json_float(1.5), json_float(float("nan")), json_float(float("-inf"))
    (1.5, None, None)
    """
    return float(value) if math.isfinite(value) else None


def to_jsonable(obj: Any) -> Any:
    """A JSON-safe copy of ``obj`` (dataclasses, mappings, sequences, floats, datetimes).

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class R:
    ...     p: float
    ...     pairs: tuple
    >>> to_jsonable(R(float("nan"), ((1, 2),)))
    {'p': None, 'pairs': [[1, 2]]}
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.name.startswith("_")}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return json_float(obj)
    if isinstance(obj, datetime):
        dt = obj.replace(tzinfo=timezone.utc) if obj.tzinfo is None else obj.astimezone(timezone.utc)
        return dt.isoformat().replace("+00:00", "Z")
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return to_jsonable(obj.item())
    return obj


class Serializable:
    """Mixin for result dataclasses whose JSON form is their fields: ``to_dict()`` is :func:`to_jsonable`.

    A result whose JSON differs from its fields (renamed keys, computed
    values) writes its own ``to_dict`` and still builds it with
    :func:`to_jsonable`, so the NaN rule stays the one above.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Hit(Serializable):
    ...     name: str
    ...     score: float
    >>> Hit("a", float("inf")).to_dict()
    {'name': 'a', 'score': None}
    """

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)
