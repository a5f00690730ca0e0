"""Edge typing: what kind of derivation connects two dependent models.

Pure functions on WeightMaps (``(role, block) -> [out, in]`` float32 matrices).
Each relation is recognised from a property of the weights, not a threshold
tuned on one zoo:

- ``duplicate``: a *conversion* (:func:`conversion_check`): every shared
  tensor is element-wise equal to the other side after casting the
  higher-precision side to the lower one with a converter's rounding mode
  (round-to-nearest-even to bf16 or fp16, or bf16 truncation), possibly after
  undoing a row/column permutation that is itself found exactly; at most a
  vanishing fraction of elements (:data:`CONVERSION_MISMATCH`) may differ.
  Closeness is never enough: a light fine-tune saved in bf16 is ``finetune``;
- ``quantized``: one side's values sit on a low-precision grid (per row,
  column or group; symmetric or affine; 8 or 4 bits), the other's do not, and
  the other side's values *round to* the grid side's (:func:`rounds_onto_grid`):
  within half a grid step everywhere, with the residual spread of a rounding;
- ``adapter``: the weight difference is low rank wherever it is non-zero and
  some tensors did not change at all (LoRA merged into the weights);
- ``pruned``: fewer blocks or narrower blocks (the block map comes from
  localization);
- ``merge``: the child is a linear combination of two or more parents
  (:func:`merge_fit`, least squares);
- ``finetune``: a dense difference; ``unknown`` when nothing aligned can be compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from ._validation import check_weight_map, degenerate_entries, drop_degenerate, drop_found, json_float
from ._views import shape_of, typing_view

__all__ = [
    "RELATIONS",
    "RelationEvidence",
    "MergeFit",
    "CONVERSION_MISMATCH",
    "ConversionCheck",
    "conversion_check",
    "containment_ratio",
    "at_stored_precision",
    "rounds_onto_float_grid",
    "grid_residual",
    "rounds_onto_grid",
    "is_quantized",
    "relative_distance",
    "invariant_distance",
    "WeightFacts",
    "weight_facts",
    "classify_relation",
    "merge_fit",
]

RELATIONS: tuple[str, ...] = ("duplicate", "quantized", "adapter", "pruned", "merge", "finetune", "unknown")

Key = tuple[str, "int | None"]
WeightMap = Mapping[Key, torch.Tensor]

#: Invariant distance above which a permuted copy is not even looked for: a
#: necessary condition only (a permutation leaves the invariant products
#: unchanged up to bf16 rounding, ~2**-9 relative); the decision is exact.
_MAYBE_PERMUTED = 2e-2
#: Mean distance to the nearest grid level, in grid steps: ~0.25 for values off
#: any grid, ~0 on it (half a step of fp16 rounding at 127 levels is ~0.03).
_ON_GRID = 0.08
_IDENTITY = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down", "mlp.in", "mlp.out")


def _shared_keys(a: WeightMap, b: WeightMap, roles: Sequence[str] = _IDENTITY) -> list[Key]:
    """Identity keys both maps hold with equal shapes (from the headers when the maps are lazy)."""
    return [k for k in sorted(a, key=str) if k in b and k[0] in roles and shape_of(a, k) == shape_of(b, k)]


def _pairs(a: WeightMap, b: WeightMap, keys: Sequence[Key]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(a[k], b[k])`` in float32, one pair at a time: a lazy map is never held whole."""
    for k in keys:
        yield a[k].float(), b[k].float()


def _sq(x: torch.Tensor) -> float:
    """Squared Frobenius norm (a BLAS dot: no temporary)."""
    v = x.reshape(-1)
    return float(torch.dot(v, v))


