"""phi_MATCH: an independence test that survives output-preserving weight changes, and localization.

Permuting a fine-tuned model's hidden units, rotating its residual stream,
flipping unit signs or folding norm gains leaves its outputs unchanged but
breaks any test that compares units by index. phi_MATCH (Zhu et al., ICML
2025) instead compares two matchings with each other: in each MLP block the
units of model 1 are matched to those of model 2 once on one view of the
hidden units and once on a second view that moves with the same
permutation. Derived models agree on both matchings; independent ones do not.

The views, each a ``[units, inputs]`` matrix over the same input tokens:

- GLU blocks (Llama, Mistral, Qwen): gate activations ``G X`` and up
  activations ``U X``;
- plain blocks (GPT-2, BERT): pre-activations ``W_in X`` and ``D^T X`` with
  ``D`` the ``[hidden, intermediate]`` output projection and ``X`` the
  block's own MLP inputs; both have units as rows, and ``D^T X`` is
  unchanged by a rotation of the residual stream.

Similarities are ``|corr|`` so sign flips cannot hide a derivation; different
widths are a rectangular assignment (the same as zero-padding the narrower).
Its null is empirical, not exact: calibrate it on known-independent pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..serialize import Serializable
from ._validation import check_choice, check_informative, check_matrix, check_optional_positive_int, check_rng, json_float
from .matching import sample_narrower, cosine_similarity_matrix, match_units, spearman_identity_log10_p

__all__ = [
    "BlockActivations",
    "block_activations",
    "MatchConsistencyResult",
    "Localization",
    "match_consistency_test",
    "monotone_block_map",
    "grid_block_map",
    "localize",
]

_KINDS = ("glu", "plain")


@dataclass(frozen=True)
class BlockActivations:
    """Two views of one MLP block's hidden units over a fixed set of inputs.

    Attributes
    ----------
    kind : {"glu", "plain"}
    a : tensor of shape (h, N)
        Gate activations ``G X`` (GLU) or pre-activations ``W_in X`` (plain):
        one row per hidden unit, one column per input token.
    b : tensor of shape (h, N)
        Up activations ``U X`` (GLU) or ``D^T X`` (plain), same rows and columns.
    """

    kind: str
    a: torch.Tensor
    b: torch.Tensor

    def __post_init__(self) -> None:
        check_choice(self.kind, "kind", _KINDS)
        a = check_matrix(self.a, "a")
        b = check_matrix(self.b, "b")
        if a.shape != b.shape:
            raise ValueError(
                f"a and b: expected the same shape [units, inputs], got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)

    @property
    def n_units(self) -> int:
        return int(self.a.shape[0])

    @property
    def n_inputs(self) -> int:
        return int(self.a.shape[1])


def block_activations(views: Mapping[int, Sequence[Any]]) -> dict[int, BlockActivations]:
    """``{block: BlockActivations}`` from ``{block: (kind, a, b)}`` (the indexer's ``MlpViews``)."""
    return {block: BlockActivations(*v) for block, v in views.items()}


@dataclass(frozen=True)
class MatchConsistencyResult(Serializable):
    """phi_MATCH on one block pair.

    Attributes
    ----------
    statistic : float
        Spearman correlation between the two matchings (1 = they agree).
    p_value, p_value_log10 : float
        One-sided, under the idealised null that the two matchings are
        independent random injections (empirical for real models).
    n_units : int
        Units of the narrower block that were matched.
    agreement : float
        Fraction of those units that both views sent to the same unit.
    units_a, units_b : tuple of int
        Pairs both matchings agree on: for a pruned model, which units were kept.
    null : str
    """

    statistic: float
    p_value: float
    p_value_log10: float
    n_units: int
    agreement: float
    units_a: tuple[int, ...]
    units_b: tuple[int, ...]
    null: str = "the two views' matchings are independent (empirical null, calibrate on independent pairs)"


def _check_activations(x: Any, name: str) -> BlockActivations:
    if not isinstance(x, BlockActivations):
        raise TypeError(f"{name}: expected BlockActivations, got {type(x).__name__}")
    return x


def _check_block_pair(x: BlockActivations, y: BlockActivations) -> tuple[BlockActivations, BlockActivations]:
    """Both blocks checked: one kind, the same inputs, and no view whose activations are all tied.

    Tied activations make any matching look like the identity, so they are
    refused rather than tested.
    """
    x = _check_activations(x, "x")
    y = _check_activations(y, "y")
    if x.kind != y.kind:
        raise ValueError(f"x and y: expected the same block kind, got {x.kind!r} and {y.kind!r}")
    if x.n_inputs != y.n_inputs:
        raise ValueError(
            f"x and y: expected activations over the same inputs, got {x.n_inputs} and {y.n_inputs} columns"
        )
    for view, label in ((x.a, "x.a"), (x.b, "x.b"), (y.a, "y.a"), (y.b, "y.b")):
        check_informative(view, label)
    return x, y


def match_consistency_test(
    x: BlockActivations, y: BlockActivations, *, max_units: int | None = None, rng: Any = None
) -> MatchConsistencyResult:
    """phi_MATCH for one block of each model: do both views match units the same way?

    Null (idealised): the matching on view ``a`` and the matching on view
    ``b`` are unrelated random injections, as for independently initialised
    models; p is the one-sided Spearman p-value of their agreement. This null
    is approximate; its calibration is measured in the tests and the bench.

    Parameters
    ----------
    x, y : BlockActivations
        The same kind, over the same inputs (equal ``n_inputs``). Widths may
        differ: the narrower block's units are matched into the wider one.
    max_units : int or None
        Match only this many randomly chosen units of the narrower block.
    rng : None, int or numpy.random.Generator

    Returns
    -------
    MatchConsistencyResult

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> acts = BlockActivations("glu", torch.randn(30, 200, generator=g), torch.randn(30, 200, generator=g))
    >>> perm = torch.randperm(30, generator=g)
    >>> child = BlockActivations("glu", -acts.a[perm], acts.b[perm])
    >>> match_consistency_test(acts, child).p_value_log10 < -20
    True
    """
    x, y = _check_block_pair(x, y)
    max_units = check_optional_positive_int(max_units, "max_units", minimum=3)
    gen = check_rng(rng)
    swapped, sampled = sample_narrower(x.n_units, y.n_units, max_units, gen, names="x and y", unit="units")
    rows_m, cols_m = (y, x) if swapped else (x, y)
    rows = torch.from_numpy(sampled)
    first = match_units(cosine_similarity_matrix(rows_m.a[rows], cols_m.a, absolute=True, center=True))
    second = match_units(cosine_similarity_matrix(rows_m.b[rows], cols_m.b, absolute=True, center=True))
    r, lp = spearman_identity_log10_p(first, second)
    agree = first == second
    kept_rows = rows.numpy()[agree]
    kept_cols = first[agree]
    units_a, units_b = (kept_cols, kept_rows) if swapped else (kept_rows, kept_cols)
    return MatchConsistencyResult(
        statistic=r,
        p_value=10.0**lp,
        p_value_log10=lp,
        n_units=len(rows),
        agreement=float(agree.mean()),
        units_a=tuple(int(i) for i in units_a),
        units_b=tuple(int(j) for j in units_b),
    )


def monotone_block_map(log10_p: Any) -> tuple[tuple[int, int], ...]:
    """Best strictly increasing map of the shallower model's blocks into the deeper one's.

    Dynamic programming over the block-by-block matrix maximises the total
    evidence ``sum -log10 p`` over maps ``i -> j(i)`` with ``j`` strictly
    increasing (a pruned or layer-selected model keeps its blocks in order).

    Parameters
    ----------
    log10_p : array of shape (L_a, L_b)
        ``log10_p[i, j]`` compares block ``i`` of model a with block ``j`` of
        model b. When ``L_a > L_b`` model b's blocks are the ones mapped.

    Returns
    -------
    tuple of (block_a, block_b) pairs, one per block of the shallower model,
    in increasing order. Indices are row/column positions of the matrix.

    Examples
    --------
    >>> m = np.zeros((2, 4)); m[0, 1] = -9; m[1, 3] = -9
    >>> monotone_block_map(m)
    ((0, 1), (1, 3))
    """
    p = np.asarray(log10_p, dtype=np.float64)
    if p.ndim != 2 or p.size == 0:
        raise ValueError(f"log10_p: expected a non-empty 2-D matrix, got shape {p.shape}")
    if np.isnan(p).any() or (p > 0).any():
        raise ValueError("log10_p: expected log10 p-values <= 0, got NaN or a positive value")
    transposed = p.shape[0] > p.shape[1]
    score = -(p.T if transposed else p)
    score = np.minimum(score, 1e300)  # -inf log p: a certain match, still comparable
    n, m = score.shape
    best = np.full((n, m), -np.inf)
    back = np.zeros((n, m), dtype=np.int64)
    best[0] = score[0]
    for i in range(1, n):
        prefix = np.maximum.accumulate(best[i - 1])
        arg = np.zeros(m, dtype=np.int64)
        for j in range(1, m):
            arg[j] = arg[j - 1] if best[i - 1][arg[j - 1]] >= best[i - 1][j - 1] else j - 1
        best[i, 1:] = score[i, 1:] + prefix[:-1]
        back[i, 1:] = arg[1:]
    j = int(np.argmax(best[n - 1]))
    path = [j]
    for i in range(n - 1, 0, -1):
        j = int(back[i, j])
        path.append(j)
    path.reverse()
    pairs = ((j, i) if transposed else (i, j) for i, j in enumerate(path))
    return tuple(pairs)


def grid_block_map(
    grid: Mapping[tuple[int, int], Any], blocks_a: Sequence[int], blocks_b: Sequence[int],
) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """The block-pair grid of tests as a ``log10 p`` matrix, and its best monotone map in block numbers.

    ``grid[(block_a, block_b)]`` is any result with a ``p_value_log10``; the
    matrix has a row per ``blocks_a`` and a column per ``blocks_b``.
    """
    blocks_a, blocks_b = list(blocks_a), list(blocks_b)
    matrix = np.array([[grid[i, j].p_value_log10 for j in blocks_b] for i in blocks_a])
    return matrix, tuple((blocks_a[i], blocks_b[j]) for i, j in monotone_block_map(matrix))


@dataclass(frozen=True)
class Localization:
    """Which block of one model matches which block of the other, and which units were kept.

    Attributes
    ----------
    blocks_a, blocks_b : tuple of int
        Block indices, in matrix order.
    p_value_log10 : tuple of tuple of float
        ``p_value_log10[i][j]`` for ``blocks_a[i]`` against ``blocks_b[j]``.
    block_map : tuple of (block_a, block_b)
        The best monotone map (:func:`monotone_block_map`), in block indices.
    kept_units : tuple of (block_a, block_b, units_a, units_b)
        For each mapped pair, the unit pairs both matchings agree on.
    """

    blocks_a: tuple[int, ...]
    blocks_b: tuple[int, ...]
    p_value_log10: tuple[tuple[float, ...], ...]
    block_map: tuple[tuple[int, int], ...]
    kept_units: tuple[tuple[int, int, tuple[int, ...], tuple[int, ...]], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "blocks_a": self.blocks_a,
            "blocks_b": self.blocks_b,
            "p_value_log10": tuple(tuple(json_float(v) for v in row) for row in self.p_value_log10),
            "block_map": self.block_map,
            "kept_units": tuple(
                {"block_a": i, "block_b": j, "units_a": ua, "units_b": ub} for i, j, ua, ub in self.kept_units
            ),
        }


def localize(
    acts_a: Mapping[int, BlockActivations],
    acts_b: Mapping[int, BlockActivations],
    *,
    max_units: int | None = None,
    rng: Any = None,
) -> Localization:
    """Run phi_MATCH on every (block of a, block of b) pair and find the block map.

    Parameters
    ----------
    acts_a, acts_b : mapping block -> BlockActivations
        Each model's activations over the same inputs. Depths may differ.
    max_units : int or None
        Passed to :func:`match_consistency_test`.
    rng : None, int or numpy.random.Generator

    Returns
    -------
    Localization

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> parent = {i: BlockActivations("glu", torch.randn(20, 100, generator=g),
    ...                               torch.randn(20, 100, generator=g)) for i in range(4)}
    >>> child = {k: BlockActivations("glu", parent[i].a[:12], parent[i].b[:12])
    ...          for k, i in enumerate((0, 2, 3))}
    >>> localize(parent, child).block_map
    ((0, 0), (2, 1), (3, 2))
    """
    for name, acts in (("acts_a", acts_a), ("acts_b", acts_b)):
        if not isinstance(acts, Mapping) or not acts:
            raise TypeError(f"{name}: expected a non-empty mapping block -> BlockActivations, got {acts!r:.60}")
    max_units = check_optional_positive_int(max_units, "max_units", minimum=3)
    gen = check_rng(rng)
    blocks_a = tuple(sorted(acts_a))
    blocks_b = tuple(sorted(acts_b))
    results = {
        (i, j): match_consistency_test(acts_a[i], acts_b[j], max_units=max_units, rng=gen)
        for i in blocks_a
        for j in blocks_b
    }
    matrix, block_map = grid_block_map(results, blocks_a, blocks_b)
    kept = tuple((i, j, results[i, j].units_a, results[i, j].units_b) for i, j in block_map)
    return Localization(
        blocks_a=blocks_a,
        blocks_b=blocks_b,
        p_value_log10=tuple(tuple(float(v) for v in row) for row in matrix),
        block_map=block_map,
        kept_units=kept,
    )
