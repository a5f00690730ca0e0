"""Which of two related models is the parent, with a confidence in [0, 1].

Signals are combined as log-odds, strongest first (method-mother.md):

=================  =========  ==================================================
signal             log-odds   why
=================  =========  ==================================================
creation time      5.8        on the hub the parent came first in 99.7% of pairs
structure          4.6        quantized, pruned, merged models are children (99%)
float grid        2.9        one side stored at a lower precision (bf16, fp16),
                              the other within half a step of it: a rounding
                              residual (uniform, mean 0.25 step) marks the
                              rounded side as the child; a residual far below
                              it marks the finer side as trained from the
                              grid (:func:`float_grid_parent`)
declared base      2.2        card metadata: a prior, counted only once the
                              weights confirmed the pair dependent
norm growth        <= 2.2     fine-tuning adds a drift nearly orthogonal to the
                              weights, so most changed tensors grow in norm
                              (||W + D||^2 = ||W||^2 + ||D||^2 when D _|_ W);
                              the vote of changed tensors is used, not the
                              total, so one re-initialised block cannot flip it
kurtosis           <= 0.6     excess kurtosis of the attention matrices falls
                              during fine-tuning (MoTHer); stage-dependent, weak
=================  =========  ==================================================

With no signal at all the confidence is 0.5: a coin, and said so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping

from ..serialize import Serializable

if TYPE_CHECKING:
    import torch

__all__ = ["DirectionSignals", "Direction", "orient", "norm_growth_fraction", "float_grid_parent", "NORM_MAX_LOG_ODDS",
           "TIME_LOG_ODDS", "STRUCTURE_LOG_ODDS", "GRID_LOG_ODDS", "DECLARED_LOG_ODDS", "KURTOSIS_MAX_LOG_ODDS"]

TIME_LOG_ODDS = math.log(0.997 / 0.003)
STRUCTURE_LOG_ODDS = math.log(0.99 / 0.01)
DECLARED_LOG_ODDS = math.log(0.9 / 0.1)
GRID_LOG_ODDS = math.log(0.95 / 0.05)
#: A rounding residual is uniform within half a step: mean 0.25 step, half of it within a
#: quarter step. Training that moved elements across a boundary bends it a little (measured
#: 0.23-0.26 and 0.49-0.57 on bf16 fine-tunes of float32 models, bench/RESULTS.md); a
#: fine-tune trained at higher precision from the grid gives a density falling with the
#: distance (0.71 within a quarter step at a mean of 0.22) or a mean above 0.3.
GRID_ROUNDED_SPREAD = (0.2, 0.28)
GRID_ROUNDED_LOWER = (0.42, 0.6)
#: Mean residual (grid steps) up to which the finer side left the grid by training:
#: a light fine-tune trained at higher precision from a bf16/fp16 model.
GRID_TRAINED_SPREAD = 0.1
#: Most elements must sit within half a step for the residual to say anything.
GRID_MAX_VIOLATIONS = 0.5
KURTOSIS_MAX_LOG_ODDS = math.log(0.65 / 0.35)
NORM_MAX_LOG_ODDS = math.log(0.9 / 0.1)


@dataclass(frozen=True)
class DirectionSignals:
    """What is known about a pair ``(a, b)``; every field may be unknown.

    Attributes
    ----------
    created_a, created_b : datetime or None
        Upload or creation times.
    declared : int
        +1 when ``b`` declares ``a`` as its base, -1 when ``a`` declares ``b``, 0 otherwise.
    structural_child : str or None
        ``"a"`` or ``"b"`` when the relation marks one side as the child
        (the quantized, pruned, merged or adapter-merged copy).
    norm_growth : float or None
        Fraction of the changed tensors whose norm is larger in ``b`` than in
        ``a`` (:func:`norm_growth_fraction`); above 0.5 points to ``b`` as the child.
    grid_parent : str or None
        ``"a"`` or ``"b"`` when the float-grid residual names the parent
        (:func:`float_grid_parent`).
    kurtosis_a, kurtosis_b : float or None
        Summed excess kurtosis of the attention matrices (q, k, v, o): MoTHer
        uses the square attention matrices; a LoRA that leaves ``o`` untouched
        still moves ``q`` and ``v``.
    """

    created_a: datetime | None = None
    created_b: datetime | None = None
    declared: int = 0
    structural_child: str | None = None
    kurtosis_a: float | None = None
    kurtosis_b: float | None = None
    norm_growth: float | None = None
    grid_parent: str | None = None


@dataclass(frozen=True)
class Direction(Serializable):
    """``log_odds`` > 0 means ``a`` is the parent. ``confidence`` is that of the chosen side."""

    parent: str
    confidence: float
    log_odds: float
    reasons: tuple[str, ...]


def orient(signals: DirectionSignals) -> Direction:
    """Combine the direction signals of one pair.

    Examples
    --------
    >>> d = orient(DirectionSignals(structural_child="b", kurtosis_a=1.0, kurtosis_b=2.0))
    >>> d.parent, round(d.confidence, 2)
    ('a', 0.98)
    """
    if signals.declared not in (-1, 0, 1):
        raise ValueError(f"declared: expected -1, 0 or 1, got {signals.declared!r}")
    if signals.structural_child not in (None, "a", "b"):
        raise ValueError(f"structural_child: expected 'a', 'b' or None, got {signals.structural_child!r}")
    lo = 0.0
    reasons = []
    if signals.created_a is not None and signals.created_b is not None and signals.created_a != signals.created_b:
        s = 1 if signals.created_a < signals.created_b else -1
        lo += s * TIME_LOG_ODDS
        reasons.append(f"created first: {'a' if s > 0 else 'b'}")
    if signals.structural_child is not None:
        s = 1 if signals.structural_child == "b" else -1
        lo += s * STRUCTURE_LOG_ODDS
        reasons.append(f"structure marks {signals.structural_child} as the child")
    if signals.grid_parent is not None:
        if signals.grid_parent not in ("a", "b"):
            raise ValueError(f"grid_parent: expected 'a', 'b' or None, got {signals.grid_parent!r}")
        lo += GRID_LOG_ODDS if signals.grid_parent == "a" else -GRID_LOG_ODDS
        reasons.append(f"float grid: {signals.grid_parent} is the parent")
    if signals.declared:
        lo += signals.declared * DECLARED_LOG_ODDS
        reasons.append(f"declared base: {'a' if signals.declared > 0 else 'b'}")
    ka, kb = signals.kurtosis_a, signals.kurtosis_b
    if ka is not None and kb is not None and math.isfinite(ka) and math.isfinite(kb) and ka != kb:
        # Relative gap through tanh: a tie says nothing, a large gap saturates at the cap.
        gap = (ka - kb) / (abs(ka) + abs(kb) + 1e-12)
        lo += KURTOSIS_MAX_LOG_ODDS * math.tanh(4 * gap)
        reasons.append(f"higher attention kurtosis: {'a' if ka > kb else 'b'}")
    g = signals.norm_growth
    if g is not None and math.isfinite(g) and g != 0.5:
        if not 0.0 <= g <= 1.0:
            raise ValueError(f"norm_growth: expected a fraction in [0, 1], got {g}")
        lo += NORM_MAX_LOG_ODDS * (2 * g - 1)
        reasons.append(f"most changed tensors grew in norm: {'b' if g > 0.5 else 'a'} is the child")
    p_a = 1.0 / (1.0 + math.exp(-lo))
    parent = "a" if lo >= 0 else "b"
    return Direction(parent, max(p_a, 1 - p_a), lo, tuple(reasons))


def norm_growth_fraction(a: Mapping[Any, "torch.Tensor"], b: Mapping[Any, "torch.Tensor"]) -> float | None:
    """Fraction of the tensors that changed between ``a`` and ``b`` whose norm is larger in ``b``.

    ``None`` when no tensor of equal shape changed (duplicates, other architectures).
    Tensors are compared at the lower of the two storage precisions
    (:func:`~mothertree.lineage.relations.at_stored_precision`), so a float32
    parent and its bf16 fine-tune vote on what training changed, not on rounding.

    Examples
    --------
    >>> import torch
    >>> w = {("mlp.up", 0): torch.ones(4, 4), ("mlp.down", 0): torch.ones(4, 4)}
    >>> grown = {k: v + 0.1 * torch.eye(4) for k, v in w.items()}
    >>> norm_growth_fraction(w, grown)
    1.0
    """
    from .relations import at_stored_precision

    grew = changed = 0
    for k, x in a.items():
        y = b.get(k)
        if y is None or y.shape != x.shape:
            continue
        # A side stored at higher precision is compared as the other side stores it: the
        # rounding of a float32 parent to its bf16 child's grid is storage, not a change.
        x, y = at_stored_precision(x, y), at_stored_precision(y, x)
        nx_, ny = float(x.float().norm()), float(y.float().norm())
        if float((x.float() - y.float()).norm()) <= 1e-6 * max(nx_, ny, 1e-30):
            continue
        changed += 1
        grew += ny > nx_
    return grew / changed if changed else None


def float_grid_parent(a: Mapping[Any, "torch.Tensor"], b: Mapping[Any, "torch.Tensor"]) -> str | None:
    """``"a"`` or ``"b"``: the parent by where the finer side sits around the coarser side's float grid.

    Pooled over the tensors of equal shape where one side is stored at a
    lower precision (:func:`~mothertree.lineage.relations.rounds_onto_float_grid`).
    A light fine-tune saved in bf16 from a float32 parent lies within half a
    step of the parent, at a uniform rounding distance (mean 0.25 step, half
    of it within a quarter step): the rounded side is the child. A float32
    fine-tune of a bf16 model starts on the grid and moves by training steps
    (mean far below 0.25): the grid side is the parent. This holds when the changes are below one rounding step,
    exactly where norm growth and kurtosis measure noise. ``None`` when the
    precisions are equal, the coarser side switches between tensors, most
    elements are more than half a step apart, or the residual is between the
    two bounds.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> parent = {("mlp.up", 0): torch.randn(64, 64, generator=g)}
    >>> child = {k: (v + 1e-4 * torch.randn(64, 64, generator=g)).bfloat16().float() for k, v in parent.items()}
    >>> float_grid_parent(parent, child), float_grid_parent(child, parent)
    ('a', 'b')
    """
    from .relations import rounds_onto_float_grid

    coarse_sides, violations, spread, lower, n = set(), 0.0, 0.0, 0.0, 0
    for k, x in a.items():
        y = b.get(k)
        if y is None or tuple(y.shape) != tuple(x.shape):
            continue
        for side, coarse, source in (("a", x, y), ("b", y, x)):
            got = rounds_onto_float_grid(coarse, source)
            if got is None:
                continue
            v, s, low, m = got
            coarse_sides.add(side)
            violations += v * m
            if math.isfinite(s):
                spread += s * m * (1 - v)
                lower += low * m * (1 - v)
            n += m
    if len(coarse_sides) != 1 or n == 0 or violations / n > GRID_MAX_VIOLATIONS:
        return None
    coarse_side = coarse_sides.pop()
    mean, low = spread / (n - violations), lower / (n - violations)
    if GRID_ROUNDED_SPREAD[0] <= mean <= GRID_ROUNDED_SPREAD[1] and GRID_ROUNDED_LOWER[0] <= low <= GRID_ROUNDED_LOWER[1]:
        return "b" if coarse_side == "a" else "a"  # a uniform rounding residual: the rounded side is the child
    if mean <= GRID_TRAINED_SPREAD:
        return coarse_side
    return None