def _pooled_distance(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Frobenius distance pooled over tensor pairs, over their mean squared norm; ``nan`` if none."""
    num = den = 0.0
    for x, y in pairs:
        num += _sq(x - y)
        den += 0.5 * (_sq(x) + _sq(y))
    return math.sqrt(num / den) if den > 0 else float("nan")


def relative_distance(a: WeightMap, b: WeightMap) -> float:
    """Frobenius distance of the shared identity tensors over their mean norm (0 = identical).

    Returns ``nan`` when the models share no tensor of equal shape.
    """
    return _pooled_distance(_pairs(a, b, _shared_keys(a, b)))


#: Columns of the seeded probe through which invariant products are compared:
#: ``P @ Omega`` instead of ``P`` keeps the cost at ``O(h d k)`` for 7B-sized
#: blocks while preserving distances in expectation (Johnson-Lindenstrauss).
_PROBE = 64


def _probe(d: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0x51_7E + d)
    return torch.randn(d, _PROBE, generator=g) / math.sqrt(_PROBE)


def _invariants(w: WeightMap) -> dict[tuple[str, int | None], torch.Tensor]:
    """Probed products that hidden-unit permutations (MLP units, attention heads) cancel.

    ``W_down @ W_up``, ``W_out @ W_in``, ``W_o @ W_v`` and ``W_q^T @ W_k`` are
    unchanged when the hidden units (or heads) in the middle are permuted;
    each is multiplied by a seeded probe so it is never formed in full.
    """
    out = {}
    blocks = {k[1] for k in w if k[1] is not None}

    def probed(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return left.float() @ (right.float() @ _probe(right.shape[1]))

    for b in blocks:
        if ("mlp.down", b) in w and ("mlp.up", b) in w:
            out[("mlp.down_up", b)] = probed(w[("mlp.down", b)], w[("mlp.up", b)])
            if ("mlp.gate", b) in w:
                out[("mlp.down_gate", b)] = probed(w[("mlp.down", b)], w[("mlp.gate", b)])
        if ("mlp.out", b) in w and ("mlp.in", b) in w:
            out[("mlp.out_in", b)] = probed(w[("mlp.out", b)], w[("mlp.in", b)])
        if ("attn.o", b) in w and ("attn.v", b) in w and shape_of(w, ("attn.o", b))[1] == shape_of(w, ("attn.v", b))[0]:
            out[("attn.ov", b)] = probed(w[("attn.o", b)], w[("attn.v", b)])
        if ("attn.q", b) in w and ("attn.k", b) in w and shape_of(w, ("attn.q", b)) == shape_of(w, ("attn.k", b)):
            out[("attn.qk", b)] = probed(w[("attn.q", b)].T, w[("attn.k", b)])
    return out


def invariant_distance(a: WeightMap, b: WeightMap) -> float:
    """Like :func:`relative_distance`, on permutation-invariant products.

    A copy whose MLP units and attention heads were permuted has invariant
    distance ~0 from its source while its raw (aligned) distance is large.
    """
    ia, ib = _invariants(a), _invariants(b)
    return _pooled_distance([(ia[k], ib[k]) for k in ia if k in ib and ia[k].shape == ib[k].shape])


#: Largest fraction of elements that may differ in a conversion. A cast or a
#: permutation reproduces every value exactly; what a *converter* may still do
#: differently from the modes tried here touches a vanishing share of values:
#: ties (an fp32 value exactly half-way between two bf16 values, low 16 bits
#: 0x8000, has probability 2**-16 ~ 1.5e-5 per element), flushed subnormals
#: (weights below 1e-38), a NaN payload. A training step that changes the
#: stored model changes far more: a fine-tune whose mean change is a fraction x
#: of the bf16 rounding step flips the rounding of about a fraction x of the
#: elements (x = 0.3 flips ~30%; even x = 0.01 flips ~1%, 100 times this bound).
CONVERSION_MISMATCH = 1e-4

#: Casts a converter applies to go from higher to lower precision.
_CASTS: tuple[str, ...] = ("bf16-rne", "fp16-rne", "bf16-trunc")


def _cast(x: torch.Tensor, mode: str) -> torch.Tensor:
    """``x`` (float32) cast to a lower precision with ``mode`` and back to float32 (exactly)."""
    if mode == "bf16-rne":  # torch rounds to nearest, ties to even
        return x.to(torch.bfloat16).float()
    if mode == "fp16-rne":
        return x.to(torch.float16).float()
    if mode == "bf16-trunc":  # drop the low 16 bits of the float32 pattern
        return (x.contiguous().view(torch.int32) & -65536).view(torch.float32)
    raise ValueError(f"mode: expected one of {_CASTS}, got {mode!r}")


def _match_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Index ``i`` with ``x[i]`` the row of ``x`` holding the same multiset of values as ``y``'s row.

    Rows are compared by a seeded hash of their sorted values, which no
    permutation of the columns changes; equal rows hash equally, so a
    permuted copy is matched exactly (ties among identical rows are harmless).
    """
    g = torch.Generator().manual_seed(0xC0DE + x.shape[1])
    r = torch.rand(x.shape[1], generator=g, dtype=torch.float64) + 0.5
    hx = (x.sort(dim=1).values.double() * r).sum(dim=1)
    hy = (y.sort(dim=1).values.double() * r).sum(dim=1)
    ix, iy = hx.argsort(), hy.argsort()
    out = torch.empty_like(ix)
    out[iy] = ix
    return out


def _permuted_mismatches(x: torch.Tensor, y: torch.Tensor) -> int:
    """Elements where ``y`` differs from ``x`` after the row and column permutation found exactly."""
    rows = _match_rows(x, y)
    xr = x[rows]
    cols = _match_rows(xr.T.contiguous(), y.T.contiguous())
    return int((xr[:, cols] != y).sum())


@dataclass(frozen=True)
class ConversionCheck:
    """Whether ``b`` is a conversion of ``a`` (or ``a`` of ``b``).

    ``mode`` is ``"exact"`` or the cast that reproduces the lower-precision
    side (``"bf16-rne"``, ``"fp16-rne"``, ``"bf16-trunc"``); ``lower_side``
    the side that was cast (``"a"``/``"b"``, ``None`` when exact); ``permuted``
    whether rows/columns had to be re-ordered; ``mismatch_fraction`` the share
    of compared elements that still differ under the best mode.
    """

    mode: str
    lower_side: str | None
    permuted: bool
    mismatch_fraction: float
    elements: int

    @property
    def is_conversion(self) -> bool:
        return self.elements > 0 and self.mismatch_fraction <= CONVERSION_MISMATCH

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "lower_side": self.lower_side, "permuted": self.permuted,
            "mismatch_fraction": json_float(self.mismatch_fraction), "elements": self.elements,
            "is_conversion": self.is_conversion,
        }


