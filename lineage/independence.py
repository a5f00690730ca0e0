"""Independence tests between two models: are their weights independent draws, or related?

Null (for every test here): the two models' weights are independent, i.e.
they were trained from independent random initializations (the same data
or recipe still counts as independent). Rejecting it means one model is
derived from the other or both from a common ancestor (Zhu, Ahmed,
Kuditipudi, Liang, ICML 2025; see ``docs/method-independence.md``).

Three methods, picked by :func:`independence_test`:

- ``"exact"``: when both models share a residual basis (same hidden size).
  The null's symmetry group is one permutation of each MLP block's hidden
  units plus one permutation of the residual dimension shared by the whole
  model. Per block, phi_U matches up-projection rows (``mlp.in`` for
  non-GLU); one residual test matches residual dimensions on the
  concatenated embedding and attention features. Given the residual
  permutation the block p-values are independent uniforms, and the residual
  statistic uses no MLP tensor, so all of them are Fisher-combined: exactly
  uniform under the null. The aligned statistic ``S`` is computed on the
  same matrices and Fisher-combined the same way; the two combined
  p-values are merged by the Cauchy combination (exactly uniform when they
  are independent, close to uniform otherwise, as powerful as Bonferroni in
  the tail without Bonferroni's pile-up at p = 1).
- ``"match"``: phi_MATCH on activations (:mod:`.robust`), robust to hidden
  permutations, residual rotations, sign flips and width changes; empirical null.
- ``"permtest"``: PERMTEST for any statistic over random elements of the
  null's symmetry group; exact, floor ``1 / (T + 1)``.

Sequential testing (``sequential=True``) reads blocks in order and looks at
a cheap combined p-value (``look_units`` units per block and residual
dimensions) after 1, 2, 4, 8, ... blocks (:func:`look_schedule`); it stops
as soon as ``K * p < 10 ** stop_log10`` over the ``K`` pre-set looks
(Bonferroni over the looks, the full test counted as one) and reports that
``K * p``. When no look settles it the full test runs on every block and its
p-value is reported unchanged: the result is valid up to an additive
``10 ** stop_log10`` (see ``docs/streaming.md``). Models of different depths
get one cheap look, at every block pair, then the full test;
``blocks_read`` says how many blocks were read.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..serialize import Serializable
from ._validation import (
    check_alpha,
    check_choice,
    check_informative,
    check_matrix,
    check_optional_positive_int,
    check_positive_int,
    check_rng,
    check_weight_map,
    drop_degenerate,
    json_float,
    rejects,
    verdicts_of,
)
from ._views import BlockSubset
from .matching import (
    aligned_cosine_test,
    aligned_result_from_cosines,
    bonferroni_combine,
    cauchy_combine,
    fisher_combine,
    matching_result_from_similarities,
    sample_rows,
    unit_matching_test,
)
from .robust import BlockActivations, grid_block_map, match_consistency_test

__all__ = [
    "WeightMap",
    "BlockResult",
    "ComponentResult",
    "IndependenceResult",
    "TensorEvidence",
    "METHODS",
    "STATISTICS",
    "SYMMETRIC_STATISTICS",
    "PERMUTATION_INVARIANT_STATISTICS",
    "NULL_UNIFORM_STATISTICS",
    "independence_test",
    "exact_test",
    "match_test",
    "permutation_test",
    "apply_null_symmetry",
    "aligned_weight_similarity",
    "tensor_evidence",
    "look_schedule",
]

WeightMap = Mapping[tuple[str, "int | None"], torch.Tensor]

METHODS: tuple[str, ...] = ("auto", "exact", "match", "permtest")

#: Every statistic this package computes, by name.
STATISTICS: frozenset[str] = frozenset(
    {"unit_matching", "aligned_cosine", "match_consistency", "aligned_weight_similarity"}
)
#: Same value when the two models swap places (no unit sampling).
SYMMETRIC_STATISTICS: frozenset[str] = frozenset(
    {"unit_matching", "aligned_cosine", "aligned_weight_similarity"}
)
#: Same value when the first model's hidden units are permuted (an output-preserving change).
PERMUTATION_INVARIANT_STATISTICS: frozenset[str] = frozenset({"match_consistency"})
#: p-value uniform (or, for PERMTEST, super-uniform) under the null by the symmetry argument;
#: ``match_consistency``'s null is empirical.
NULL_UNIFORM_STATISTICS: frozenset[str] = frozenset(
    {"unit_matching", "aligned_cosine", "aligned_weight_similarity"}
)

# Axis of each role's matrix ([out, in]) that the residual permutation moves.
_RESIDUAL_AXIS = {
    "embed.tokens": 1, "embed.positions": 1, "embed.token_type": 1, "head.lm": 1,
    "attn.q": 1, "attn.k": 1, "attn.v": 1, "attn.o": 0,
    "mlp.gate": 1, "mlp.up": 1, "mlp.in": 1, "mlp.down": 0, "mlp.out": 0,
}
# Axis that a block's hidden-unit permutation moves.
_HIDDEN_AXIS = {"mlp.gate": 0, "mlp.up": 0, "mlp.in": 0, "mlp.down": 1, "mlp.out": 1}
# Tensors the residual test reads: residual-indexed, and untouched by hidden permutations.
_RESIDUAL_TEST_ROLES = ("embed.tokens", "embed.positions", "embed.token_type", "attn.q", "attn.k", "attn.v", "attn.o")


@dataclass(frozen=True)
class BlockResult(Serializable):
    """The test of one block of model a against one block of model b.

    Attributes
    ----------
    block_a, block_b : int
    test : str
        ``"phi_u"`` (weights) or ``"phi_match"`` (activations).
    statistic : float
        Spearman correlation of the matching (phi_U: with the identity;
        phi_MATCH: between the two views' matchings).
    p_value, p_value_log10 : float
        The block's p-value (phi_U: Cauchy combination of the matching and aligned tests).
    n_units : int
        Units matched.
    matching_p_value_log10 : float
        The matching test alone (phi_U's Spearman, or phi_MATCH).
    aligned_z, aligned_p_value_log10 : float or None
        The aligned statistic (phi_U on equal shapes only).
    kept_units : tuple of int or None
        When widths differ: the wider block's units that the narrower block's
        units matched (phi_U) or that both views agreed on (phi_MATCH).
    """

    block_a: int
    block_b: int
    test: str
    statistic: float
    p_value: float
    p_value_log10: float
    n_units: int
    matching_p_value_log10: float
    aligned_z: float | None = None
    aligned_p_value_log10: float | None = None
    kept_units: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ComponentResult(Serializable):
    """One sub-test whose p-value entered the combined result.

    ``name`` is ``"phi_u"``, ``"residual"``, ``"phi_match"`` or ``"permtest"``.
    """

    name: str
    statistic: float
    p_value: float
    p_value_log10: float
    null: str


@dataclass(frozen=True)
class IndependenceResult:
    """The outcome of an independence test between two models.

    Attributes
    ----------
    statistic : float
        The statistic of the sub-test that decided: Fisher's ``-2 sum ln p``
        over blocks (phi_MATCH), the mean Spearman correlation (phi_U), the
        mean aligned z, or PERMTEST's statistic.
    p_value : float
        0.0 when it underflows: read ``p_value_log10``.
    p_value_log10 : float
    method : str
        The method that decided: ``"exact"``, ``"match"`` or ``"permtest"``.
    dependent : bool
        ``p_value < alpha``: the null of independence is rejected.
    alpha : float
    null : str
    blocks : tuple of BlockResult
        Per-block results of the deciding method, along ``block_map``.
    block_map : tuple of (block_a, block_b)
    tests : tuple of ComponentResult
        Every sub-test that was run, including those that did not decide;
        ``notes`` says how their p-values were combined.
    notes : tuple of str
        What was not possible or how p-values were combined.
    blocks_read : int or None
        Blocks of each model the test read (sequential testing stops early
        once dependence is settled); ``None`` when not sequential.
    """

    statistic: float
    p_value: float
    p_value_log10: float
    method: str
    dependent: bool
    alpha: float
    null: str
    blocks: tuple[BlockResult, ...] = ()
    block_map: tuple[tuple[int, int], ...] = ()
    tests: tuple[ComponentResult, ...] = ()
    notes: tuple[str, ...] = field(default=())
    blocks_read: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "statistic": json_float(self.statistic),
            "p_value": json_float(self.p_value),
            "p_value_log10": json_float(self.p_value_log10),
            "dependent": self.dependent,
            "alpha": self.alpha,
            "null": self.null,
            "blocks": tuple(b.to_dict() for b in self.blocks),
            "block_map": self.block_map,
            "tests": tuple(t.to_dict() for t in self.tests),
            "notes": self.notes,
            "blocks_read": self.blocks_read,
        }


_NULL = "the two models' weights are independent (independent initializations)"


def _result(components: list[ComponentResult], method: str, alpha: float, *, blocks=(), block_map=(),
            notes=(), combine: str = "fisher") -> IndependenceResult:
    lps = [c.p_value_log10 for c in components]
    if combine == "fisher" and len(lps) > 1:
        lp = fisher_combine(lps)
        stat = -2.0 * math.log(10.0) * float(sum(lps))
    else:
        lp = bonferroni_combine(lps)
        stat = components[int(np.argmin(lps))].statistic
    return IndependenceResult(
        statistic=stat, p_value=10.0**lp, p_value_log10=lp, method=method,
        dependent=rejects(lp, alpha), alpha=alpha, null=_NULL,
        blocks=tuple(blocks), block_map=tuple(block_map), tests=tuple(components), notes=tuple(notes),
    )


def _no_evidence(method: str, alpha: float, notes: tuple[str, ...]) -> IndependenceResult:
    """Every tensor was degenerate (see ``_validation.drop_degenerate``): p = 1, never dependent."""
    return IndependenceResult(
        statistic=0.0, p_value=1.0, p_value_log10=0.0, method=method, dependent=False, alpha=alpha, null=_NULL,
        notes=tuple(notes) + ("no informative tensor left to compare: no evidence of dependence",),
    )


# ---------------------------------------------------------------- exact test


class CheckedLazy(Mapping):
    """A lazy WeightMap (e.g. memory-mapped files) whose tensors are checked when read, not up front.

    Keys are checked at once; each value goes through ``check_matrix`` on
    access, so a block-by-block test never holds more than the block at hand.
    ``shape_of(key)`` and the map's degenerate verdicts (``degenerate``, see
    ``_validation.verdicts_of``) pass through. A map that carries no verdicts
    has each tensor judged as it is read, and a degenerate one is refused: the
    evidence is never built from it.
    """

    def __init__(self, weights: Mapping, name: str) -> None:
        for key in weights:
            if (
                not isinstance(key, tuple)
                or len(key) != 2
                or not isinstance(key[0], str)
                or not (key[1] is None or isinstance(key[1], int))
            ):
                raise TypeError(f"{name}: expected keys (role: str, block: int | None), got {key!r}")
        self._w, self._name = weights, name

    def __getitem__(self, key):
        check = check_matrix if self.degenerate is not None else check_informative
        return check(self._w[key], f"{self._name}[{key[0]!r}, {key[1]!r}]")

    @property
    def degenerate(self) -> Mapping | None:
        return verdicts_of(self._w)

    def __iter__(self):
        return iter(self._w)

    def __len__(self) -> int:
        return len(self._w)

    def __contains__(self, key) -> bool:
        return key in self._w

    def shape_of(self, key) -> tuple[int, ...]:
        return _shape(self._w, key)


def _as_weight_map(weights: Any, name: str) -> Mapping:
    """``check_weight_map`` for in-memory dicts; a lazily checked view for any other Mapping."""
    if isinstance(weights, Mapping) and not isinstance(weights, dict) and len(weights) > 0:
        return weights if isinstance(weights, CheckedLazy) else CheckedLazy(weights, name)
    return check_weight_map(weights, name)


def _shape(weights: Mapping, key) -> tuple[int, ...]:
    """A tensor's shape without reading it when the map can tell (``shape_of``)."""
    if hasattr(weights, "shape_of"):
        return tuple(weights.shape_of(key))
    return tuple(weights[key].shape)


def _unit_keys(weights: Mapping) -> dict[int, tuple[str, int]]:
    """Each block's key whose rows are hidden units: ``mlp.up`` (GLU) else ``mlp.in``."""
    rows: dict[int, tuple[str, int]] = {}
    for role, block in weights:
        if block is not None and (role == "mlp.up" or (role == "mlp.in" and (("mlp.up", block) not in weights))):
            rows[block] = (role, block)
    return dict(sorted(rows.items()))


def _exact_obstacle(a: Mapping, b: Mapping) -> str | None:
    """Why the exact test cannot run on these two WeightMaps, or ``None`` when it can."""
    ua = {blk: _shape(a, k) for blk, k in _unit_keys(a).items()}
    ub = {blk: _shape(b, k) for blk, k in _unit_keys(b).items()}
    if not ua or not ub:
        return "a model has no mlp.up or mlp.in weights"
    da = {t[1] for t in ua.values()}
    db = {t[1] for t in ub.values()}
    if len(da) != 1 or da != db:
        return f"no shared residual basis (hidden sizes {sorted(da)} and {sorted(db)})"
    if min(t[0] for t in [*ua.values(), *ub.values()]) < 3:
        return "an MLP block has fewer than 3 hidden units"
    return None


def _residual_tests(a: Mapping, b: Mapping, max_units: int | None, max_features: int | None,
                    gen: np.random.Generator):
    """phi_U and the aligned test on the residual dimensions, one tensor at a time.

    Each model's features are its embedding and attention tensors with one
    row per residual dimension, each tensor's rows scaled to unit norm (every
    tensor weighs the same) and at most ``max_features`` coordinates per
    tensor, the same random ones in both models. The cosine of two
    concatenated rows is the mean over tensors of the per-tensor cosines, so
    the cross-cosine rows the tests need are accumulated tensor by tensor and
    no concatenation is ever built. Returns ``None`` when no tensor qualifies.
    """
    keys = []
    for key in sorted(set(a) & set(b), key=lambda k: (k[0], -1 if k[1] is None else k[1])):
        if key[0] in _RESIDUAL_TEST_ROLES and _shape(a, key) == _shape(b, key):
            keys.append(key)
    dims = {_shape(a, k)[_RESIDUAL_AXIS[k[0]]] for k in keys}
    if not keys or len(dims) != 1 or min(dims) < 3:
        return None
    d = dims.pop()
    rows = sample_rows(d, max_units, gen)
    idx = sample_rows(d, max_units, gen)
    all_rows = len(rows) == d
    acc_m = torch.zeros(len(rows), d, dtype=torch.float64)
    acc_al = None if all_rows else torch.zeros(len(idx), len(idx), dtype=torch.float64)
    rows_t, idx_t = torch.from_numpy(rows), torch.from_numpy(idx)
    for key in keys:
        ta, tb = a[key], b[key]
        if _RESIDUAL_AXIS[key[0]] == 1:
            ta, tb = ta.T, tb.T
        if max_features is not None and ta.shape[1] > max_features:
            cols = torch.from_numpy(np.sort(gen.choice(ta.shape[1], size=max_features, replace=False)))
            ta, tb = ta[:, cols], tb[:, cols]
        ta = ta / ta.norm(dim=1, keepdim=True).clamp_min(1e-12)
        tb = tb / tb.norm(dim=1, keepdim=True).clamp_min(1e-12)
        acc_m += (ta if all_rows else ta[rows_t]) @ tb.T
        if acc_al is not None:
            acc_al += ta[idx_t] @ tb[idx_t].T
        del ta, tb
    acc_m /= len(keys)
    m = matching_result_from_similarities(acc_m.float(), rows)
    al = aligned_result_from_cosines(acc_m[idx_t][:, idx_t] if acc_al is None else acc_al / len(keys))
    return m, al


def _phi_u_block(x: torch.Tensor, y: torch.Tensor, block_a: int, block_b: int, max_units: int | None,
                 gen: np.random.Generator) -> BlockResult:
    m = unit_matching_test(x, y, max_units=max_units, rng=gen)
    lp, z, alp = m.p_value_log10, None, None
    if x.shape == y.shape:
        al = aligned_cosine_test(x, y, max_units=max_units, rng=gen)
        lp, z, alp = cauchy_combine([m.p_value_log10, al.p_value_log10]), al.z, al.p_value_log10
    kept = None
    if x.shape[0] != y.shape[0]:
        kept = m.units_b if x.shape[0] < y.shape[0] else m.units_a
    return BlockResult(block_a, block_b, "phi_u", m.statistic, 10.0**lp, lp, m.n_units, m.p_value_log10, z, alp, kept)


def exact_test(
    a: WeightMap,
    b: WeightMap,
    *,
    alpha: float = 0.01,
    max_units: int | None = None,
    max_features: int | None = 4096,
    rng: Any = None,
) -> IndependenceResult:
    """Exact test of independence when both models share a residual basis (weights only).

    Null: independent initializations, whose distribution is invariant under
    permuting each MLP block's hidden units and the residual dimension.

    Equal depths pair block ``l`` with block ``l`` and Fisher-combine the
    blocks with the residual test. Different depths test every block pair,
    Bonferroni-correct over them (valid under any dependence) and report the
    best monotone block map.

    Parameters
    ----------
    a, b : WeightMap
        ``(role, block) -> [out, in]`` float32 matrices.
    alpha : float
    max_units : int or None
        Units (rows) matched per block and residual dimensions matched; the
        test stays exact (sampled rows are still exchangeable).
    max_features : int or None
        Coordinates per tensor in the residual test's features.
    rng : None, int or numpy.random.Generator

    Returns
    -------
    IndependenceResult with ``method == "exact"``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> a = {("mlp.up", i): torch.randn(32, 16, generator=g) for i in range(2)}
    >>> b = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in a.items()}
    >>> exact_test(a, b).dependent
    True
    """
    a, b = _as_weight_map(a, "a"), _as_weight_map(b, "b")
    alpha = check_alpha(alpha)
    (a, b), degenerate = drop_degenerate(a, b)
    if not a or not b:
        return _no_evidence("exact", alpha, degenerate)
    max_units = check_optional_positive_int(max_units, "max_units", minimum=3)
    max_features = check_optional_positive_int(max_features, "max_features")
    gen = check_rng(rng)
    obstacle = _exact_obstacle(a, b)
    if obstacle is not None:
        raise ValueError(f"a and b: expected models with a shared residual basis for the exact test, got {obstacle}")
    return _exact_checked(a, b, alpha, max_units, max_features, gen, list(degenerate))


def _exact_checked(a: Mapping, b: Mapping, alpha: float, max_units: int | None, max_features: int | None,
                   gen: np.random.Generator, notes: list[str]) -> IndependenceResult:
    """:func:`exact_test` on checked, informative models that share a residual basis.

    The residual test draws from the generator before the blocks do: keep
    that order, a seeded run's p-values depend on it. Only the components
    built over the blocks enter the final Cauchy combination; the residual
    test's own p-values are folded into them.
    """
    residual = _residual_components(a, b, max_units, max_features, gen)
    if not residual:
        notes.append("no embedding or attention tensor shared: residual test skipped")
    ua, ub = _unit_keys(a), _unit_keys(b)
    if list(ua) == list(ub):
        blocks, block_map, combined = _exact_same_depth(a, b, ua, ub, residual, max_units, gen)
    else:
        blocks, block_map, combined = _exact_all_pairs(a, b, ua, ub, residual, max_units, gen)
        notes.append(_depths_note(len(ua), len(ub)))
    if len(combined) > 1:
        notes.append(f"p is the Cauchy combination of {', '.join(t.name for t in combined)}")
    lp = cauchy_combine([t.p_value_log10 for t in combined])
    decider = min(combined, key=lambda t: t.p_value_log10)
    return IndependenceResult(
        statistic=decider.statistic, p_value=10.0**lp, p_value_log10=lp, method="exact",
        dependent=rejects(lp, alpha), alpha=alpha, null=_NULL, blocks=tuple(blocks),
        block_map=block_map, tests=tuple(residual + combined), notes=tuple(notes),
    )


def _residual_components(a: Mapping, b: Mapping, max_units: int | None, max_features: int | None,
                         gen: np.random.Generator) -> list[ComponentResult]:
    """The residual test's matching and aligned components, in that order; none when no tensor qualifies.

    They are listed among the result's ``tests``, and the block components
    fold their p-values in (Fisher at equal depths, Bonferroni at different ones).
    """
    residual = _residual_tests(a, b, max_units, max_features, gen)
    if residual is None:
        return []
    m, al = residual
    return [
        _component("residual_matching", m.statistic, m.p_value_log10,
                   "residual dimensions exchangeable (matching vs identity)"),
        _component("residual_aligned", al.z, al.p_value_log10,
                   "residual dimensions exchangeable (aligned cosine, normal approximation)"),
    ]


def _exact_same_depth(a: Mapping, b: Mapping, ua: dict[int, tuple[str, int]], ub: dict[int, tuple[str, int]],
                      residual: list[ComponentResult], max_units: int | None,
                      gen: np.random.Generator) -> tuple[list[BlockResult], tuple, list[ComponentResult]]:
    """Equal depths: block ``l`` against block ``l``, Fisher-combined with the residual test.

    Given the residual permutation the block p-values are independent
    uniforms and the residual statistic uses no MLP tensor, so Fisher's
    combination is exact. Matching and aligned statistics read the same
    matrices, so each is Fisher-combined on its own (``phi_u``,
    ``aligned``) and the two are merged later by the Cauchy combination.
    """
    blocks = [_phi_u_block(a[ua[i]], b[ub[i]], i, i, max_units, gen) for i in ua]
    matching_lps = [c.p_value_log10 for c in residual[:1]] + [r.matching_p_value_log10 for r in blocks]
    aligned_lps = [c.p_value_log10 for c in residual[1:]]
    aligned_lps += [r.aligned_p_value_log10 for r in blocks if r.aligned_p_value_log10 is not None]
    combined = [_component("phi_u", float(np.mean([r.statistic for r in blocks])), fisher_combine(matching_lps),
                           "hidden units of each block and residual dimensions exchangeable (Fisher)")]
    if aligned_lps:
        combined.append(_component("aligned", float(np.mean([r.aligned_z or 0.0 for r in blocks])),
                                   fisher_combine(aligned_lps),
                                   "rows exchangeable; aligned cosine per block and residual (Fisher)"))
    return blocks, tuple((i, i) for i in ua), combined


def _exact_all_pairs(a: Mapping, b: Mapping, ua: dict[int, tuple[str, int]], ub: dict[int, tuple[str, int]],
                     residual: list[ComponentResult], max_units: int | None,
                     gen: np.random.Generator) -> tuple[list[BlockResult], tuple, list[ComponentResult]]:
    """Different depths: every block pair tested, Bonferroni over the pairs, the best monotone block map.

    Which block of ``b`` corresponds to a block of ``a`` is unknown, so no
    pairing can be fixed in advance; Bonferroni is valid whatever the
    dependence between the pairs. The residual test stays a component of its
    own (its matching and aligned p-values Bonferroni-combined). One block of
    ``a`` is held in memory while ``b``'s blocks are read in turn.
    """
    grid = {}
    for i in ua:
        x = a[ua[i]]
        for j in ub:
            grid[i, j] = _phi_u_block(x, b[ub[j]], i, j, max_units, gen)
        del x
    matrix, block_map = grid_block_map(grid, ua, ub)
    combined = [_component("phi_u", float(max(r.statistic for r in grid.values())), bonferroni_combine(matrix.ravel()),
                           f"hidden units exchangeable; Bonferroni over {matrix.size} block pairs")]
    if residual:
        combined.append(_component("residual", residual[0].statistic,
                                   bonferroni_combine([c.p_value_log10 for c in residual]),
                                   "residual dimensions exchangeable (matching and aligned, Bonferroni)"))
    return [grid[pair] for pair in block_map], block_map, combined


def _depths_note(n_a: int, n_b: int) -> str:
    """The note of a test that paired every block of one model with every block of the other."""
    return f"depths differ ({n_a} and {n_b} blocks): every block pair tested"


def _component(name: str, statistic: float, lp: float, null: str) -> ComponentResult:
    return ComponentResult(name, statistic, 10.0**lp, lp, null)


# ---------------------------------------------------------------- phi_MATCH


def match_test(
    activations_a: Mapping[int, BlockActivations],
    activations_b: Mapping[int, BlockActivations],
    *,
    alpha: float = 0.01,
    max_units: int | None = None,
    rng: Any = None,
) -> IndependenceResult:
    """phi_MATCH over all blocks: robust to permutations, rotations, sign flips, pruning.

    Null (empirical): the two views' matchings are unrelated in every block,
    independently across blocks, so block p-values are Fisher-combined when
    depths match; otherwise every block pair is tested, Bonferroni-corrected,
    and the best monotone block map is reported.

    Parameters
    ----------
    activations_a, activations_b : mapping block -> BlockActivations
        Each model's activations over the same input tokens.
    alpha : float
    max_units : int or None
    rng : None, int or numpy.random.Generator

    Returns
    -------
    IndependenceResult with ``method == "match"``.
    """
    alpha = check_alpha(alpha)
    max_units = check_optional_positive_int(max_units, "max_units", minimum=3)
    gen = check_rng(rng)
    _check_activation_maps(activations_a, activations_b)
    (activations_a, activations_b), degenerate = drop_degenerate(
        activations_a, activations_b, names=("activations_a", "activations_b"))
    if not activations_a or not activations_b:
        return _no_evidence("match", alpha, degenerate)
    ba, bb = sorted(activations_a), sorted(activations_b)
    notes = list(degenerate)
    if ba == bb:
        blocks = [_phi_match_block(activations_a, activations_b, i, i, max_units, gen) for i in ba]
        block_map = tuple((i, i) for i in ba)
        components = [ComponentResult("phi_match", r.statistic, r.p_value, r.p_value_log10,
                                      f"block {r.block_a}: matchings of the two views unrelated") for r in blocks]
    else:
        blocks, block_map, components = _match_all_pairs(activations_a, activations_b, ba, bb, max_units, gen)
        notes.append(_depths_note(len(ba), len(bb)))
    return _result(components, "match", alpha, blocks=blocks, block_map=block_map, notes=notes)


def _check_activation_maps(activations_a: Any, activations_b: Any) -> None:
    """Raise unless both are non-empty mappings (of BlockActivations, when in memory).

    A lazy mapping (activations computed or read block by block) is not read
    here: each of its blocks is checked as it is read (:func:`_phi_match_block`).
    """
    for name, acts in (("activations_a", activations_a), ("activations_b", activations_b)):
        if not isinstance(acts, Mapping) or not acts or (
            isinstance(acts, dict) and not all(isinstance(v, BlockActivations) for v in acts.values())
        ):
            raise TypeError(f"{name}: expected a non-empty mapping block -> BlockActivations, got {type(acts).__name__}")


def _phi_match_block(activations_a: Mapping, activations_b: Mapping, i: int, j: int, max_units: int | None,
                     gen: np.random.Generator) -> BlockResult:
    """phi_MATCH on block ``i`` of a against block ``j`` of b, the blocks type-checked as they are read.

    When widths differ, ``kept_units`` are the wider block's units that both
    views agreed on.
    """
    x, y = activations_a[i], activations_b[j]
    for name, v in (("activations_a", x), ("activations_b", y)):
        if not isinstance(v, BlockActivations):
            raise TypeError(f"{name}: expected a mapping block -> BlockActivations, got {type(v).__name__}")
    r = match_consistency_test(x, y, max_units=max_units, rng=gen)
    kept = None
    if x.n_units != y.n_units:
        kept = r.units_b if x.n_units < y.n_units else r.units_a
    return BlockResult(i, j, "phi_match", r.statistic, r.p_value, r.p_value_log10, r.n_units,
                       matching_p_value_log10=r.p_value_log10, kept_units=kept)


def _match_all_pairs(activations_a: Mapping, activations_b: Mapping, ba: list[int], bb: list[int],
                     max_units: int | None,
                     gen: np.random.Generator) -> tuple[list[BlockResult], tuple, list[ComponentResult]]:
    """Different depths: phi_MATCH on every block pair, Bonferroni over the pairs, the best monotone block map.

    No pairing of blocks can be fixed in advance; Bonferroni is valid
    whatever the dependence between the pairs.
    """
    grid = {(i, j): _phi_match_block(activations_a, activations_b, i, j, max_units, gen) for i in ba for j in bb}
    matrix, block_map = grid_block_map(grid, ba, bb)
    lp = bonferroni_combine(matrix.ravel())
    components = [ComponentResult("phi_match", float(max(r.statistic for r in grid.values())), 10.0**lp, lp,
                                  f"matchings unrelated; Bonferroni over {matrix.size} block pairs")]
    return [grid[pair] for pair in block_map], block_map, components


# ---------------------------------------------------------------- PERMTEST


def apply_null_symmetry(weights: WeightMap, rng: Any = None) -> dict[tuple[str, int | None], torch.Tensor]:
    """A random element of the null's symmetry group applied to a WeightMap.

    One uniform permutation of each block's MLP hidden units (rows of
    gate/up/in, columns of down/out) and one of the residual dimension,
    shared by every tensor (columns of embeddings, q/k/v, gate/up/in and the
    LM head; rows of o, down and out). Tensors of other roles are unchanged.
    The model computes the same function up to that relabelling.
    """
    w = check_weight_map(weights, "weights")
    gen = check_rng(rng)
    residual: dict[int, torch.Tensor] = {}
    hidden: dict[tuple[int | None, int], torch.Tensor] = {}

    def perm(cache: dict, key: Any, n: int) -> torch.Tensor:
        if key not in cache:
            cache[key] = torch.from_numpy(gen.permutation(n))
        return cache[key]

    out = {}
    for (role, block), t in sorted(w.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])):
        if role in _RESIDUAL_AXIS:
            ax = _RESIDUAL_AXIS[role]
            t = t.index_select(ax, perm(residual, t.shape[ax], t.shape[ax]))
        if role in _HIDDEN_AXIS:
            ax = _HIDDEN_AXIS[role]
            t = t.index_select(ax, perm(hidden, (block, t.shape[ax]), t.shape[ax]))
        out[role, block] = t
    return out


