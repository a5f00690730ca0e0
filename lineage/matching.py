"""Matching hidden units between two models, and the p-values that come with it.

Zhu et al. (ICML 2025, arXiv 2502.12292) observe that under the null "the two
models were trained from independent initializations", the hidden units of
each MLP block of the first model are exchangeable: its initialization is
invariant under permuting them and training is equivariant. So the best
assignment of its units to the other model's units is, under the null, a
uniformly random permutation, and its Spearman correlation with the identity
has a distribution-free null. This module holds those building blocks:

- :func:`cosine_similarity_matrix` and :func:`match_units` (linear assignment);
- :func:`unit_matching_test` (the paper's phi_U on any matrix whose rows are units);
- :func:`aligned_cosine_test`, a matching-free statistic ``S = sum_i cos(a_i, b_i)``
  whose permutation mean and variance are exact (Hoeffding's combinatorial CLT);
- :func:`fisher_combine` and :func:`bonferroni_combine` for several p-values;
- tail probabilities in log10 space (:func:`t_sf_log10`, :func:`chi2_sf_log10`,
  :func:`norm_sf_log10`) that never underflow to 0.

Every p-value here is carried as ``log10 p``: derived pairs reach
``log10 p = -10000`` and below, far under the smallest double.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from scipy import optimize, special, stats

from ..serialize import Serializable
from ..threads import wide
from ._validation import (
    check_informative,
    check_log10_p,
    check_matrix,
    check_optional_positive_int,
    check_rng,
    check_same_columns,
    check_same_shape,
)

__all__ = [
    "MatchingResult",
    "AlignedResult",
    "cosine_similarity_matrix",
    "match_units",
    "sample_rows",
    "sample_narrower",
    "spearman_identity_log10_p",
    "unit_matching_test",
    "aligned_cosine_test",
    "similarity_matching_tests",
    "fisher_combine",
    "bonferroni_combine",
    "cauchy_combine",
    "t_sf_log10",
    "chi2_sf_log10",
    "norm_sf_log10",
]

_LN10 = math.log(10.0)
_TINY = 1e-300


# ---------------------------------------------------------------- log-space tails


def _log_betacf(a: float, b: float, x: float) -> float:
    """Natural log of the continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return math.log(h)


def t_sf_log10(t: float, df: float) -> float:
    """``log10 P(T_df > t)`` for Student's t, exact in the far tail where scipy returns ``-inf``.

    For ``t > 0`` the tail is ``I_x(df/2, 1/2) / 2`` with ``x = df / (df + t^2)``;
    its log is the log of the power prefactor plus the log of a continued
    fraction that stays near 1, so nothing underflows.

    Examples
    --------
    >>> round(t_sf_log10(2.0, 10), 6)  # scipy: log10(stats.t.sf(2.0, 10))
    -1.435405
    >>> t_sf_log10(1e6, 4000) < -16000
    True
    """
    if t <= 0 or not math.isfinite(t):
        return float(stats.t.logsf(t, df)) / _LN10
    a, b = df / 2.0, 0.5
    x = df / (df + t * t)
    if x >= (a + 1.0) / (a + b + 2.0):
        return float(stats.t.logsf(t, df)) / _LN10
    log_front = (
        a * math.log(x)
        + b * math.log(t * t / (df + t * t))
        - math.log(a)
        - (special.gammaln(a) + special.gammaln(b) - special.gammaln(a + b))
    )
    return float(math.log(0.5) + log_front + _log_betacf(a, b, x)) / _LN10


def chi2_sf_log10(x: float, df: float) -> float:
    """``log10 P(chi2_df > x)``, exact in the far tail where scipy returns ``-inf``.

    Uses the continued fraction of the upper incomplete gamma function
    ``Q(df/2, x/2)`` in log space when ``x/2 > df/2 + 1``.

    Examples
    --------
    >>> round(chi2_sf_log10(30.0, 4), 4) == round(math.log10(stats.chi2.sf(30.0, 4)), 4)
    True
    >>> chi2_sf_log10(1e5, 10) < -20000
    True
    """
    s, y = df / 2.0, x / 2.0
    if not math.isfinite(x) or y <= s + 1.0:
        return float(stats.chi2.logsf(x, df)) / _LN10
    bb = y + 1.0 - s
    c, d = 1.0 / _TINY, 1.0 / bb
    h = d
    for i in range(1, 10_000):
        an = -i * (i - s)
        bb += 2.0
        d = an * d + bb
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = bb + an / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return float(-y + s * math.log(y) - special.gammaln(s) + math.log(h)) / _LN10


