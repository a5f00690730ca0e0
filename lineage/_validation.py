"""Input checks shared by the public functions of :mod:`mothertree.lineage`.

Every public function checks its inputs here before computing anything, and
raises a plain :class:`ValueError` or :class:`TypeError` whose message says
what was expected and what arrived ("expected X, got Y").
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..serialize import json_float  # the one NaN/inf rule, re-exported for lineage
from ..threads import wide
from ._views import KeySubset

__all__ = [
    "check_matrix",
    "check_same_shape",
    "check_same_columns",
    "check_alpha",
    "check_positive_int",
    "check_optional_positive_int",
    "check_choice",
    "check_log10_p",
    "check_rng",
    "check_weight_map",
    "json_float",
    "degenerate_reason",
    "check_informative",
    "drop_degenerate",
    "verdicts_of",
    "degenerate_entries",
    "drop_found",
]


def check_matrix(x: Any, name: str) -> torch.Tensor:
    """Return ``x`` as a finite float32 2-D tensor, or raise.

    Accepts a :class:`torch.Tensor` or a :class:`numpy.ndarray`; anything else
    is a :class:`TypeError`. Rows and columns must both be non-empty.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D matrix, got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty matrix, got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name}: expected a real-valued tensor, got dtype {x.dtype}")
    if x.requires_grad:
        x = x.detach()
    with wide(x.numel()):
        # a float32 tensor is returned itself: the caller's object, whose degenerate verdict is remembered
        return _finite(x.to(torch.float32), name)