def conversion_check(a: WeightMap, b: WeightMap, *, permutations: bool = True) -> ConversionCheck:
    """Is one model a cast, re-serialisation or permutation of the other, exactly?

    For every shared identity tensor, the higher-precision side is cast to
    the lower precision with each converter rounding mode (:data:`_CASTS`) and
    compared element-wise with the other side; one mode must serve the whole
    model. With ``permutations``, a tensor that differs aligned is compared
    again after re-ordering its rows and columns by an exact match of their
    value multisets (a permuted copy of MLP units or heads). No tolerance:
    the result counts differing elements, and :attr:`ConversionCheck.is_conversion`
    allows only :data:`CONVERSION_MISMATCH` of them.

    Examples
    --------
    >>> import torch
    >>> w = {("mlp.up", 0): torch.randn(64, 32)}
    >>> conversion_check(w, {k: v.bfloat16().float() for k, v in w.items()}).mode
    'bf16-rne'
    >>> ft = {k: (v + 1e-3 * torch.randn(v.shape)).bfloat16().float() for k, v in w.items()}
    >>> conversion_check(w, ft).is_conversion
    False
    """
    a = check_weight_map(a, "a")
    b = check_weight_map(b, "b")
    keys = _shared_keys(a, b)
    total = sum(math.prod(shape_of(a, k)) for k in keys)
    if not total:
        return ConversionCheck("exact", None, False, 1.0, 0)
    candidates = [("exact", None)] + [(m, side) for m in _CASTS for side in ("b", "a")]
    counts = {c: 0 for c in candidates}
    permuted = {c: False for c in candidates}
    budget = CONVERSION_MISMATCH * total
    for x, y in _pairs(a, b, keys):
        if torch.equal(x, y):
            continue
        for c in candidates:
            if counts[c] > budget:
                continue  # this mode already failed; do not spend time on it
            mode, side = c
            xx = x if mode == "exact" or side == "a" else _cast(x, mode)
            yy = y if mode == "exact" or side == "b" else _cast(y, mode)
            n = int((xx != yy).sum())
            if n > budget - counts[c] and permutations and n > 0.01 * x.numel():
                p = _permuted_mismatches(xx, yy)
                if p < n:
                    n, permuted[c] = p, True
            counts[c] += n
    best = min(candidates, key=lambda c: (counts[c], candidates.index(c)))
    return ConversionCheck(best[0], best[1], permuted[best], counts[best] / total, total)


def _stored_precision(x: torch.Tensor) -> str | None:
    """The lowest float precision that holds every value of ``x`` exactly (``None``: float32 or wider)."""
    for mode in ("bf16-rne", "fp16-rne"):
        if torch.equal(_cast(x, mode), x):
            return mode
    return None


