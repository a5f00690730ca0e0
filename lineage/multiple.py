"""Multiple-testing corrections in log10 space, for every pair the registry has tested.

p-values of derived pairs underflow (``log10 p = -5000`` is common), so the
corrections take and return base-10 logarithms.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._validation import check_alpha, check_log10_p

__all__ = ["benjamini_hochberg", "holm"]


def benjamini_hochberg(p_values_log10: Any, *, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg: control the false discovery rate at ``alpha``.

    Valid for independent or positively dependent p-values. The adjusted
    value of the ``k``-th smallest p is ``min_{j >= k} (m / j) p_(j)``, capped at 1.

    Parameters
    ----------
    p_values_log10 : sequence of m floats <= 0
    alpha : float
        Target false discovery rate.

    Returns
    -------
    rejected : bool array of shape (m,)
        ``q <= alpha``, in input order.
    q_log10 : float array of shape (m,)
        Adjusted p-values (q-values) as log10, in input order.

    Examples
    --------
    >>> rejected, q = benjamini_hochberg([-3.0, -1.0, -0.1], alpha=0.05)
    >>> rejected.tolist(), np.round(q, 4).tolist()
    ([True, False, False], [-2.5229, -0.8239, -0.1])
    """
    lp = check_log10_p(p_values_log10)
    alpha = check_alpha(alpha)
    m = len(lp)
    if m == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    order = np.argsort(lp, kind="stable")
    ranks = np.arange(1, m + 1)
    scaled = lp[order] + math.log10(m) - np.log10(ranks)
    adjusted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 0.0)
    q = np.empty(m)
    q[order] = adjusted
    return q <= math.log10(alpha), q


def holm(p_values_log10: Any, *, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down method: control the family-wise error rate at ``alpha``.

    Valid under any dependence. The adjusted value of the ``k``-th smallest
    p is ``max_{j <= k} (m - j + 1) p_(j)``, capped at 1.

    Parameters
    ----------
    p_values_log10 : sequence of m floats <= 0
    alpha : float

    Returns
    -------
    rejected : bool array of shape (m,)
    adjusted_log10 : float array of shape (m,)

    Examples
    --------
    >>> rejected, adj = holm([-3.0, -1.0, -2.0], alpha=0.05)
    >>> rejected.tolist(), np.round(adj, 4).tolist()
    ([True, False, True], [-2.5229, -1.0, -1.699])
    """
    lp = check_log10_p(p_values_log10)
    alpha = check_alpha(alpha)
    m = len(lp)
    if m == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    order = np.argsort(lp, kind="stable")
    scaled = lp[order] + np.log10(m - np.arange(m))
    adjusted = np.minimum(np.maximum.accumulate(scaled), 0.0)
    out = np.empty(m)
    out[order] = adjusted
    return out <= math.log10(alpha), out