def norm_sf_log10(z: float) -> float:
    """``log10 P(Z > z)`` for a standard normal (scipy's ``logsf`` is already exact in the tail).

    Examples
    --------
    >>> round(norm_sf_log10(0.0), 6)
    -0.30103
    """
    return float(stats.norm.logsf(z)) / _LN10


# ---------------------------------------------------------------- matching


def cosine_similarity_matrix(
    a: Any, b: Any, *, absolute: bool = False, center: bool = False
) -> torch.Tensor:
    """Cosine similarity of every row of ``a`` with every row of ``b``.

    Parameters
    ----------
    a : tensor of shape (h_a, n)
        One row per unit of the first model: the rows are what gets matched,
        the ``n`` columns the coordinates both models share.
    b : tensor of shape (h_b, n)
        One row per unit of the second model, over the same coordinates.
    absolute : bool
        Return ``|cos|``: a unit whose sign was flipped still matches.
    center : bool
        Subtract each row's mean first (Pearson correlation). Used on
        activations, where a unit's constant offset is shared by all inputs.

    Returns
    -------
    tensor of shape (h_a, h_b)
        Higher is closer. Zero rows have similarity 0 with everything.

    Examples
    --------
    >>> x = torch.eye(3)
    >>> cosine_similarity_matrix(x, -x, absolute=True).diagonal().tolist()
    [1.0, 1.0, 1.0]
    """
    a = check_matrix(a, "a")
    b = check_matrix(b, "b")
    check_same_columns(a, b, ("a", "b"))
    with wide(a.numel() + b.numel()):
        return _cosines(a, b, absolute=absolute, center=center)


def _cosines(a: torch.Tensor, b: torch.Tensor, *, absolute: bool, center: bool) -> torch.Tensor:
    """The body of :func:`cosine_similarity_matrix` on validated matrices."""
    if center:
        a = a - a.mean(dim=1, keepdim=True)
        b = b - b.mean(dim=1, keepdim=True)
    an = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    bn = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    c = an @ bn.T
    return c.abs() if absolute else c


def match_units(similarity: Any) -> np.ndarray:
    """Assign each row to a distinct column, maximizing total similarity.

    Parameters
    ----------
    similarity : tensor of shape (m, h) with m <= h
        ``similarity[i, j]`` is how close unit ``i`` of the first model is to
        unit ``j`` of the second; rectangular when the second model is wider
        (equivalent to zero-padding the narrower one).

    Returns
    -------
    ndarray of shape (m,)
        ``match[i]`` is the column assigned to row ``i``.

    Examples
    --------
    >>> match_units(torch.tensor([[0.1, 0.9], [0.8, 0.2]])).tolist()
    [1, 0]
    """
    c = check_matrix(similarity, "similarity")
    if c.shape[0] > c.shape[1]:
        raise ValueError(
            f"similarity: expected no more rows than columns (m <= h), got shape {tuple(c.shape)}"
        )
    rows, cols = optimize.linear_sum_assignment(c.numpy().astype(np.float64), maximize=True)
    match = np.empty(c.shape[0], dtype=np.int64)
    match[rows] = cols
    return match


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of distinct values."""
    r = np.empty(len(x), dtype=np.float64)
    r[np.argsort(x, kind="stable")] = np.arange(len(x), dtype=np.float64)
    return r


def spearman_identity_log10_p(x: Sequence[int], y: Sequence[int]) -> tuple[float, float]:
    """Spearman correlation of two sequences of distinct integers, and its one-sided log10 p.

    Under the null that ``y``'s order is a uniformly random permutation of
    ``x``'s, the statistic ``t = r sqrt((n - 2) / (1 - r^2))`` is close to
    Student's t with ``n - 2`` degrees of freedom; the p-value is
    ``P(T > t)``. A perfect correlation gets the exact permutation p-value
    ``1 / n!``, which also bounds every p-value from below.

    Parameters
    ----------
    x, y : sequences of n >= 3 distinct integers
        Paired unit indices: ``x[k]`` in one model, ``y[k]`` in the other.
        Only their ranks matter, so a pruned model's kept units (an
        increasing subset) still correlate perfectly with the identity.

    Returns
    -------
    (r, log10_p) : tuple of float

    Examples
    --------
    >>> r, lp = spearman_identity_log10_p([0, 1, 2, 3], [0, 1, 2, 3])
    >>> r, round(lp, 4)
    (1.0, -1.3802)
    """
    x = np.asarray(x)
    y = np.asarray(y)
    n = len(x)
    if n < 3 or len(y) != n:
        raise ValueError(f"x and y: expected two sequences of equal length >= 3, got {len(x)} and {len(y)}")
    if len(np.unique(x)) != n or len(np.unique(y)) != n:
        raise ValueError("x and y: expected distinct integers in each, got repeated values")
    d2 = float(((_ranks(x) - _ranks(y)) ** 2).sum())
    r = 1.0 - 6.0 * d2 / (n * (n * n - 1.0))
    floor = -float(special.gammaln(n + 1)) / _LN10
    if d2 == 0.0:
        return 1.0, floor
    t = r * math.sqrt((n - 2) / max(1.0 - r * r, 1e-300))
    return r, max(t_sf_log10(t, n - 2), floor)


@dataclass(frozen=True)
class MatchingResult(Serializable):
    """One phi_U-style test: units of one model matched to the other's.

    Attributes
    ----------
    statistic : float
        Spearman correlation between the matched unit indices (1 = same order).
    p_value : float
        One-sided p-value (0.0 when it underflows; read ``p_value_log10``).
    p_value_log10 : float
    n_units : int
        Units matched (the sample size of the Spearman test).
    units_a, units_b : tuple of int
        The matched pairs: ``units_a[k]`` of ``a`` went to ``units_b[k]`` of ``b``.
    null : str
    """

    statistic: float
    p_value: float
    p_value_log10: float
    n_units: int
    units_a: tuple[int, ...]
    units_b: tuple[int, ...]
    null: str = "the first model's units are exchangeable (independent initializations)"


def sample_rows(h: int, max_units: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted random subset of ``min(h, max_units)`` row indices (all rows when no cap)."""
    if max_units is None or max_units >= h:
        return np.arange(h)
    return np.sort(rng.choice(h, size=max_units, replace=False))


