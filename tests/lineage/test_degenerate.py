"""Degenerate weights (constant, all-zero, tied, rank-deficient, NaN) never give evidence of lineage."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch

from mothertree.lineage import independence_test
from mothertree.lineage._validation import degenerate_reason, drop_degenerate
from mothertree.lineage.independence import exact_test, match_test, permutation_test, tensor_evidence
from mothertree.lineage.matching import aligned_cosine_test, unit_matching_test
from mothertree.lineage.relations import classify_relation, merge_fit
from mothertree.lineage.robust import BlockActivations, match_consistency_test

G = torch.Generator().manual_seed(7)


def _model(make) -> dict:
    """A two-block GLU-ish WeightMap whose every matrix comes from ``make(shape)``."""
    shapes = {"embed.tokens": (64, 32), "attn.q": (32, 32), "attn.k": (32, 32), "attn.v": (32, 32),
              "attn.o": (32, 32), "mlp.gate": (64, 32), "mlp.up": (64, 32), "mlp.down": (32, 64)}
    out = {}
    for role, shape in shapes.items():
        for block in ([None] if role.startswith("embed") else [0, 1]):
            out[(role, block)] = make(shape)
    return out


def _randn(shape):
    return torch.randn(shape, generator=G)


DEGENERATE = {
    "zeros": lambda s: torch.zeros(s),
    "constant": lambda s: torch.full(s, 0.37),
    "tied": lambda s: torch.randint(0, 2, s, generator=G).float(),
    "rank1": lambda s: torch.randn(s[0], 1, generator=G) @ torch.randn(1, s[1], generator=G),
    "tied_rows": lambda s: torch.randn(1, s[1], generator=G).repeat(s[0], 1),
}


@pytest.mark.parametrize("kind", sorted(DEGENERATE))
def test_each_kind_is_detected(kind):
    assert degenerate_reason(DEGENERATE[kind]((64, 32))) is not None


def test_nan_and_infinity_are_detected():
    x = _randn((8, 4))
    x[1, 2] = float("nan")
    assert degenerate_reason(x) == "holds NaN or infinity"


@pytest.mark.parametrize("make", [_randn, lambda s: torch.randn(s, generator=G).half().float(),
                                  lambda s: (torch.randn(s, generator=G) * 127).round().clamp(-127, 127) / 127])
def test_real_weights_are_not_flagged(make):
    """Gaussian, fp16-rounded and int8-grid weights are informative."""
    assert degenerate_reason(make((64, 32))) is None


@pytest.mark.parametrize("kind", sorted(DEGENERATE))
def test_degenerate_model_vs_unrelated_is_never_dependent(kind):
    base = _model(_randn)
    bad = _model(DEGENERATE[kind])
    for method in ("auto", "exact", "permtest"):
        r = independence_test(bad, base, method=method, n_permutations=19)
        assert not r.dependent and r.p_value == 1.0, (method, r.p_value_log10)
        assert any("degenerate" in n for n in r.notes) and any("no informative tensor" in n for n in r.notes)
    assert not exact_test(base, bad).dependent
    assert not permutation_test(bad, base, n_permutations=19).dependent
    assert tensor_evidence(bad, base) == ()
    rel = classify_relation(base, bad)
    assert rel.relation == "unknown" and rel.confidence == 0.0 and "degenerate" in rel.notes[0]


def test_partly_degenerate_model_is_tested_on_the_rest_and_says_so():
    base = _model(_randn)
    child = {k: v + 0.1 * torch.randn(v.shape, generator=G) for k, v in base.items()}
    child[("mlp.up", 1)] = torch.zeros(64, 32)
    r = independence_test(base, child)
    assert r.dependent  # the rest still proves it
    assert any("1 of 15 tensors degenerate" in n and "('mlp.up', 1)" in n for n in r.notes)
    rel = classify_relation(base, child)
    assert any("degenerate" in n for n in rel.notes)


def test_low_level_statistics_refuse_degenerate_matrices():
    z, x = torch.zeros(40, 20), _randn((40, 20))
    with pytest.raises(ValueError, match="a: expected an informative matrix, got a degenerate one: constant"):
        unit_matching_test(z, x)
    with pytest.raises(ValueError, match="b: expected an informative matrix"):
        aligned_cosine_test(x, z)
    acts = BlockActivations("glu", _randn((30, 100)), _randn((30, 100)))
    flat = BlockActivations("glu", torch.zeros(30, 100), torch.zeros(30, 100))
    with pytest.raises(ValueError, match="x.a: expected an informative matrix"):
        match_consistency_test(flat, acts)
    r = match_test({0: flat}, {0: acts})
    assert not r.dependent and r.p_value == 1.0


def test_merge_fit_refuses_an_all_degenerate_child():
    p = {("mlp.up", 0): _randn((8, 4))}
    with pytest.raises(ValueError, match="only degenerate"):
        merge_fit({("mlp.up", 0): torch.zeros(8, 4)}, [p])


def test_drop_degenerate_removes_keys_from_every_map():
    a = {("x", 0): torch.zeros(8, 4), ("y", 0): _randn((8, 4))}
    b = {("x", 0): _randn((8, 4)), ("y", 0): _randn((8, 4))}
    (fa, fb), notes = drop_degenerate(a, b)
    assert list(fa) == list(fb) == [("y", 0)] and notes[0].startswith("a: 1 of 2 tensors degenerate")


class _Lazy(Mapping):
    """A streamed WeightMap as the registry hands it over: keys and shapes up front, reads counted."""

    def __init__(self, weights: dict, degenerate: dict | None) -> None:
        self._w, self.degenerate, self.reads = weights, degenerate, []

    def __getitem__(self, key):
        self.reads.append(key)
        return self._w[key].clone()

    def __iter__(self):
        return iter(self._w)

    def __len__(self) -> int:
        return len(self._w)

    def shape_of(self, key):
        return tuple(self._w[key].shape)


def test_a_streamed_map_leaves_its_judged_keys_out_unread_with_the_in_memory_notes():
    base = _model(_randn)
    child = {k: v + 0.1 * torch.randn(v.shape, generator=G) for k, v in base.items()}
    child[("mlp.up", 1)] = torch.zeros(64, 32)
    lazy = _Lazy(child, {("mlp.up", 1): degenerate_reason(child[("mlp.up", 1)])})
    r = independence_test(base, lazy, sequential=True)
    assert r.dependent and ("mlp.up", 1) not in lazy.reads
    assert r.notes[:1] == independence_test(base, child).notes[:1]  # the same note as a dict gets
    rel = classify_relation(base, _Lazy(child, lazy.degenerate))
    assert any("1 of 15 tensors degenerate" in n for n in rel.notes)


@pytest.mark.parametrize("kind", ["zeros", "constant", "tied"])
def test_an_all_degenerate_streamed_model_gives_no_evidence(kind):
    bad = _model(DEGENERATE[kind])
    lazy = _Lazy(bad, {k: degenerate_reason(v) for k, v in bad.items()})
    for method in ("auto", "exact"):
        r = independence_test(lazy, _model(_randn), method=method, sequential=True)
        assert not r.dependent and r.p_value == 1.0 and lazy.reads == []
        assert any("no informative tensor" in n for n in r.notes)
    assert classify_relation(_model(_randn), lazy).relation == "unknown"


def test_a_streamed_map_without_verdicts_refuses_a_degenerate_tensor_when_read():
    bad = _model(DEGENERATE["zeros"])
    with pytest.raises(ValueError, match=r"a\[.*\]: expected an informative matrix, got a degenerate one: constant"):
        independence_test(_Lazy(bad, None), _model(_randn), method="exact")