def aligned_weight_similarity(a: WeightMap, b: WeightMap) -> float:
    """Mean cosine between same-index rows, over every tensor the two models share with equal shape.

    Higher is closer; 0 on average for independent models.

    Examples
    --------
    >>> w = {("attn.q", 0): torch.eye(4)}
    >>> aligned_weight_similarity(w, w)
    1.0
    """
    a = check_weight_map(a, "a")
    b = check_weight_map(b, "b")
    shared = [k for k in a if k in b and a[k].shape == b[k].shape]
    if not shared:
        raise ValueError("a and b: expected at least one (role, block) with equal shapes in both, got none")
    sims = [float(torch.nn.functional.cosine_similarity(a[k], b[k], dim=1).mean()) for k in shared]
    return float(np.mean(sims))


def permutation_test(
    a: WeightMap,
    b: WeightMap,
    *,
    statistic: Callable[[WeightMap, WeightMap], float] = aligned_weight_similarity,
    n_permutations: int = 99,
    alpha: float = 0.01,
    rng: Any = None,
) -> IndependenceResult:
    """PERMTEST: compare ``statistic(a, b)`` with its values on randomly relabelled copies of ``a``.

    Null: ``a``'s weight distribution is invariant under the symmetry group
    of :func:`apply_null_symmetry`, and ``b`` is independent of ``a``. Then
    ``p = (1 + #{t : stat(pi_t(a), b) >= stat(a, b)}) / (T + 1)`` is exact
    (super-uniform), but never below ``1 / (T + 1)``.

    Parameters
    ----------
    a, b : WeightMap
    statistic : callable (WeightMap, WeightMap) -> float
        Higher means more similar.
    n_permutations : int
        ``T``; costs ``T`` evaluations of ``statistic``.
    alpha : float
    rng : None, int or numpy.random.Generator

    Returns
    -------
    IndependenceResult with ``method == "permtest"``.
    """
    a = check_weight_map(a, "a")
    b = check_weight_map(b, "b")
    if not callable(statistic):
        raise TypeError(f"statistic: expected a callable (a, b) -> float, got {type(statistic).__name__}")
    n = check_positive_int(n_permutations, "n_permutations")
    alpha = check_alpha(alpha)
    (a, b), degenerate = drop_degenerate(a, b)
    if not a or not b:
        return _no_evidence("permtest", alpha, degenerate)
    gen = check_rng(rng)
    observed = float(statistic(a, b))
    exceed = sum(float(statistic(apply_null_symmetry(a, gen), b)) >= observed for _ in range(n))
    lp = math.log10((1 + exceed) / (n + 1))
    comp = ComponentResult("permtest", observed, 10.0**lp, lp,
                           f"a's weights invariant under hidden and residual permutations; T = {n}")
    notes = [*degenerate, f"PERMTEST floor: p >= 1/{n + 1}"]
    return _result([comp], "permtest", alpha, notes=notes)