def sample_narrower(
    h_a: int, h_b: int, max_units: int | None, rng: np.random.Generator, *, names: str = "a and b", unit: str = "rows",
) -> tuple[bool, np.ndarray]:
    """Whether ``b`` is the narrower side (``swapped``), and the sampled row indices of the narrower side.

    A pruned model has fewer units than its parent, so the narrower side's
    units are matched into the wider one's; fewer than 3 units cannot give a
    Spearman p-value.
    """
    swapped = h_a > h_b
    narrow = h_b if swapped else h_a
    if narrow < 3:
        raise ValueError(f"{names}: expected at least 3 {unit} each, got {h_a} and {h_b}")
    return swapped, sample_rows(narrow, max_units, rng)


def unit_matching_test(
    a: Any,
    b: Any,
    *,
    absolute: bool = False,
    center: bool = False,
    max_units: int | None = None,
    rng: Any = None,
) -> MatchingResult:
    """phi_U: match the units of ``a`` to those of ``b`` and test the matching against the identity.

    Null: the rows of ``a`` are exchangeable, as they are when the two models
    come from independent initializations (each block's hidden units, or the
    residual dimensions, are permuted by the symmetry of the initialization).
    Under it the assignment is a uniformly random injection, so its Spearman
    correlation with the identity has a distribution-free null.

    Only ``max_units`` randomly sampled rows of the narrower matrix are
    matched against all rows of the other: still exact under the null, since
    a random subset of exchangeable rows is exchangeable, and it bounds the
    cost at ``max_units x h`` cosines and one rectangular assignment.

    Parameters
    ----------
    a : tensor of shape (h_a, n)
        Rows are units of the first model (e.g. MLP up-projection rows,
        ``[intermediate, hidden]``); columns are coordinates shared by both.
    b : tensor of shape (h_b, n)
        Rows are units of the second model. ``h_a != h_b`` is allowed (a
        pruned model): the narrower one supplies the matched rows.
    absolute : bool
        Match on ``|cos|`` so sign-flipped units still match.
    center : bool
        Centre rows first (for activations).
    max_units : int or None
        Cap on the matched rows; ``None`` matches all.
    rng : None, int or numpy.random.Generator
        Chooses the sampled rows.

    Returns
    -------
    MatchingResult

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> a = torch.randn(50, 20, generator=g)
    >>> unit_matching_test(a, a + 0.1 * torch.randn(50, 20, generator=g)).p_value_log10 < -50
    True
    """
    a = check_informative(a, "a")
    b = check_informative(b, "b")
    check_same_columns(a, b, ("a", "b"))
    max_units = check_optional_positive_int(max_units, "max_units", minimum=3)
    gen = check_rng(rng)
    swapped, rows = sample_narrower(a.shape[0], b.shape[0], max_units, gen)
    rows_m, cols_m = (b, a) if swapped else (a, b)
    sim = cosine_similarity_matrix(rows_m[torch.from_numpy(rows)], cols_m, absolute=absolute, center=center)
    return matching_result_from_similarities(sim, rows, swapped)


