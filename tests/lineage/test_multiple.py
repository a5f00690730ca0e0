"""Benjamini-Hochberg and Holm in log10 space, against their linear-space definitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mothertree.lineage.multiple import benjamini_hochberg, holm


def _bh_linear(p, alpha):
    m = len(p)
    order = np.argsort(p)
    q = np.empty(m)
    running = 1.0
    for k in range(m - 1, -1, -1):
        running = min(running, p[order[k]] * m / (k + 1))
        q[order[k]] = running
    return q <= alpha, q


def _holm_linear(p, alpha):
    m = len(p)
    order = np.argsort(p)
    adj = np.empty(m)
    running = 0.0
    for k in range(m):
        running = max(running, min(1.0, (m - k) * p[order[k]]))
        adj[order[k]] = running
    return adj <= alpha, adj


log10_p = st.lists(st.floats(min_value=-12, max_value=0), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(log10_p, st.sampled_from([0.01, 0.05, 0.2]))
def test_log_space_corrections_equal_the_linear_definitions(lps, alpha):
    p = 10.0 ** np.array(lps)
    for corrected, linear in ((benjamini_hochberg, _bh_linear), (holm, _holm_linear)):
        rejected, adj = corrected(lps, alpha=alpha)
        exp_rejected, exp_adj = linear(p, alpha)
        np.testing.assert_allclose(10.0**adj, exp_adj, rtol=1e-9)
        # decisions may differ only when an adjusted value sits on alpha itself
        on_edge = np.isclose(exp_adj, alpha, rtol=1e-9)
        assert (rejected == exp_rejected)[~on_edge].all()


def test_underflowing_p_values_keep_their_order():
    rejected, q = benjamini_hochberg([-5000.0, -400.0, -0.5], alpha=0.01)
    assert rejected.tolist() == [True, True, False]
    assert q.tolist() == pytest.approx([-5000 + np.log10(3), -400 + np.log10(1.5), -0.5])
    rejected, adj = holm([-5000.0, -400.0, -np.inf], alpha=0.01)
    assert rejected.all() and adj[2] == -np.inf and adj[0] == pytest.approx(-5000 + np.log10(2))


def test_holm_is_never_more_liberal_than_bh():
    rng = np.random.default_rng(0)
    lps = np.log10(rng.uniform(size=50) ** 3)
    assert (holm(lps, alpha=0.05)[1] >= benjamini_hochberg(lps, alpha=0.05)[1] - 1e-12).all()


@pytest.mark.parametrize("fn", [benjamini_hochberg, holm])
@pytest.mark.parametrize(
    "values, message",
    [
        ([-1.0, 0.5], "p_values_log10: expected log10 p-values <= 0, got 0.5"),
        ([-1.0, float("nan")], "p_values_log10: expected log10 p-values, got NaN"),
        ([[-1.0]], "p_values_log10: expected a 1-D sequence, got shape (1, 1)"),
    ],
)
def test_bad_p_values_are_rejected(fn, values, message):
    with pytest.raises(ValueError) as e:
        fn(values)
    assert str(e.value) == message


def test_empty_input_gives_empty_output():
    for fn in (benjamini_hochberg, holm):
        rejected, adj = fn([])
        assert rejected.shape == adj.shape == (0,)