# ---------------------------------------------------------------- evidence per tensor


@dataclass(frozen=True)
class TensorEvidence(Serializable):
    """Whether one tensor looks shared between two models.

    ``axis`` is the axis whose entries are exchangeable under the null:
    ``"residual"`` for embeddings and attention, ``"hidden"`` for MLP tensors.
    Each p-value is valid on its own; tensors tested under the one residual
    permutation are not independent, so do not combine them.
    """

    role: str
    block: int | None
    axis: str
    matching_statistic: float
    matching_p_value_log10: float
    aligned_z: float
    aligned_p_value_log10: float


def tensor_evidence(
    a: WeightMap, b: WeightMap, *, max_units: int | None = 1024, rng: Any = None
) -> tuple[TensorEvidence, ...]:
    """phi_U matching and the aligned test on every tensor pair of equal shape.

    Shows which tensors two models share (e.g. embeddings and some attention
    matrices of a model grafted from another).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> e = torch.randn(50, 8, generator=g)
    >>> a = {("embed.tokens", None): e, ("attn.q", 0): torch.randn(8, 8, generator=g)}
    >>> b = {("embed.tokens", None): e.clone(), ("attn.q", 0): torch.randn(8, 8, generator=g)}
    >>> [round(t.aligned_z) > 3 for t in tensor_evidence(a, b)]
    [False, True]
    """
    a = check_weight_map(a, "a")
    b = check_weight_map(b, "b")
    (a, b), _ = drop_degenerate(a, b)  # a degenerate tensor is evidence of nothing
    max_units = check_optional_positive_int(max_units, "max_units", minimum=3)
    gen = check_rng(rng)
    out = []
    for key in sorted(set(a) & set(b), key=lambda k: (k[0], -1 if k[1] is None else k[1])):
        role, block = key
        if a[key].shape != b[key].shape or role not in _RESIDUAL_AXIS:
            continue
        axis, ax = ("hidden", _HIDDEN_AXIS[role]) if role in _HIDDEN_AXIS else ("residual", _RESIDUAL_AXIS[role])
        x, y = (a[key], b[key]) if ax == 0 else (a[key].T, b[key].T)
        if x.shape[0] < 3:
            continue
        m = unit_matching_test(x, y, max_units=max_units, rng=gen)
        al = aligned_cosine_test(x, y, max_units=max_units, rng=gen)
        out.append(TensorEvidence(role, block, axis, m.statistic, m.p_value_log10, al.z, al.p_value_log10))
    return tuple(out)