def at_stored_precision(x: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to the precision every one of ``others`` is stored in, when that is lower than its own.

    A light fine-tune of a float32 model saved in bf16 differs from its parent
    mostly by the bf16 rounding of the parent, which every bf16 descendant
    shares: it is storage, not training. Comparing changes against the parent
    as those descendants would store it (round-to-nearest-even, what
    ``Tensor.to`` and ``save_pretrained(torch_dtype=...)`` do) leaves only the
    elements training moved across a rounding boundary.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[1.0 + 2 ** -12]])
    >>> at_stored_precision(x, torch.tensor([[3.0]])).item()
    1.0
    >>> at_stored_precision(x, torch.tensor([[1.0 + 2 ** -20]])).item() == x.item()
    True
    """
    x = x.float()
    modes = {_stored_precision(o.float()) for o in others}
    if len(modes) != 1 or None in modes:
        return x
    return _cast(x, modes.pop())  # a no-op when x is already stored that way


#: Significant bits of each lower float precision: one grid step at ``|x| in [2^(e-1), 2^e)`` is ``2^(e - bits)``.
_SIGNIFICANT_BITS = {"bf16-rne": 8, "bf16-trunc": 8, "fp16-rne": 11}
#: Elements sampled per tensor for the float-grid residual (evenly strided).
_GRID_SAMPLE = 1 << 16


def rounds_onto_float_grid(coarse: torch.Tensor, source: torch.Tensor) -> tuple[float, float, float, int] | None:
    """How ``source`` sits around ``coarse``'s lower-precision float grid: ``(violations, spread, lower, n)``.

    ``coarse`` is stored at a lower precision (bf16, fp16) than ``source``
    (``None`` otherwise; both judged on an evenly strided sample of
    :data:`_GRID_SAMPLE` elements). ``violations`` is the fraction of sampled nonzero
    elements where ``source`` is more than half a grid step from ``coarse``;
    ``spread`` the mean distance of the others, in steps; ``lower`` the
    fraction of those within a quarter step; ``n`` the elements sampled. The float analogue of :func:`rounds_onto_grid`: when ``coarse``
    is ``source`` (or a light fine-tune of it) rounded to the coarser grid,
    the residual is a rounding error, uniform within half a step (spread near
    0.25, half of it within a quarter step); when ``source`` is a light fine-tune *of* ``coarse`` trained at
    the higher precision, ``source`` starts on the grid and moved a training
    step away (spread near 0, exactly 0 where training left an element, and
    a density that falls with the distance).

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    >>> v, spread, lower, n = rounds_onto_float_grid(x.bfloat16().float(), x)
    >>> v, round(spread, 2), round(lower, 1), n
    (0.0, 0.25, 0.5, 4096)
    >>> b = x.bfloat16().float()
    >>> rounds_onto_float_grid(b, b + 1e-6 * torch.sign(b))[1] < 0.05
    True
    """
    if tuple(coarse.shape) != tuple(source.shape):
        return None
    # precisions are judged on the sample too: two full-size casts per tensor would cost more than the vote
    stride = max(1, coarse.numel() // _GRID_SAMPLE)
    c, s = coarse.reshape(-1)[::stride].float(), source.reshape(-1)[::stride].float()
    mode = _stored_precision(c)
    if mode is None or _stored_precision(s) == mode:
        return None
    keep = c != 0
    c, s = c[keep], s[keep]
    if c.numel() == 0:
        return None
    _, exponent = torch.frexp(c)
    steps = (s - c).abs() / torch.ldexp(torch.ones_like(c), exponent - _SIGNIFICANT_BITS[mode])
    near = steps <= 0.5
    n = int(c.numel())
    inside = steps[near]
    spread = float(inside.mean()) if inside.numel() else float("nan")
    lower = float((inside < 0.25).float().mean()) if inside.numel() else float("nan")
    return 1.0 - float(near.float().mean()), spread, lower, n


def containment_ratio(grand: WeightMap, parent: WeightMap, child: WeightMap) -> float:
    """How far ``child`` went along ``parent``'s departure from ``grand``: ``<c-g, p-g> / ||p-g||^2``.

    Pooled over the identity tensors the three models share. In a chain
    ``g -> p -> c`` the child carries all of the parent's change plus its own,
    so the ratio is 1 plus the alignment of the two changes (about 1 when the
    second change is unrelated, above 1 when training went on the same way).
    Two fine-tunes ``p``, ``c`` of ``g`` share only a common drift ``s`` of
    their changes ``s + u`` and ``s + v``: the ratio is
    ``|s|^2 / (|s|^2 + |u|^2) < 1``. ``nan`` when ``parent`` equals ``grand``
    or nothing is shared. When ``parent`` and ``child`` are both stored at a
    lower precision than ``grand`` (fine-tunes of a float32 model saved in
    bf16), ``grand`` is first rounded to it (:func:`at_stored_precision`):
    the rounding they share would otherwise read as a common drift and make
    siblings look like a chain.

    Examples
    --------
    >>> import torch
    >>> g = {("mlp.up", 0): torch.zeros(8, 8)}
    >>> p = {("mlp.up", 0): torch.eye(8)}
    >>> c = {("mlp.up", 0): torch.eye(8) + torch.ones(8, 8).triu(1)}
    >>> containment_ratio(g, p, c)
    1.0
    >>> s = {("mlp.up", 0): 0.5 * torch.eye(8) + torch.ones(8, 8).triu(1)}
    >>> containment_ratio(g, p, s)
    0.5
    """
    grand, parent, child = typing_view(
        check_weight_map(grand, "grand"), check_weight_map(parent, "parent"), check_weight_map(child, "child"),
    )
    num = den = 0.0
    for k in sorted(grand, key=str):
        if k[0] not in _IDENTITY or k not in parent or k not in child:
            continue
        if not (shape_of(grand, k) == shape_of(parent, k) == shape_of(child, k)):
            continue
        g, p, c = grand[k], parent[k], child[k]
        g = at_stored_precision(g, p, c)
        dp = (p.float() - g.float()).double()
        num += float((dp * (c.float() - g.float()).double()).sum())
        den += float(dp.pow(2).sum())
    return num / den if den > 0 else float("nan")


#: Symmetric grids: absmax over ``n`` levels (int8 -127..127; ggml Q4_0 -8..7; 4-bit -7..7).
_SYM_LEVELS = (127, 8, 7)
#: Affine grids: min..max in ``n`` steps (8 and 4 bits, as ggml Q4_1/Q8_1 and asymmetric int8).
_AFFINE_STEPS = (255, 15)
#: Rows of each view examined (evenly strided).
_GRID_ROWS = 64
#: Tensors whose median grid residual decides whether a model is quantized (evenly spread).
_GRID_TENSORS = 16


def _grid_views(w: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    views = [("row", w), ("column", w.T)]
    for g in (32, 64, 128):
        if w.shape[1] % g == 0 and w.shape[1] > g:
            views.append((f"group{g}", w.reshape(-1, g)))
    return views


def _grid(v: torch.Tensor, kind: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(step, offset)`` of a grid fitted to the rows of ``v`` from their own values."""
    if kind == "symmetric":
        return (v.abs().amax(dim=1, keepdim=True) / n).clamp_min(1e-30), torch.zeros(v.shape[0], 1)
    lo, hi = v.amin(dim=1, keepdim=True), v.amax(dim=1, keepdim=True)
    return ((hi - lo) / n).clamp_min(1e-30), lo