def matching_result_from_similarities(sim: torch.Tensor, rows: np.ndarray, swapped: bool = False) -> MatchingResult:
    """phi_U from the similarities ``sim[k, j]`` of sampled row ``rows[k]`` with every column."""
    match = match_units(sim)
    r, lp = spearman_identity_log10_p(rows, match)
    units_a, units_b = (match, rows) if swapped else (rows, match)
    return MatchingResult(
        statistic=r,
        p_value=10.0**lp,
        p_value_log10=lp,
        n_units=len(rows),
        units_a=tuple(int(i) for i in units_a),
        units_b=tuple(int(j) for j in units_b),
    )


@dataclass(frozen=True)
class AlignedResult(Serializable):
    """The matching-free aligned statistic ``S = sum_i cos(a_i, b_i)`` and its normal p-value.

    Attributes
    ----------
    statistic : float
        ``S`` over the sampled rows.
    mean, std : float
        Exact mean and standard deviation of ``S`` under a uniform
        permutation of ``a``'s rows (Hoeffding).
    z : float
        ``(S - mean) / std``.
    p_value, p_value_log10 : float
        ``P(Z > z)`` for a standard normal (the combinatorial CLT).
    n_units : int
    null : str
    """

    statistic: float
    mean: float
    std: float
    z: float
    p_value: float
    p_value_log10: float
    n_units: int
    null: str = "the first model's rows are exchangeable (normal approximation, Hoeffding CLT)"


def aligned_cosine_test(a: Any, b: Any, *, max_units: int | None = None, rng: Any = None) -> AlignedResult:
    """Test whether rows with the same index are more similar than chance, without matching.

    ``S = sum_i cos(a_i, b_i)``. Null: the rows of ``a`` are exchangeable, so
    ``S`` is distributed as ``sum_i C[sigma(i), i]`` for a uniform permutation
    ``sigma``, where ``C`` is the cross-cosine matrix. Hoeffding's
    combinatorial CLT gives its exact mean ``h mean(C)`` and variance
    ``sum(D^2) / (h - 1)`` (``D`` is ``C`` double-centred), and a normal
    limit. It sees only units that kept their index, but sees weak
    dependence that an assignment misses.

    Parameters
    ----------
    a, b : tensors of shape (h, n)
        Same shape: row ``i`` of each is the same unit if the models are related.
    max_units : int or None
        Use a random subset of row indices (the same in both): ``C`` is then
        ``max_units x max_units``; the test stays valid.
    rng : None, int or numpy.random.Generator

    Returns
    -------
    AlignedResult

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> a = torch.randn(40, 30, generator=g)
    >>> aligned_cosine_test(a, a + torch.randn(40, 30, generator=g)).z > 5
    True
    """
    a = check_informative(a, "a")
    b = check_informative(b, "b")
    check_same_shape(a, b, ("a", "b"))
    max_units = check_optional_positive_int(max_units, "max_units", minimum=3)
    gen = check_rng(rng)
    if a.shape[0] < 3:
        raise ValueError(f"a: expected at least 3 rows, got {a.shape[0]}")
    idx = torch.from_numpy(sample_rows(a.shape[0], max_units, gen))
    return aligned_result_from_cosines(cosine_similarity_matrix(a[idx], b[idx]))


def aligned_result_from_cosines(c: torch.Tensor) -> AlignedResult:
    """The aligned test from the square cross-cosine matrix ``c[i, j] = cos(a_i, b_j)``."""
    c = c.double()
    h = c.shape[0]
    s = float(c.diagonal().sum())
    mean = float(c.sum()) / h
    d = c - c.mean(dim=1, keepdim=True) - c.mean(dim=0, keepdim=True) + c.mean()
    var = float((d * d).sum()) / (h - 1)
    std = math.sqrt(var)
    z = (s - mean) / std if std > 0 else 0.0
    lp = norm_sf_log10(z)
    return AlignedResult(s, mean, std, z, 10.0**lp, lp, h)


# ---------------------------------------------------------------- combining