def _shape_test(a: WeightMap, b: WeightMap, *, alpha: float, max_units: int | None, rng: np.random.Generator,
                obstacle: str | None) -> IndependenceResult | None:
    """Last resort for models the role map does not know: tensors paired by name and shape.

    Each equal-shape matrix gets the aligned test with its rows taken as
    exchangeable, which holds at an i.i.d. initialization but is not backed by
    a known symmetry of the architecture, so the p-value is approximate; the
    tensors are Bonferroni-combined (valid under any dependence).
    """
    comps = []
    for key in sorted(set(a) & set(b), key=str):
        x, y = a[key], b[key]
        if x.shape != y.shape or x.shape[0] < 3:
            continue
        al = aligned_cosine_test(x, y, max_units=max_units, rng=rng)
        comps.append(_component(f"aligned:{key[0]}", al.z, al.p_value_log10,
                                "rows exchangeable (assumed: architecture unknown)"))
    if not comps:
        return None
    lp = bonferroni_combine([c.p_value_log10 for c in comps])
    decider = min(comps, key=lambda c: c.p_value_log10)
    return IndependenceResult(
        statistic=decider.statistic, p_value=10.0**lp, p_value_log10=lp, method="shape",
        dependent=rejects(lp, alpha), alpha=alpha, null=_NULL, tests=tuple(comps),
        notes=(f"exact test not applicable: {obstacle}" if obstacle else "exact test not applicable",
               f"weights-only: {len(comps)} tensor(s) paired by name and shape, rows assumed exchangeable "
               "(approximate p-value), Bonferroni-combined"),
    )