def _rows(v: torch.Tensor, n: int) -> torch.Tensor:
    return v[:: max(1, v.shape[0] // n)][:n]


def _best_grid(w: torch.Tensor) -> tuple[float, str, str, int]:
    """``(residual, view, kind, levels)`` of the grid ``w`` sits on best."""
    best = (float("inf"), "row", "symmetric", 127)
    for name, v in _grid_views(w):
        v = _rows(v, _GRID_ROWS)
        for kind, levels in [("symmetric", n) for n in _SYM_LEVELS] + [("affine", n) for n in _AFFINE_STEPS]:
            step, off = _grid(v, kind, levels)
            r = (v - off) / step
            res = float((r - r.round()).abs().mean())
            if res < best[0]:
                best = (res, name, kind, levels)
    return best


def grid_residual(w: torch.Tensor) -> float:
    """Smallest mean distance (in grid steps) of ``w`` to a low-precision grid.

    Tries symmetric (absmax/127, /8, /7) and affine (min..max in 255 or 15
    steps) grids per row, per column and per group of 32/64/128 along rows,
    which covers int8/int4 row-wise, column-wise and block-wise schemes.
    About 0.25 for unquantized weights, about 0 for dequantized ones.

    Examples
    --------
    >>> import torch
    >>> w = torch.randn(16, 64)
    >>> scale = w.abs().amax(dim=1, keepdim=True) / 127
    >>> grid_residual((w / scale).round() * scale) < 0.01 < grid_residual(w)
    True
    """
    w = w.detach().float()
    if w.ndim != 2 or w.numel() < 64:
        return float("nan")
    return _best_grid(w)[0]


def _half_ulp(x: torch.Tensor) -> float:
    """Relative half-ulp of the lowest float precision that represents every value of ``x``."""
    mode = _stored_precision(x)
    return 2.0 ** -(_SIGNIFICANT_BITS[mode] if mode else 24)


def rounds_onto_grid(q: torch.Tensor, source: torch.Tensor) -> tuple[float, float]:
    """Does ``source`` round to ``q``'s values on the grid ``q`` lies on?

    The grid (view, symmetric or affine, levels) is the one ``q`` fits best
    (:func:`grid_residual`); its per-row step and offset come from ``q``'s
    own values. Returns ``(violations, spread)``: the fraction of elements
    where ``|source - q|`` exceeds half a step (plus the storage rounding of
    both sides), and the mean ``|source - q|`` in steps. Round-to-nearest
    quantization of ``source`` gives no violations and a spread near 0.25
    (a uniform rounding error); a light fine-tune *of* ``q`` gives a spread
    near 0, and an unrelated or heavily changed model gives violations.

    Examples
    --------
    >>> import torch
    >>> w = torch.randn(32, 64)
    >>> s = w.abs().amax(dim=1, keepdim=True) / 127
    >>> v, spread = rounds_onto_grid((w / s).round() * s, w)
    >>> v, 0.2 < spread < 0.3
    (0.0, True)
    """
    q, source = q.detach().float(), source.detach().float()
    if q.shape != source.shape or q.ndim != 2 or q.numel() < 64:
        return 1.0, float("nan")
    _, view, kind, levels = _best_grid(q)
    vq = dict(_grid_views(q))[view]
    vs = dict(_grid_views(source))[view]
    vq, vs = _rows(vq, 4 * _GRID_ROWS), _rows(vs, 4 * _GRID_ROWS)
    step, _ = _grid(vq, kind, levels)
    r = (vs - vq).abs() / step
    tol = 0.5 + 1e-3 + (vq.abs() * _half_ulp(q) + vs.abs() * _half_ulp(source)) / step
    return float((r > tol).float().mean()), float(r.mean())


def _ggml_quantized(dtype: str) -> bool:
    """GGUF block-quantized storage types (``Q4_K``, ``Q8_0``, ``IQ2_XS``, ``TQ1_0``, ``MXFP4``...)."""
    return dtype[:1] == "Q" or dtype[:2] in ("IQ", "TQ") or dtype in ("MXFP4", "NVFP4")


def declares_quantized(dtypes: Sequence[str]) -> bool:
    """True when the storage format itself says the weights are quantized (int8, fp8, GGUF block types)."""
    return any(d in ("I8", "U8", "F8_E4M3", "F8_E5M2") or _ggml_quantized(d) for d in dtypes)


def is_quantized(w: WeightMap, dtypes: Sequence[str] = ()) -> bool:
    """True when the weights were stored in or rounded to a low-precision grid.

    A quantized storage dtype (int8, fp8) decides at once; otherwise the
    median :func:`grid_residual` over the identity tensors must be on a grid.
    """
    if declares_quantized(dtypes):
        return True
    keys = [k for k in w if k[0] in _IDENTITY]
    res = [grid_residual(w[k]) for k in keys[:: max(1, len(keys) // _GRID_TENSORS)]]
    res = [r for r in res if not math.isnan(r)]
    if not res:
        return False
    res.sort()
    return res[len(res) // 2] < _ON_GRID


#: Share of elements allowed outside half a grid step: ties and clamping only.
_ROUNDING_VIOLATIONS = 1e-3
#: Mean rounding error (in steps) below which the off-grid side is a light
#: change *of* the grid side, not its source: rounding leaves ~0.25.
_ROUNDING_SPREAD = 0.15


#: Rows and columns of the difference examined (evenly strided): a difference
#: of rank ``r`` has rank at most ``r`` on any sub-block, and a dense one is
#: dense on every sub-block, so the decision holds at a fraction of the cost.
_RANK_LINES = 1024
#: Most columns of the seeded sketch whose singular values measure a difference's rank.
_SKETCH_MAX = 512
#: Adapter ranks decide at a rank fraction of 0.25 (``classify_relation``); the
#: sketch keeps half the smaller side, so every rank up to that fraction is seen
#: exactly and only the rank of denser differences is reported as full.
_SKETCH_FRACTION = 0.5


def _delta_rank_fraction(x: torch.Tensor, y: torch.Tensor) -> float:
    """Numerical rank of ``y - x`` over its full rank (singular values above 1e-3 of the largest).

    Computed on an evenly strided sub-block of at most ``_RANK_LINES`` rows
    and columns (a difference of rank ``r`` has rank at most ``r`` on any
    sub-block, a dense one is dense on all). The sub-block is sketched
    (``delta @ Omega`` with seeded Gaussian columns, half its smaller side and
    at most :data:`_SKETCH_MAX`): a difference of rank ``r`` below the sketch
    width keeps exactly ``r`` non-negligible singular values in the sketch,
    and a denser one fills it (reported as 1.0). Both cuts keep a 7B pair's
    typing in seconds and a family solve of 384-wide layers fast.
    """
    rows = torch.arange(0, x.shape[0], max(1, -(-x.shape[0] // _RANK_LINES)))
    cols = torch.arange(0, x.shape[1], max(1, -(-x.shape[1] // _RANK_LINES)))
    delta = (y[rows][:, cols].float() - x[rows][:, cols].float())
    small = min(delta.shape)
    if delta.shape[0] < delta.shape[1]:
        delta = delta.T
    k = min(small, _SKETCH_MAX, max(1, math.ceil(_SKETCH_FRACTION * small)))
    if k < small:
        g = torch.Generator().manual_seed(0xAD + delta.shape[1])
        delta = delta @ torch.randn(delta.shape[1], k, generator=g)
    s = torch.linalg.svdvals(delta)
    if float(s[0]) == 0.0:
        return 0.0
    rank = int((s > 1e-3 * s[0]).sum())
    if k < small and rank >= 0.9 * k:
        return 1.0  # the sketch is full: the difference is dense as far as it can see
    return rank / small


@dataclass(frozen=True)
class RelationEvidence:
    """The relation between two dependent models and the measurements behind it.

    ``child_side`` says which model the structure marks as the child
    (``"a"``, ``"b"``) or ``None`` when the relation itself is symmetric.
    """

    relation: str
    confidence: float
    child_side: str | None
    distance: float | None
    invariant_distance: float | None
    quantized_a: bool
    quantized_b: bool
    changed_fraction: float | None
    delta_rank_fraction: float | None
    notes: tuple[str, ...]
    conversion: ConversionCheck | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "relation": self.relation,
            "confidence": json_float(self.confidence),
            "child_side": self.child_side,
            "distance": None if self.distance is None else json_float(self.distance),
            "invariant_distance": None if self.invariant_distance is None else json_float(self.invariant_distance),
            "quantized_a": self.quantized_a,
            "quantized_b": self.quantized_b,
            "changed_fraction": self.changed_fraction,
            "delta_rank_fraction": self.delta_rank_fraction,
            "notes": list(self.notes),
            "conversion": None if self.conversion is None else self.conversion.to_dict(),
        }


def _blocks(w: WeightMap) -> int:
    return len({k[1] for k in w if k[1] is not None})


def _width(w: WeightMap) -> int:
    return max((shape_of(w, k)[0] for k in w if k[0] in ("mlp.up", "mlp.in")), default=0)


@dataclass(frozen=True)
class WeightFacts:
    """What relation typing needs of one model alone: its degenerate tensors and whether it is quantized.

    A family of ``n`` models has ``n (n - 1) / 2`` pairs; these scans (a rank
    probe per tensor, a grid fit per identity tensor) cost as much as typing a
    pair, so a family solver computes them once per model (:func:`weight_facts`).
    """

    degenerate: tuple[tuple[Any, str], ...]
    quantized: bool


def weight_facts(w: WeightMap, dtypes: Sequence[str] = ()) -> WeightFacts:
    """:class:`WeightFacts` of one model (``dtypes``: its storage dtypes)."""
    w = check_weight_map(w, "w")
    found = degenerate_entries(w)
    (kept,), _ = drop_found((w,), (found,))
    (sample,) = typing_view(kept)  # a streamed model: a spread of blocks, read lazily
    return WeightFacts(found, is_quantized(sample, dtypes))


def classify_relation(
    a: WeightMap,
    b: WeightMap,
    *,
    dtypes_a: Sequence[str] = (),
    dtypes_b: Sequence[str] = (),
    facts_a: WeightFacts | None = None,
    facts_b: WeightFacts | None = None,
) -> RelationEvidence:
    """Type the derivation between two models already shown to be dependent.

    Structure (depth, width) comes from the full maps' keys and shapes; the
    measurements from every tensor of in-memory maps, and from
    :data:`~._views.TYPING_BLOCKS` evenly spread blocks of lazily read ones,
    one tensor pair at a time, so typing a 7B pair holds a few matrices.

    Parameters
    ----------
    a, b : WeightMap
        Canonical weights of the two models.
    dtypes_a, dtypes_b : sequence of str
        Storage dtypes of each model's tensors (``"I8"`` marks quantized storage).
    facts_a, facts_b : WeightFacts, optional
        :func:`weight_facts` of each side when already known (a family solver
        types every pair and computes them once per model); else computed here.

    Returns
    -------
    RelationEvidence
        The relation (one of :data:`RELATIONS` except ``merge``, which needs
        several parents: see :func:`merge_fit`), with the measurements.
    """
    a = check_weight_map(a, "a")
    b = check_weight_map(b, "b")
    facts_a = facts_a if facts_a is not None else weight_facts(a, dtypes_a)
    facts_b = facts_b if facts_b is not None else weight_facts(b, dtypes_b)
    (a, b), degenerate = drop_found((a, b), (facts_a.degenerate, facts_b.degenerate))
    if not a or not b:
        return RelationEvidence("unknown", 0.0, None, None, None, False, False, None, None,
                                degenerate + ("no informative tensor left: no relation can be typed",))
    notes: list[str] = list(degenerate)
    shape_a, shape_b = (_blocks(a), _width(a)), (_blocks(b), _width(b))
    a, b = typing_view(a, b)
    qa, qb = facts_a.quantized, facts_b.quantized
    dist = relative_distance(a, b)
    inv = invariant_distance(a, b)
    settled = _pruned_or_unaligned(shape_a, shape_b, dist, inv, qa, qb, notes)
    if settled is not None:
        return settled
    conv = conversion_check(a, b, permutations=not math.isnan(inv) and inv < _MAYBE_PERMUTED)
    if conv.is_conversion:
        return _duplicate_evidence(conv, dist, inv, qa, qb, notes)
    quantized = _quantized_copy(a, b, qa, qb, dtypes_a, dtypes_b, dist, inv, conv, notes)
    if quantized is not None:
        return quantized
    notes.append(f"not a conversion: {conv.mismatch_fraction:.2%} of elements differ under the best cast ({conv.mode})")
    return _dense_or_low_rank(a, b, qa, qb, dist, inv, conv, notes)


def _pruned_or_unaligned(
    shape_a: tuple[int, int], shape_b: tuple[int, int], dist: float, inv: float,
    qa: bool, qb: bool, notes: list[str],
) -> RelationEvidence | None:
    """``pruned`` when the ``(blocks, MLP width)`` differ, ``unknown`` when no tensor aligns; else ``None``.

    Structure is read from the full maps before any measurement, because a
    different depth or width decides the relation whatever the values say.
    """
    if shape_a != shape_b:
        smaller = "a" if shape_a < shape_b else "b"
        notes.append(f"blocks {shape_a[0]} vs {shape_b[0]}, MLP width {shape_a[1]} vs {shape_b[1]}")
        return RelationEvidence("pruned", 0.95, smaller, _opt(dist), _opt(inv), qa, qb, None, None, tuple(notes))
    if math.isnan(dist):
        notes.append("no aligned tensors to compare")
        return RelationEvidence("unknown", 0.5, None, None, _opt(inv), qa, qb, None, None, tuple(notes))
    return None


def _duplicate_evidence(
    conv: ConversionCheck, dist: float, inv: float, qa: bool, qb: bool, notes: list[str],
) -> RelationEvidence:
    """A ``duplicate`` verdict for a pair one cast (perhaps after a permutation) explains.

    A cast cannot be undone: the lower-precision side is the copy.
    """
    how = "identical" if conv.mode == "exact" else f"{conv.lower_side} is the other cast {conv.mode}"
    notes.append(
        f"{how}{' after undoing a permutation' if conv.permuted else ''}; "
        f"{conv.mismatch_fraction:.2e} of {conv.elements:,} elements differ"
    )
    return RelationEvidence(
        "duplicate", 0.99, conv.lower_side, dist, _opt(inv), qa, qb, 0.0, 0.0, tuple(notes), conv,
    )


def _quantized_copy(
    a: WeightMap, b: WeightMap, qa: bool, qb: bool, dtypes_a: Sequence[str], dtypes_b: Sequence[str],
    dist: float, inv: float, conv: ConversionCheck, notes: list[str],
) -> RelationEvidence | None:
    """``quantized`` evidence when one side is a quantized copy of the other (a note why not, when one is on a grid).

    When both sides are on grids (a model dequantized from GGUF and its light
    fine-tunes stay on the source's grid), the copy is the side whose own grid
    the other rounds onto, when exactly one is.
    """
    if qa != qb:
        quantized = _quantized_evidence(a, b, qa, dtypes_a if qa else dtypes_b, dist, inv, conv)
        if isinstance(quantized, RelationEvidence):
            return quantized
        if quantized:
            notes.append(quantized)
        return None
    if qa:
        found = [e for e in (_quantized_evidence(a, b, side, (), dist, inv, conv) for side in (True, False))
                 if isinstance(e, RelationEvidence)]
        if len(found) == 1:
            return found[0]
    return None


def _quantized_evidence(
    a: WeightMap, b: WeightMap, qa: bool, dtypes_q: Sequence[str], dist: float, inv: float, conv: ConversionCheck,
) -> RelationEvidence | str | None:
    """``quantized`` evidence when the off-grid side rounds onto the grid side, else a note why not."""
    qside, (gq, gs) = ("a", (a, b)) if qa else ("b", (b, a))
    keys = _shared_keys(gq, gs)
    keys = keys[:: max(1, len(keys) // 16)]
    checks = [rounds_onto_grid(gq[k], gs[k]) for k in keys]
    if not checks:
        return None
    violations = sum(v for v, _ in checks) / len(checks)
    spread = sorted(sp for _, sp in checks)[len(checks) // 2]
    note = (f"{qside} lies on a low-precision grid; the other side rounds onto it "
            f"with {violations:.2e} violations and a median rounding error of {spread:.3f} steps")
    if violations <= _ROUNDING_VIOLATIONS and spread >= _ROUNDING_SPREAD:
        return RelationEvidence("quantized", 0.95, qside, dist, _opt(inv), qa, not qa, None, None, (note,), conv)
    if declares_quantized(dtypes_q):
        # Block formats (GGUF K/legacy quants, GPTQ/AWQ groups) carry grids our per-row and
        # per-column views do not see; the file's own declaration is structural evidence.
        return RelationEvidence(
            "quantized", 0.7, qside, dist, _opt(inv), qa, not qa, None, None,
            (note + "; not conclusive, but the file declares quantized storage",), conv,
        )
    return note.replace("rounds onto it", "does not round onto it:")


def _dense_or_low_rank(
    a: WeightMap, b: WeightMap, qa: bool, qb: bool, dist: float, inv: float, conv: ConversionCheck, notes: list[str],
) -> RelationEvidence:
    """``adapter`` when the change is low rank where there is one, else ``finetune``."""
    keys = _shared_keys(a, b)
    changed = [k for k, (x, y) in zip(keys, _pairs(a, b, keys)) if _sq(y - x) > 1e-12 * _sq(x)]
    changed_fraction = len(changed) / len(keys)
    # The median over an evenly spaced subset of at most 8 changed tensors.
    sample = changed[:: max(1, len(changed) // 8)]
    ranks = sorted(_delta_rank_fraction(x, y) for x, y in _pairs(a, b, sample))
    rank = ranks[len(ranks) // 2] if ranks else 0.0
    if changed and rank <= 0.25:
        notes.append(f"weight difference has median rank fraction {rank:.3f} on {len(changed)} changed tensors")
        return RelationEvidence("adapter", 0.9 if changed_fraction < 1 else 0.75, None, dist, _opt(inv), qa, qb,
                                changed_fraction, rank, tuple(notes), conv)
    return RelationEvidence("finetune", 0.8, None, dist, _opt(inv), qa, qb, changed_fraction, rank, tuple(notes), conv)


def _opt(x: float) -> float | None:
    return None if math.isnan(x) else x


_MERGE_SAMPLE = 4_000_000


@dataclass(frozen=True)
class MergeFit:
    """Least-squares fit ``child ~ sum_k alpha_k parent_k``.

    ``residual`` is relative to the child's norm; ``single_residual`` is the
    best fit by one scaled parent. A merge explains the child far better with
    all its parents than with any one of them.
    """

    alphas: tuple[float, ...]
    residual: float
    single_residual: float

    @property
    def is_merge(self) -> bool:
        return (
            len(self.alphas) >= 2
            and min(self.alphas) > 0.05
            and self.residual < 0.05 * self.single_residual
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "alphas": list(self.alphas),
            "residual": json_float(self.residual),
            "single_residual": json_float(self.single_residual),
            "is_merge": self.is_merge,
        }


def merge_fit(
    child: WeightMap, parents: Sequence[WeightMap], *, degenerate: Sequence[Sequence[tuple[Any, str]]] | None = None,
) -> MergeFit:
    """Solve ``min ||child - sum_k alpha_k parent_k||`` over all shared identity tensors.

    ``degenerate``: each map's degenerate entries (child first, then the
    parents), when a family solver already knows them (:class:`WeightFacts`);
    otherwise every tensor is judged here.

    Examples
    --------
    >>> import torch
    >>> p1 = {("mlp.up", 0): torch.randn(8, 4)}
    >>> p2 = {("mlp.up", 0): torch.randn(8, 4)}
    >>> c = {("mlp.up", 0): 0.3 * p1[("mlp.up", 0)] + 0.7 * p2[("mlp.up", 0)]}
    >>> [round(x, 3) for x in merge_fit(c, [p1, p2]).alphas]
    [0.3, 0.7]
    """
    if len(parents) < 1:
        raise ValueError(f"parents: expected at least one WeightMap, got {len(parents)}")
    child = check_weight_map(child, "child")
    ps = [check_weight_map(p, f"parents[{i}]") for i, p in enumerate(parents)]
    names = ("child", *(f"parents[{i}]" for i in range(len(ps))))
    if degenerate is None:
        (child, *ps), dropped = drop_degenerate(child, *ps, names=names)
    else:
        (child, *ps), dropped = drop_found((child, *ps), degenerate, names=names)
    if not child:
        raise ValueError(f"child and parents: expected informative tensors, got only degenerate ones ({dropped[0]})")
    child, *ps = typing_view(child, *ps)
    keys = [k for k in sorted(child, key=str)
            if k[0] in _IDENTITY and all(k in p and shape_of(p, k) == shape_of(child, k) for p in ps)]
    if not keys:
        raise ValueError("child and parents: expected shared identity tensors of equal shape, got none")
    # Least squares on an evenly strided subsample of at most ``_MERGE_SAMPLE``
    # elements: the mixing weights are a handful of numbers, and a 7B model
    # must not be copied into one float64 vector per parent.
    total = sum(math.prod(shape_of(child, k)) for k in keys)
    stride = max(1, total // _MERGE_SAMPLE)

    def flat(w: WeightMap) -> torch.Tensor:
        return torch.cat([w[k].reshape(-1)[::stride] for k in keys]).double()

    y = flat(child)
    X = torch.stack([flat(p) for p in ps], dim=1)
    norm = float(y.norm())
    if norm == 0.0 or bool((X.norm(dim=0) == 0).any()):
        raise ValueError("child and parents: expected non-zero weights, got an all-zero model")
    sol = torch.linalg.lstsq(X, y.unsqueeze(1)).solution.squeeze(1)
    residual = float((X @ sol - y).norm()) / norm
    singles = []
    for j in range(X.shape[1]):
        x = X[:, j]
        alpha = float(x @ y) / float(x @ x)
        singles.append(float((alpha * x - y).norm()) / norm)
    return MergeFit(tuple(float(s) for s in sol), residual, min(singles))
