"""Edge typing: what kind of derivation connects two dependent models.

Pure functions on WeightMaps (``(role, block) -> [out, in]`` float32 matrices).
Each relation is recognised from a property of the weights, not a threshold
tuned on one zoo:

- ``duplicate``: every shared tensor equal up to storage rounding (fp16/bf16),
  or equal after undoing hidden-unit permutations (compared through
  permutation-invariant products such as ``W_down @ W_up``);
- ``quantized``: one side's values sit on a low-precision grid (per row,
  column or group; symmetric or affine; 8 or 4 bits) and the other's do not;
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
from typing import Any, Mapping, Sequence

import torch

from ._validation import check_weight_map, drop_degenerate, json_float

__all__ = [
    "RELATIONS",
    "RelationEvidence",
    "MergeFit",
    "grid_residual",
    "is_quantized",
    "relative_distance",
    "invariant_distance",
    "classify_relation",
    "merge_fit",
]

RELATIONS: tuple[str, ...] = ("duplicate", "quantized", "adapter", "pruned", "merge", "finetune", "unknown")

WeightMap = Mapping[tuple[str, "int | None"], torch.Tensor]

#: Relative Frobenius difference below which two tensors are the same weights
#: stored at another precision (fp16 rounds at 2**-11 relative, bf16 at 2**-8).
_SAME = 5e-3
#: Mean distance to the nearest grid level, in grid steps: ~0.25 for values off
#: any grid, ~0 on it (half a step of fp16 rounding at 127 levels is ~0.03).
_ON_GRID = 0.08
_IDENTITY = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down", "mlp.in", "mlp.out")


def _shared(a: WeightMap, b: WeightMap, roles: Sequence[str] = _IDENTITY) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (a[k].float(), b[k].float())
        for k in sorted(a, key=str)
        if k in b and k[0] in roles and a[k].shape == b[k].shape
    ]


def _pooled_distance(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Frobenius distance pooled over tensor pairs, over their mean squared norm; ``nan`` if none."""
    if not pairs:
        return float("nan")
    num = sum(float((x - y).pow(2).sum()) for x, y in pairs)
    den = sum(0.5 * (float(x.pow(2).sum()) + float(y.pow(2).sum())) for x, y in pairs)
    return math.sqrt(num / den) if den > 0 else float("nan")


def relative_distance(a: WeightMap, b: WeightMap) -> float:
    """Frobenius distance of the shared identity tensors over their mean norm (0 = identical).

    Returns ``nan`` when the models share no tensor of equal shape.
    """
    return _pooled_distance(_shared(a, b))


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
        if ("attn.o", b) in w and ("attn.v", b) in w and w[("attn.o", b)].shape[1] == w[("attn.v", b)].shape[0]:
            out[("attn.ov", b)] = probed(w[("attn.o", b)], w[("attn.v", b)])
        if ("attn.q", b) in w and ("attn.k", b) in w and w[("attn.q", b)].shape == w[("attn.k", b)].shape:
            out[("attn.qk", b)] = probed(w[("attn.q", b)].T, w[("attn.k", b)])
    return out


def _same_norm_profiles(a: WeightMap, b: WeightMap) -> bool:
    """Every shared tensor has the same multiset of row norms and of column norms.

    Permuting rows and columns keeps both multisets, so a permuted copy passes;
    a tensor that really changed (one the invariant products do not cover) fails.
    """
    for x, y in _shared(a, b):
        for dim in (0, 1):
            nx_, ny = x.norm(dim=dim).sort().values, y.norm(dim=dim).sort().values
            if float((nx_ - ny).abs().max()) > _SAME * float(nx_.abs().max() + 1e-30):
                return False
    return True


def invariant_distance(a: WeightMap, b: WeightMap) -> float:
    """Like :func:`relative_distance`, on permutation-invariant products.

    A copy whose MLP units and attention heads were permuted has invariant
    distance ~0 from its source while its raw (aligned) distance is large.
    """
    ia, ib = _invariants(a), _invariants(b)
    return _pooled_distance([(ia[k], ib[k]) for k in ia if k in ib and ia[k].shape == ib[k].shape])