# ---------------------------------------------------------------- entry point


def independence_test(
    a: WeightMap, b: WeightMap, *, method: str = "auto",
    activations_a: Mapping[int, BlockActivations] | None = None,
    activations_b: Mapping[int, BlockActivations] | None = None,
    alpha: float = 0.01, max_units: int | None = None, max_features: int | None = 4096,
    n_permutations: int = 99, statistic: Callable[[WeightMap, WeightMap], float] = aligned_weight_similarity,
    rng: Any = None, sequential: bool = False, stop_log10: float = -12.0, look_units: int = 256,
) -> IndependenceResult:
    """Test whether two models' weights are independent; pick the method automatically.

    Null: the two models were trained from independent initializations.
    ``method="auto"`` runs the exact test when the residual bases align and
    phi_MATCH when activations are given. When both run, the reported
    p-value is their Cauchy combination (a permuted copy defeats the exact
    test but not phi_MATCH; the combination keeps the smaller p's power and
    stays calibrated), and ``method`` names the test that decided.

    Parameters
    ----------
    a, b : WeightMap
        ``(role, block) -> [out, in]`` float32 matrices of each model.
    method : {"auto", "exact", "match", "permtest"}
    activations_a, activations_b : mapping block -> BlockActivations, optional
        Both or neither; over the same input tokens.
    alpha : float
        Level for ``dependent``.
    max_units, max_features : int or None
        Hidden units sampled per block (and residual dimensions), for speed;
        coordinates per tensor in the exact residual test.
    n_permutations, statistic : int, callable
        PERMTEST's ``T`` and statistic (higher = more similar).
    rng : None, int or numpy.random.Generator
    sequential, stop_log10, look_units : bool, float < 0, int
        Sequential testing (module docstring): stop once a look's corrected
        ``log10 p`` is below ``stop_log10``; units per block (and residual
        dimensions) matched at the looks.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> a = {("mlp.up", i): torch.randn(32, 16, generator=g) for i in range(2)}
    >>> b = {("mlp.up", i): torch.randn(32, 16, generator=g) for i in range(2)}
    >>> r = independence_test(a, b)
    >>> r.method, r.dependent, r.notes[-1]
    ('exact', False, 'weights-only: no forward pass available')
    """
    check_choice(method, "method", METHODS)
    alpha = check_alpha(alpha)
    a, b = _as_weight_map(a, "a"), _as_weight_map(b, "b")
    if (activations_a is None) != (activations_b is None):
        raise ValueError("activations_a and activations_b: expected both or neither, got only one")
    options = _Options(method, alpha, max_units, max_features, n_permutations, statistic, rng, sequential,
                       stop_log10, look_units)
    return _informative_test(a, b, activations_a, activations_b, options)