def _finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` when every value is finite, else a ValueError naming it."""
    # one reduction is ~20x faster than an elementwise isfinite on 7B-sized
    # blocks; a NaN or infinity makes the sum non-finite, and only then (or on
    # an overflowing sum) is every element checked
    if not math.isfinite(float(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or infinity")
    return x


def check_same_shape(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    """Raise when two matrices differ in shape."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{names[0]} and {names[1]}: expected the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def check_same_columns(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    """Raise when two matrices differ in their number of columns (the compared axis)."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{names[0]} and {names[1]}: expected the same number of columns, "
            f"got {a.shape[1]} and {b.shape[1]}"
        )


def check_alpha(alpha: Any) -> float:
    """Return ``alpha`` as a float in (0, 1), or raise."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha: expected a float in (0, 1), got {type(alpha).__name__}")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha: expected a float in (0, 1), got {alpha!r}")
    return float(alpha)


def check_positive_int(n: Any, name: str, *, minimum: int = 1) -> int:
    """Return ``n`` as an int ``>= minimum``, or raise."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {type(n).__name__}")
    if int(n) < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {n}")
    return int(n)


def check_optional_positive_int(n: Any, name: str, *, minimum: int = 1) -> int | None:
    """Like :func:`check_positive_int`, but ``None`` passes through."""
    return None if n is None else check_positive_int(n, name, minimum=minimum)


def check_choice(value: Any, name: str, options: Iterable[str]) -> str:
    """Return ``value`` when it is one of ``options``, or raise."""
    options = tuple(options)
    if value not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def check_log10_p(values: Any, name: str = "p_values_log10") -> np.ndarray:
    """Return base-10 log p-values as a 1-D float array, or raise.

    Each value must be ``<= 0`` (a p-value is at most 1) and not NaN;
    ``-inf`` is allowed (a p-value of exactly 0).
    """
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected a sequence of floats, got {type(values).__name__}") from e
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name}: expected log10 p-values, got NaN")
    if (arr > 0).any():
        bad = float(arr[arr > 0][0])
        raise ValueError(f"{name}: expected log10 p-values <= 0, got {bad}")
    return arr


def check_rng(rng: Any) -> np.random.Generator:
    """Return a :class:`numpy.random.Generator` from ``None``, an int seed or a Generator.

    ``None`` means seed 0: results are reproducible unless the caller asks otherwise.
    """
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng: expected None, an int seed or numpy.random.Generator, got {type(rng).__name__}")


def check_weight_map(weights: Any, name: str) -> dict[tuple[str, int | None], torch.Tensor]:
    """Return a WeightMap whose values are finite float32 matrices, or raise.

    A WeightMap maps ``(role, block)`` to a ``[out_features, in_features]``
    matrix; ``block`` is ``None`` for model-level tensors (embeddings, head).
    """
    if not isinstance(weights, Mapping):
        raise TypeError(f"{name}: expected a mapping (role, block) -> tensor, got {type(weights).__name__}")
    if not weights:
        raise ValueError(f"{name}: expected at least one tensor, got an empty mapping")
    if not isinstance(weights, dict) and hasattr(weights, "shape_of"):
        # a streaming map (memory-mapped files): each tensor is checked when it is read
        from .independence import CheckedLazy

        return weights if isinstance(weights, CheckedLazy) else CheckedLazy(weights, name)
    out: dict[tuple[str, int | None], torch.Tensor] = {}
    for key, value in weights.items():
        if (
            not isinstance(key, tuple)
            or len(key) != 2
            or not isinstance(key[0], str)
            or not (key[1] is None or isinstance(key[1], int))
        ):
            raise TypeError(f"{name}: expected keys (role: str, block: int | None), got {key!r}")
        out[key] = check_matrix(value, f"{name}[{key[0]!r}, {key[1]!r}]")
    return out


# ---------------------------------------------------------------- degenerate weights

#: Fewer distinct values than this (in an evenly strided sample) is a tied-value
#: tensor: binary/ternary patterns whose similarity matrices are full of ties.
MIN_DISTINCT_VALUES = 8
#: Fewer distinct rows (or columns) than this fraction: units that cannot be told apart.
MIN_DISTINCT_FRACTION = 0.5
_SAMPLE = 65_536
_RANK_ROWS = 256
_RANK_COLS = 32


def _distinct_lines(x: np.ndarray, dim: int) -> int:
    """Distinct rows (``dim=1`` keys) or columns (``dim=0``) by a seeded random projection."""
    n = x.shape[1] if dim == 1 else x.shape[0]
    probe = np.random.default_rng(0xDE6E).standard_normal(n).astype(np.float32)
    keys = ((x @ probe) if dim == 1 else (probe @ x)).astype(np.float64)
    scale = float(np.abs(keys).max()) or 1.0
    return int(np.unique(np.round(keys / scale * 1e9)).size)


#: Verdicts of live tensors: ``id -> (weak reference, version counter, reason)``.
_VERDICTS: dict[int, tuple[weakref.ref, int, str | None]] = {}


def degenerate_reason(x: Any) -> str | None:
    """Why a matrix can carry no evidence of lineage, or ``None`` when it can.

    A tensor's verdict is remembered while the tensor lives and is not
    modified in place (torch's version counter): a registry tests one loaded
    model against many others, and the same matrix would otherwise be judged
    again in every pair, by every test that guards its input.

    A constant (all-zero) matrix, one with fewer than
    :data:`MIN_DISTINCT_VALUES` distinct values, one whose rows or columns are
    mostly copies of each other, a numerically rank-deficient one, or one
    with NaN/infinity: their similarity matrices are tied or undefined, so a
    matching falls back to the identity and looks like a derivation. Every
    statistic and relation detector excludes such tensors.

    Examples
    --------
    >>> degenerate_reason(torch.zeros(8, 4))
    'constant (every value is 0)'
    >>> degenerate_reason(torch.randn(8, 4, generator=torch.Generator().manual_seed(0))) is None
    True
    """
    if not isinstance(x, torch.Tensor):
        return _judge(np.asarray(x, dtype=np.float32))
    version = _version_of(x)
    known = _VERDICTS.get(id(x))
    if known is not None and known[0]() is x and version is not None and known[1] == version:
        return known[2]
    why = _judge(x.detach().to(torch.float32).cpu().numpy())
    if version is not None:
        key = id(x)
        _VERDICTS[key] = (weakref.ref(x, lambda _, key=key: _VERDICTS.pop(key, None)), version, why)
    return why


def _version_of(x: torch.Tensor) -> int | None:
    """The tensor's in-place modification counter (``None`` for inference tensors, which have none)."""
    try:
        return int(x._version)
    except RuntimeError:
        return None


def _judge(x: np.ndarray) -> str | None:
    """The verdict of :func:`degenerate_reason` on a float32 array."""
    if x.ndim != 2 or x.size == 0:
        return f"not a non-empty matrix (shape {tuple(x.shape)})"
    # numpy throughout: torch's small kernels stall when its threads compete with other work
    with np.errstate(over="ignore", invalid="ignore"):
        if not math.isfinite(float(x.sum())) and not bool(np.isfinite(x).all()):
            return "holds NaN or infinity"
    flat = x.reshape(-1)
    sample = flat[:: max(1, flat.size // _SAMPLE)]
    distinct = int(np.unique(sample).size)
    if distinct < min(MIN_DISTINCT_VALUES, flat.size):
        lo, hi = float(x.min()), float(x.max())  # a full pass only for the suspicious few
        if lo == hi:
            return f"constant (every value is {lo:g})"
        if distinct == 1 or int(np.unique(flat).size) < MIN_DISTINCT_VALUES:
            return f"tied values (only {int(np.unique(flat).size)} distinct)"
    for dim, axis in ((1, "rows"), (0, "columns")):
        n = x.shape[0] if dim == 1 else x.shape[1]
        if n >= 4:
            k = _distinct_lines(x, dim)
            if k < MIN_DISTINCT_FRACTION * n:
                return f"tied {axis} (only {k} distinct of {n})"
    rows = x[:: max(1, x.shape[0] // _RANK_ROWS)].astype(np.float64)
    k = min(rows.shape[0], x.shape[1], _RANK_COLS)
    sketch = rows @ np.random.default_rng(0x4A4B).standard_normal((x.shape[1], k))
    sv = np.linalg.svd(sketch, compute_uv=False)
    rank = int((sv > 1e-5 * sv[0]).sum()) if float(sv[0]) > 0 else 0
    if rank < max(1, -(-k // 4)):
        return f"rank-deficient (numerical rank {rank} of {k} probed)"
    return None


def check_informative(x: Any, name: str) -> torch.Tensor:
    """:func:`check_matrix`, and refuse a degenerate matrix (see :func:`degenerate_reason`)."""
    checked = check_matrix(x, name)
    why = degenerate_reason(x if isinstance(x, torch.Tensor) else checked)  # the caller's tensor: its verdict is kept
    if why is not None:
        raise ValueError(f"{name}: expected an informative matrix, got a degenerate one: {why}")
    return checked


def _tensors_of(value: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(value, torch.Tensor):
        return (value,)
    return tuple(t for t in (getattr(value, "a", None), getattr(value, "b", None)) if isinstance(t, torch.Tensor))


def verdicts_of(weights: Any) -> Mapping[Any, str] | None:
    """The degenerate verdicts a lazily streamed map carries, or ``None`` when it carries none.

    A streamed map (any Mapping that is not a dict) may expose ``degenerate``:
    a mapping ``key -> reason`` of its tensors judged degenerate ahead of time
    (the registry judges every tensor once, when it indexes the model); every
    key not listed there was judged informative. Checking a streamed map here
    instead would read the whole model before a block-by-block test starts.
    """
    verdicts = getattr(weights, "degenerate", None)
    return verdicts if isinstance(verdicts, Mapping) else None


def drop_degenerate(
    *maps: Mapping[Any, Any], names: Iterable[str] = ("a", "b")
) -> tuple[tuple[Mapping, ...], tuple[str, ...]]:
    """Remove every key whose matrix is degenerate in any of ``maps``, from all of them.

    Values are matrices, or objects holding matrices as ``.a`` and ``.b``
    (``BlockActivations``). Returns the filtered maps and one note per map
    that lost keys, saying how many, why, and that they are excluded from the
    evidence. When nothing degenerate is found the notes are empty.

    An in-memory dict is checked here, tensor by tensor. A lazily streamed map
    (any other Mapping) is not read: its verdicts come with it (see
    :func:`verdicts_of`) and its degenerate keys are hidden behind a lazy view.
    A streamed map without verdicts passes unchanged; a weight map of that
    kind is checked as each tensor is read, and a degenerate one is refused.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> a = {("mlp.up", 0): torch.zeros(8, 4), ("mlp.up", 1): torch.randn(8, 4, generator=g)}
    >>> b = {("mlp.up", 0): torch.randn(8, 4, generator=g), ("mlp.up", 1): torch.randn(8, 4, generator=g)}
    >>> (fa, fb), notes = drop_degenerate(a, b)
    >>> sorted(fa), notes
    ([('mlp.up', 1)], ("a: 1 of 2 tensors degenerate, excluded from the evidence: ('mlp.up', 0) constant (every value is 0)",))
    """
    return drop_found(maps, [degenerate_entries(m) for m in maps], names=names)


def degenerate_entries(m: Mapping[Any, Any]) -> tuple[tuple[Any, str], ...]:
    """``(key, reason)`` of every degenerate matrix of one map.

    A dict is checked tensor by tensor; a streamed map is not read: its
    verdicts come with it (:func:`verdicts_of`; none when it carries none). A
    property of one model alone: a family solver computes it once per model
    and hands it to every pair (:func:`drop_found`) instead of re-scanning
    each model once per pair.
    """
    if not isinstance(m, dict):
        verdicts = verdicts_of(m) or {}
        return tuple((key, verdicts[key]) for key in m if key in verdicts)
    found = []
    for key, value in m.items():
        reasons = [r for r in (degenerate_reason(t) for t in _tensors_of(value)) if r is not None]
        if reasons:
            found.append((key, reasons[0]))
    return tuple(found)


def drop_found(
    maps: Sequence[Mapping[Any, Any]], found: Sequence[Sequence[tuple[Any, str]]], *, names: Iterable[str] = ("a", "b"),
) -> tuple[tuple[Mapping, ...], tuple[str, ...]]:
    """:func:`drop_degenerate` with each map's :func:`degenerate_entries` already known."""
    names = tuple(names)
    bad = {k for entries in found for k, _ in entries}
    notes = []
    for i, (m, entries) in enumerate(zip(maps, found)):
        if entries:
            label = names[i] if i < len(names) else f"map {i}"
            shown = "; ".join(f"{k!r} {why}" for k, why in entries[:3]) + ("; ..." if len(entries) > 3 else "")
            notes.append(f"{label}: {len(entries)} of {len(m)} tensors degenerate, excluded from the evidence: {shown}")
    kept = tuple(
        {k: v for k, v in m.items() if k not in bad} if isinstance(m, dict)
        else m if bad.isdisjoint(m) else KeySubset(m, [k for k in m if k not in bad])  # reads no tensor
        for m in maps
    )
    return kept, tuple(notes)


def rejects(p_value_log10: float, alpha: float) -> bool:
    """The one decision rule of a test: reject the null (``dependent``) when ``log10 p < log10 alpha``.

    Examples
    --------
    >>> rejects(-3.0, 0.01), rejects(-2.0, 0.01)
    (True, False)
    """
    return bool(p_value_log10 < math.log10(alpha))