def fisher_combine(p_values_log10: Any) -> float:
    """Fisher's method in log space: ``log10 P(chi2_{2k} > -2 sum ln p_i)``.

    Valid only for p-values that are independent under the null (e.g. one
    per MLP block, each under its own hidden-unit permutation).

    Examples
    --------
    >>> round(fisher_combine([-1.0]), 6)
    -1.0
    >>> fisher_combine([-400.0, -400.0]) < -795
    True
    """
    lp = check_log10_p(p_values_log10)
    if len(lp) == 0:
        raise ValueError("p_values_log10: expected at least one value, got none")
    if np.isneginf(lp).any():
        return -math.inf
    stat = -2.0 * _LN10 * float(lp.sum())
    return min(0.0, float(chi2_sf_log10(stat, 2 * len(lp))))


def bonferroni_combine(p_values_log10: Any) -> float:
    """``log10 min(1, k min_i p_i)``: valid under any dependence between the p-values.

    Examples
    --------
    >>> round(bonferroni_combine([-5.0, -1.0]), 6)
    -4.69897
    """
    lp = check_log10_p(p_values_log10)
    if len(lp) == 0:
        raise ValueError("p_values_log10: expected at least one value, got none")
    return min(0.0, float(lp.min()) + math.log10(len(lp)))


def cauchy_combine(p_values_log10: Any) -> float:
    """Cauchy combination (ACAT, Liu & Xie 2020) of a few p-values, in log10.

    ``T = mean_i tan((1/2 - p_i) pi)``, ``p = 1/2 - arctan(T) / pi``. For
    independent p-values ``T`` is exactly standard Cauchy, so the combined p
    is exactly uniform under the null; under dependence it stays close to
    uniform (exact in the tail), unlike Bonferroni, whose ``min(1, k p)``
    piles mass at 1 and fails a uniformity check. In the tail it behaves like
    ``k * min p`` divided by the number of small p-values: as powerful as
    Bonferroni. Tiny p-values are handled through ``tan((1/2 - p) pi) ~ 1/(pi p)``
    so nothing underflows.

    Examples
    --------
    >>> round(cauchy_combine([-1.0, -1.0]), 6)
    -1.0
    >>> cauchy_combine([-800.0, 0.0]) < -799
    True
    """
    lps = check_log10_p(p_values_log10)
    k = lps.size
    if k == 1:
        return float(lps[0])
    if lps.min() < -15:
        # Dominated by the smallest p-values: T ~ (1/k) sum 1/(pi p_i), p ~ 1/(pi T).
        small = lps[lps < -15]
        log10_sum = float(np.log10(np.sum(10.0 ** (-(small - small.min())))) - small.min())
        return min(0.0, math.log10(k) - log10_sum)
    p = np.clip(10.0 ** lps, 1e-300, 1 - 1e-15)
    t = float(np.mean(np.tan((0.5 - p) * math.pi)))
    if t > 1e15:
        return min(0.0, -math.log10(math.pi * t))
    pc = 0.5 - math.atan(t) / math.pi
    return min(0.0, math.log10(max(pc, 1e-300)))


def similarity_matching_tests(
    c: Any, *, max_units: int | None = None, rng: Any = None
) -> tuple[MatchingResult, AlignedResult]:
    """phi_U and the aligned test from a square cross-cosine matrix, without the rows themselves.

    ``c[i, j] = cos(a_i, b_j)`` (e.g. accumulated block by block, so the rows
    never exist in memory at once). The same random rows are used by both
    tests, as :func:`unit_matching_test` and :func:`aligned_cosine_test` would
    on the rows; both stay exact under the null of exchangeable rows.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> a = torch.randn(40, 30, generator=g)
    >>> m, al = similarity_matching_tests(cosine_similarity_matrix(a, a + 0.5 * torch.randn(40, 30, generator=g)))
    >>> m.p_value_log10 < -10 and al.z > 5
    True
    """
    c = check_matrix(c, "c")
    if c.shape[0] != c.shape[1] or c.shape[0] < 3:
        raise ValueError(f"c: expected a square matrix with at least 3 rows, got shape {tuple(c.shape)}")
    max_units = check_optional_positive_int(max_units, "max_units", minimum=3)
    gen = check_rng(rng)
    rows = sample_rows(c.shape[0], max_units, gen)
    m = matching_result_from_similarities(c[torch.from_numpy(rows)], rows)
    idx = torch.from_numpy(sample_rows(c.shape[0], max_units, gen))
    al = aligned_result_from_cosines(c[idx][:, idx])
    return m, al