@dataclass(frozen=True)
class _Options:
    """:func:`independence_test`'s options, carried whole through its steps and into its retry."""

    method: str
    alpha: float
    max_units: int | None
    max_features: int | None
    n_permutations: int
    statistic: Callable[[WeightMap, WeightMap], float]
    rng: Any
    sequential: bool
    stop_log10: float
    look_units: int

    def keywords(self) -> dict[str, Any]:
        """The options as :func:`independence_test`'s keyword arguments (the values themselves, not copies)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _informative_test(a: Mapping, b: Mapping, acts_a: Mapping | None, acts_b: Mapping | None,
                      options: _Options) -> IndependenceResult:
    """Drop degenerate tensors and activations, then test what is left, saying what was dropped.

    A degenerate tensor (see ``_validation.degenerate_reason``) matches
    anything and is evidence of nothing; activations that lose every block
    leave a weights-only test. After a drop the whole test is re-entered on
    what is left, so the remaining maps are checked as a caller's would be.
    """
    (a, b), degenerate = drop_degenerate(a, b)
    if acts_a is not None and acts_b is not None:
        (acts_a, acts_b), dropped = drop_degenerate(acts_a, acts_b, names=("activations_a", "activations_b"))
        degenerate += dropped
        if not acts_a or not acts_b:
            acts_a = acts_b = None
    if not degenerate:
        return _checked_test(a, b, acts_a, acts_b, options)
    if not a or not b:
        return _no_evidence(options.method, options.alpha, degenerate)
    return _with_notes(independence_test(a, b, activations_a=acts_a, activations_b=acts_b, **options.keywords()),
                       degenerate)


def _checked_test(a: Mapping, b: Mapping, acts_a: Mapping | None, acts_b: Mapping | None,
                  options: _Options) -> IndependenceResult:
    """PERMTEST, sequential testing, or one run of the exact and/or match test, on checked informative inputs."""
    gen = check_rng(options.rng)
    obstacle = _exact_obstacle(a, b)
    if options.method == "permtest":
        return permutation_test(a, b, statistic=options.statistic, n_permutations=options.n_permutations,
                                alpha=options.alpha, rng=gen)
    if options.sequential:
        return _sequential_test(a, b, acts_a, acts_b, options, gen, obstacle)
    return _exact_or_match(a, b, acts_a, acts_b, options, gen, obstacle)


def _exact_or_match(a: Mapping, b: Mapping, acts_a: Mapping | None, acts_b: Mapping | None, options: _Options,
                    gen: np.random.Generator, obstacle: str | None) -> IndependenceResult:
    """The exact test, phi_MATCH, or both (Cauchy-combined), as ``method`` and the inputs allow.

    ``"auto"`` runs the exact test alone without activations, phi_MATCH
    when the exact test cannot run, and both otherwise; an exact test run
    without activations says so in its notes.
    """
    has_acts = acts_a is not None
    if options.method == "exact" or (options.method == "auto" and not has_acts and obstacle is None):
        result = exact_test(a, b, alpha=options.alpha, max_units=options.max_units,
                            max_features=options.max_features, rng=gen)
        if not has_acts:
            return _with_notes(result, ("weights-only: no forward pass available",))
        return result
    if options.method == "match" or obstacle is not None:
        if not has_acts:
            return _without_activations(a, b, options, gen, obstacle)
        result = match_test(acts_a, acts_b, alpha=options.alpha, max_units=options.max_units, rng=gen)
        return _with_notes(result, (f"exact test not applicable: {obstacle}",)) if obstacle else result
    return _exact_and_match(a, b, acts_a, acts_b, options, gen)


def _without_activations(a: Mapping, b: Mapping, options: _Options, gen: np.random.Generator,
                         obstacle: str | None) -> IndependenceResult:
    """phi_MATCH was called for but no activations were given: the shape test under ``"auto"``, else raise.

    The shape test is the last resort of ``"auto"`` for architectures the
    exact test cannot handle; an explicit ``method="match"`` (or no tensor
    pair of equal shape) needs activations and says so.
    """
    if options.method == "auto":
        shaped = _shape_test(a, b, alpha=options.alpha, max_units=options.max_units, rng=gen, obstacle=obstacle)
        if shaped is not None:
            return shaped
    why = f"the exact test cannot run ({obstacle})" if obstacle else "method='match'"
    raise ValueError(f"activations_a and activations_b: expected activations since {why}, got none")


def _exact_and_match(a: Mapping, b: Mapping, acts_a: Mapping, acts_b: Mapping, options: _Options,
                     gen: np.random.Generator) -> IndependenceResult:
    """Both tests, their p-values merged by the Cauchy combination; the smaller p's test decides.

    A permuted copy defeats the exact test but not phi_MATCH, so neither is
    dropped; the Cauchy combination keeps the smaller p's power and stays
    calibrated.
    """
    exact = exact_test(a, b, alpha=options.alpha, max_units=options.max_units, max_features=options.max_features,
                       rng=gen)
    match = match_test(acts_a, acts_b, alpha=options.alpha, max_units=options.max_units, rng=gen)
    decider = exact if exact.p_value_log10 <= match.p_value_log10 else match
    lp = cauchy_combine([exact.p_value_log10, match.p_value_log10])
    return IndependenceResult(
        statistic=decider.statistic, p_value=10.0**lp, p_value_log10=lp, method=decider.method,
        dependent=rejects(lp, options.alpha), alpha=options.alpha, null=_NULL, blocks=decider.blocks,
        block_map=decider.block_map, tests=exact.tests + match.tests,
        notes=decider.notes + (
            f"exact and match both run (log10 p {exact.p_value_log10:.4g} and {match.p_value_log10:.4g}); "
            f"p is their Cauchy combination",
        ),
    )


def _with_notes(result: IndependenceResult, notes: tuple[str, ...]) -> IndependenceResult:
    return replace(result, notes=result.notes + notes)


# ---------------------------------------------------------------- sequential testing


class _ActsView(Mapping):
    """Blocks ``< n`` of an activation mapping, read through it lazily."""

    def __init__(self, acts: Mapping, n: int) -> None:
        self._acts, self._keys = acts, [k for k in acts if k < n]

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        return self._acts[key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def look_schedule(n_blocks: int) -> tuple[int, ...]:
    """The pre-set looks of sequential testing: after 1, 2, 4, 8, ... blocks and after the last.

    Examples
    --------
    >>> look_schedule(32), look_schedule(6), look_schedule(1)
    ((1, 2, 4, 8, 16, 32), (1, 2, 4, 6), (1,))
    """
    n_blocks = check_positive_int(n_blocks, "n_blocks")
    looks, n = [], 1
    while n < n_blocks:
        looks.append(n)
        n *= 2
    return tuple(looks) + (n_blocks,)


def _sequential_test(a: Mapping, b: Mapping, acts_a: Mapping | None, acts_b: Mapping | None, options: _Options,
                     gen: np.random.Generator, obstacle: str | None) -> IndependenceResult:
    """Sequential testing: cheap looks first, the full test only when none settles it.

    The full test draws from a copy of the generator taken before the looks,
    so it sees the same draws as without them: a run that is not settled at
    the looks reports the plain test's p-value unchanged.
    """
    stop_log10 = options.stop_log10
    if not isinstance(stop_log10, (int, float)) or isinstance(stop_log10, bool) or not stop_log10 < 0:
        raise ValueError(f"stop_log10: expected a float < 0, got {stop_log10!r}")
    look_units = check_positive_int(options.look_units, "look_units", minimum=3)
    full_gen = copy.deepcopy(gen)
    checked = replace(options, stop_log10=float(stop_log10), look_units=look_units)
    seq = _sequential_looks(a, b, acts_a, acts_b, checked, obstacle, gen)
    if isinstance(seq, IndependenceResult):
        return seq
    full = independence_test(a, b, method=options.method, activations_a=acts_a, activations_b=acts_b,
                             alpha=options.alpha, max_units=options.max_units, max_features=options.max_features,
                             rng=full_gen)
    if seq is None:
        return full
    return replace(full, blocks_read=seq, notes=full.notes + (
        f"sequential: not settled at the looks, full test on all {seq} blocks",))


@dataclass(frozen=True)
class _LookPlan:
    """What the cheap looks run (``tests``: the exact test and/or phi_MATCH), on which blocks, at what size.

    ``blocks`` are the blocks the looks count (``a``'s, in the order the
    tests read them); ``looks`` the numbers of blocks read at each look;
    ``units`` and ``features`` the looks' ``max_units`` and ``max_features``.
    """

    use_exact: bool
    use_match: bool
    blocks: tuple[int, ...]
    same_depth: bool
    n_blocks: int
    looks: tuple[int, ...]
    units: int
    features: int

    @property
    def n_tests(self) -> int:
        return int(self.use_exact) + int(self.use_match)

    def corrected(self, p_value_log10: float) -> float:
        """A look's ``log10 p`` times the number of tests, times the ``K`` looks (the full test counted as one)."""
        return p_value_log10 + math.log10(self.n_tests) + math.log10(len(self.looks) + 1)