def grid_residual(w: torch.Tensor) -> float:
    """Smallest mean distance (in grid steps) of ``w`` to a low-precision grid.

    Tries symmetric (absmax/127, absmax/7) and affine (min..max in 255 or 15
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
    views = [w, w.T]
    for g in (32, 64, 128):
        if w.shape[1] % g == 0 and w.shape[1] > g:
            views.append(w.reshape(-1, g))
    best = float("inf")
    for v in views:
        v = v[:256]
        for levels in (127, 7):
            scale = v.abs().amax(dim=1, keepdim=True) / levels
            r = v / scale.clamp_min(1e-30)
            best = min(best, float((r - r.round()).abs().mean()))
        lo, hi = v.amin(dim=1, keepdim=True), v.amax(dim=1, keepdim=True)
        for steps in (255, 15):
            scale = (hi - lo) / steps
            r = (v - lo) / scale.clamp_min(1e-30)
            best = min(best, float((r - r.round()).abs().mean()))
    return best


def is_quantized(w: WeightMap, dtypes: Sequence[str] = ()) -> bool:
    """True when the weights were stored in or rounded to a low-precision grid.

    A quantized storage dtype (int8, fp8) decides at once; otherwise the
    median :func:`grid_residual` over the identity tensors must be on a grid.
    """
    if any(d in ("I8", "U8", "F8_E4M3", "F8_E5M2") for d in dtypes):
        return True
    res = [grid_residual(t) for k, t in w.items() if k[0] in _IDENTITY]
    res = [r for r in res if not math.isnan(r)]
    if not res:
        return False
    res.sort()
    return res[len(res) // 2] < _ON_GRID


#: Matrices with a smaller side up to this get an exact SVD of their difference;
#: larger ones a randomized range sketch of this many columns.
_EXACT_SVD = 512


def _delta_rank_fraction(x: torch.Tensor, y: torch.Tensor) -> float:
    """Numerical rank of ``y - x`` over its full rank (singular values above 1e-3 of the largest).

    Large matrices are sketched (``(y - x) @ Omega`` with ``_EXACT_SVD`` seeded
    Gaussian columns): a difference of rank ``r < _EXACT_SVD`` keeps exactly
    ``r`` non-negligible singular values in the sketch, and a dense one fills it.
    """
    delta = (y.float() - x.float())
    small = min(delta.shape)
    if small > _EXACT_SVD:
        if delta.shape[0] < delta.shape[1]:
            delta = delta.T
        g = torch.Generator().manual_seed(0xAD + delta.shape[1])
        delta = delta @ torch.randn(delta.shape[1], _EXACT_SVD, generator=g)
    s = torch.linalg.svdvals(delta.double())
    if float(s[0]) == 0.0:
        return 0.0
    rank = int((s > 1e-3 * s[0]).sum())
    if small > _EXACT_SVD and rank >= 0.9 * _EXACT_SVD:
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
        }


def _blocks(w: WeightMap) -> int:
    return len({k[1] for k in w if k[1] is not None})


def _width(w: WeightMap) -> int:
    return max((t.shape[0] for k, t in w.items() if k[0] in ("mlp.up", "mlp.in")), default=0)


def classify_relation(
    a: WeightMap,
    b: WeightMap,
    *,
    dtypes_a: Sequence[str] = (),
    dtypes_b: Sequence[str] = (),
) -> RelationEvidence:
    """Type the derivation between two models already shown to be dependent.

    Parameters
    ----------
    a, b : WeightMap
        Canonical weights of the two models.
    dtypes_a, dtypes_b : sequence of str
        Storage dtypes of each model's tensors (``"I8"`` marks quantized storage).

    Returns
    -------
    RelationEvidence
        The relation (one of :data:`RELATIONS` except ``merge``, which needs
        several parents: see :func:`merge_fit`), with the measurements.
    """
    a = check_weight_map(a, "a")
    b = check_weight_map(b, "b")
    (a, b), degenerate = drop_degenerate(a, b)
    if not a or not b:
        return RelationEvidence("unknown", 0.0, None, None, None, False, False, None, None,
                                degenerate + ("no informative tensor left: no relation can be typed",))
    notes: list[str] = list(degenerate)
    qa, qb = is_quantized(a, dtypes_a), is_quantized(b, dtypes_b)
    dist = relative_distance(a, b)
    inv = invariant_distance(a, b)
    nb_a, nb_b, wa, wb = _blocks(a), _blocks(b), _width(a), _width(b)
    if (nb_a, wa) != (nb_b, wb):
        smaller = "a" if (nb_a, wa) < (nb_b, wb) else "b"
        notes.append(f"blocks {nb_a} vs {nb_b}, MLP width {wa} vs {wb}")
        return RelationEvidence("pruned", 0.95, smaller, _opt(dist), _opt(inv), qa, qb, None, None, tuple(notes))
    if math.isnan(dist):
        notes.append("no aligned tensors to compare")
        return RelationEvidence("unknown", 0.5, None, None, _opt(inv), qa, qb, None, None, tuple(notes))
    if qa != qb:
        return RelationEvidence(
            "quantized", 0.95, "a" if qa else "b", dist, _opt(inv), qa, qb, None, None,
            (f"{'a' if qa else 'b'} lies on a low-precision grid",),
        )
    if dist < _SAME:
        return RelationEvidence("duplicate", 0.99, None, dist, _opt(inv), qa, qb, 0.0, 0.0, ("identical up to storage rounding",))
    if not math.isnan(inv) and inv < _SAME and dist > 10 * max(inv, 1e-9) and _same_norm_profiles(a, b):
        notes.append("identical after undoing hidden-unit permutations")
        return RelationEvidence("duplicate", 0.95, None, dist, inv, qa, qb, None, None, tuple(notes))
    pairs = _shared(a, b)
    changed = [(x, y) for x, y in pairs if float((y - x).norm()) > 1e-6 * float(x.norm())]
    changed_fraction = len(changed) / len(pairs)
    # The median over an evenly spaced subset of at most 16 changed tensors.
    sample = changed[:: max(1, len(changed) // 16)]
    ranks = sorted(_delta_rank_fraction(x, y) for x, y in sample)
    rank = ranks[len(ranks) // 2] if ranks else 0.0
    if changed and rank <= 0.25:
        notes.append(f"weight difference has median rank fraction {rank:.3f} on {len(changed)} changed tensors")
        return RelationEvidence("adapter", 0.9 if changed_fraction < 1 else 0.75, None, dist, _opt(inv), qa, qb, changed_fraction, rank, tuple(notes))
    return RelationEvidence("finetune", 0.8, None, dist, _opt(inv), qa, qb, changed_fraction, rank, tuple(notes))


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


def merge_fit(child: WeightMap, parents: Sequence[WeightMap]) -> MergeFit:
    """Solve ``min ||child - sum_k alpha_k parent_k||`` over all shared identity tensors.

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
    (child, *ps), degenerate = drop_degenerate(child, *ps, names=("child", *(f"parents[{i}]" for i in range(len(ps)))))
    if not child:
        raise ValueError(f"child and parents: expected informative tensors, got only degenerate ones ({degenerate[0]})")
    keys = [k for k in sorted(child, key=str) if k[0] in _IDENTITY and all(k in p and p[k].shape == child[k].shape for p in ps)]
    if not keys:
        raise ValueError("child and parents: expected shared identity tensors of equal shape, got none")
    # Least squares on an evenly strided subsample of at most ``_MERGE_SAMPLE``
    # elements: the mixing weights are a handful of numbers, and a 7B model
    # must not be copied into one float64 vector per parent.
    total = sum(child[k].numel() for k in keys)
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