def _look_plan(a: Mapping, b: Mapping, acts_a: Mapping | None, acts_b: Mapping | None, options: _Options,
               obstacle: str | None) -> _LookPlan | None:
    """The looks for these models, or ``None`` when there are none (the caller then runs the full test alone).

    None when ``method="exact"`` cannot run (the full test says why), or
    when neither test applies or a model has no block to look at.
    """
    method, look_units = options.method, options.look_units
    use_exact = method == "exact" or (method == "auto" and obstacle is None)
    use_match = acts_a is not None and method in ("auto", "match")
    if method == "exact" and obstacle is not None:
        return None
    if use_exact:
        ka, kb = list(_unit_keys(a)), list(_unit_keys(b))
    elif use_match:
        ka, kb = sorted(acts_a), sorted(acts_b)
    else:
        return None
    if not ka or not kb:
        return None
    same_depth = ka == kb and ka == list(range(len(ka)))
    n_blocks = len(ka) if same_depth else max(len(ka), len(kb))
    # equal depths: looks after 1, 2, 4, ... blocks; different depths: one cheap look at every block pair
    # (localization needs them all), then the full test
    looks = look_schedule(n_blocks) if same_depth else (n_blocks,)
    cap = look_units if options.max_units is None else min(options.max_units, look_units)
    feats = 4 * look_units if options.max_features is None else min(options.max_features, 4 * look_units)
    return _LookPlan(use_exact, use_match, tuple(ka), same_depth, n_blocks, looks, cap, feats)


def _sequential_looks(a: Mapping, b: Mapping, acts_a: Mapping | None, acts_b: Mapping | None, options: _Options,
                      obstacle: str | None, gen: np.random.Generator) -> IndependenceResult | int | None:
    """Cheap looks of sequential testing.

    Returns the stopped result, or the number of blocks when no look
    settled it (the caller then runs the full test), or ``None`` when there
    is nothing to look at (see :func:`_look_plan`).

    At look ``k`` (first ``n_k`` blocks; models of different depths get one
    look, at every block pair) the look's p-value ``p_k`` is the exact test
    on those blocks, phi_MATCH on them, or, when both apply, ``2 min`` of the
    two (Bonferroni, valid under any dependence; the exact test runs first
    and phi_MATCH is skipped when the exact test alone already settles the
    look). Each ``p_k`` is a valid p-value for a fixed ``n_k``; with ``K``
    looks plus the full test, stopping when ``K p_k < tau`` and reporting
    ``K p_k`` is valid by Bonferroni over the looks whatever the dependence
    between them.
    """
    plan = _look_plan(a, b, acts_a, acts_b, options, obstacle)
    if plan is None:
        return None
    for n in plan.looks:
        parts = _look(a, b, acts_a, acts_b, plan, n, options, gen)
        decider = min(parts, key=lambda r: r.p_value_log10)
        lp = plan.corrected(decider.p_value_log10)
        if lp < options.stop_log10:
            return _stopped(plan, n, parts, decider, lp, options.alpha)
    return plan.n_blocks


def _look(a: Mapping, b: Mapping, acts_a: Mapping | None, acts_b: Mapping | None, plan: _LookPlan, n: int,
          options: _Options, gen: np.random.Generator) -> list[IndependenceResult]:
    """One look, at the first ``n`` blocks (every block when depths differ): the exact test, then phi_MATCH.

    phi_MATCH is skipped when the exact test alone already settles the look:
    it would only cost time, the look stops either way.
    """
    parts: list[IndependenceResult] = []
    va, vb = (BlockSubset(a, range(n)), BlockSubset(b, range(n))) if plan.same_depth else (a, b)
    if plan.use_exact:
        parts.append(exact_test(va, vb, alpha=options.alpha, max_units=plan.units, max_features=plan.features,
                                rng=gen))
    if plan.use_match and not (parts and plan.corrected(parts[0].p_value_log10) < options.stop_log10):
        xa, xb = (_ActsView(acts_a, n), _ActsView(acts_b, n)) if plan.same_depth else (acts_a, acts_b)
        parts.append(match_test(xa, xb, alpha=options.alpha, max_units=plan.units, rng=gen))
    return parts


def _stopped(plan: _LookPlan, n: int, parts: list[IndependenceResult], decider: IndependenceResult, lp: float,
             alpha: float) -> IndependenceResult:
    """The result of a look that settled the test: the decider's, at the corrected p-value, saying how it stopped."""
    how = "exact test" if parts[0] is decider and plan.use_exact else "match test"
    settled = plan.use_exact and plan.use_match and len(parts) == 1  # a match-only look ran no exact test
    skipped = "; phi_MATCH skipped (the exact test settled it)" if settled else ""
    if plan.same_depth:
        where = (f"stopped after {n} of {plan.n_blocks} blocks (looks after {', '.join(map(str, plan.looks))} "
                 f"blocks at {plan.units} units, then the full test)")
    else:
        where = f"settled by every block pair at {plan.units} units (then the full test)"
    note = (f"sequential: {where}, decided by the {how}{skipped}; p is Bonferroni over "
            f"{'the exact and match tests and ' if plan.n_tests > 1 else ''}the {len(plan.looks) + 1} looks")
    # equal depths map block i to block i: the map covers every block, read or not
    block_map = tuple((i, i) for i in plan.blocks) if plan.same_depth else decider.block_map
    return replace(decider, p_value=10.0**lp, p_value_log10=lp, dependent=rejects(lp, alpha),
                   notes=decider.notes + (note,), blocks_read=n, block_map=block_map)
