"""Edge typing, direction and family recovery on synthetic weights with known truth."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest
import torch

from mothertree.lineage import (
    DirectionSignals,
    PairEvidence,
    classify_relation,
    merge_fit,
    orient,
    recover_family,
)
from mothertree.lineage.relations import grid_residual, invariant_distance, is_quantized, relative_distance


def _model(seed: int, blocks: int = 2, d: int = 32, h: int = 64) -> dict:
    g = torch.Generator().manual_seed(seed)
    w = {}
    for b in range(blocks):
        for role, shape in (("attn.q", (d, d)), ("attn.k", (d, d)), ("attn.v", (d, d)), ("attn.o", (d, d)),
                            ("mlp.gate", (h, d)), ("mlp.up", (h, d)), ("mlp.down", (d, h))):
            w[(role, b)] = torch.randn(*shape, generator=g) * 0.05
    return w


def _finetune(w, seed, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * v.std() * torch.randn(v.shape, generator=g) for k, v in w.items()}


def _quantize(w):
    out = {}
    for k, v in w.items():
        s = v.abs().amax(dim=1, keepdim=True) / 127
        out[k] = (v / s).round() * s
    return out


def _lora(w, seed, rank=2, roles=("attn.q", "attn.v", "mlp.up")):
    g = torch.Generator().manual_seed(seed)
    return {
        k: v + 0.05 * torch.randn(v.shape[0], rank, generator=g) @ torch.randn(rank, v.shape[1], generator=g)
        if k[0] in roles else v
        for k, v in w.items()
    }


def _permute(w, seed):
    g = torch.Generator().manual_seed(seed)
    out = dict(w)
    for b in {k[1] for k in w}:
        p = torch.randperm(w[("mlp.up", b)].shape[0], generator=g)
        out[("mlp.up", b)] = w[("mlp.up", b)][p]
        out[("mlp.gate", b)] = w[("mlp.gate", b)][p]
        out[("mlp.down", b)] = w[("mlp.down", b)][:, p]
    return out


P = _model(0)


@pytest.mark.parametrize(
    "child, relation, child_side",
    [
        (lambda: _finetune(P, 1), "finetune", None),
        (lambda: {k: v.half().float() for k, v in P.items()}, "duplicate", "b"),  # the fp16 cast is the copy
        (lambda: _permute(P, 2), "duplicate", None),
        (lambda: _quantize(P), "quantized", "b"),
        (lambda: _lora(P, 3), "adapter", None),
        (lambda: {k: v for k, v in P.items() if k[1] == 0}, "pruned", "b"),
    ],
)
def test_relation_types(child, relation, child_side):
    ev = classify_relation(P, child())
    assert (ev.relation, ev.child_side) == (relation, child_side)
    assert 0 < ev.confidence <= 1


def test_relation_is_symmetric_in_type():
    q = _quantize(P)
    assert classify_relation(q, P).child_side == "a"
    assert classify_relation(q, P).relation == classify_relation(P, q).relation


def test_grid_residual_separates_quantized():
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(5))
    assert grid_residual(w) > 0.15
    s = w.abs().amax(dim=1, keepdim=True) / 127
    assert grid_residual(((w / s).round() * s).half().float()) < 0.08
    assert is_quantized({}, dtypes=("I8",))


def test_distances():
    ft = _finetune(P, 1)
    assert relative_distance(P, P) == 0
    assert 0 < relative_distance(P, ft) < 1
    perm = _permute(ft, 9)
    assert relative_distance(P, perm) > 2 * relative_distance(P, ft)  # MLP units moved
    assert invariant_distance(P, perm) == pytest.approx(invariant_distance(P, ft), rel=1e-3)
    assert math.isnan(relative_distance(P, {("x", 0): torch.ones(2, 2)}))


def test_merge_fit_finds_the_weights():
    a, b = _finetune(P, 1), _finetune(P, 2)
    m = {k: 0.3 * a[k] + 0.7 * b[k] for k in P}
    fit = merge_fit(m, [a, b])
    assert [round(x, 4) for x in fit.alphas] == [0.3, 0.7] and fit.is_merge
    # The parent is not a merge of its two children, though it sits between them.
    assert not merge_fit(P, [a, b]).is_merge
    with pytest.raises(ValueError, match="expected at least one WeightMap, got 0"):
        merge_fit(m, [])


def test_orient_combines_signals():
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert orient(DirectionSignals()).confidence == 0.5
    d = orient(DirectionSignals(created_a=t0 + timedelta(days=1), created_b=t0, kurtosis_a=5.0, kurtosis_b=1.0))
    assert d.parent == "b" and d.confidence > 0.99
    d = orient(DirectionSignals(structural_child="a"))
    assert d.parent == "b" and d.confidence == pytest.approx(0.99)
    weak = orient(DirectionSignals(kurtosis_a=2.0, kurtosis_b=1.0))
    assert weak.parent == "a" and 0.5 < weak.confidence <= 0.65
    with pytest.raises(ValueError, match="declared: expected -1, 0 or 1, got 2"):
        orient(DirectionSignals(declared=2))


def _pairs_from(models: dict[str, dict], truth_parent: dict[str, str]) -> list[PairEvidence]:
    names = list(models)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = relative_distance(models[a], models[b])
            lo = 0.4 if truth_parent.get(b) == a else -0.4 if truth_parent.get(a) == b else 0.0
            out.append(PairEvidence(a, b, d, lo, "finetune"))
    return out


def test_siblings_are_not_parents():
    r = P
    c1, c2, c3 = _finetune(r, 1), _finetune(r, 2), _finetune(r, 3)
    g1 = _finetune(c1, 4)
    models = {"r": r, "c1": c1, "c2": c2, "c3": c3, "g1": g1}
    truth = {"c1": "r", "c2": "r", "c3": "r", "g1": "c1"}
    # Each sibling is closer to the common parent than to any other sibling.
    assert relative_distance(c1, r) < relative_distance(c1, c2)
    tree = recover_family(list(models), _pairs_from(models, truth))
    assert {(e.parent, e.child) for e in tree.edges} == {(p, c) for c, p in truth.items()}
    assert tree.roots == ("r",)


def test_merge_gets_both_parents_and_duplicates_hang_off_the_original():
    c1, c2 = _finetune(P, 1), _finetune(P, 2)
    m = {k: 0.5 * c1[k] + 0.5 * c2[k] for k in P}
    models = {"r": P, "c1": c1, "c2": c2, "m": m, "copy": {k: v.clone() for k, v in c1.items()}}
    truth = {"c1": "r", "c2": "r"}
    pairs = [p if {p.a, p.b} != {"c1", "copy"} else PairEvidence(p.a, p.b, 0.0, 0.0, "duplicate")
             for p in _pairs_from(models, truth)]
    tree = recover_family(list(models), pairs, merges={"m": ("c1", "c2")}, representative={"c1": 0, "copy": 1})
    edges = {(e.parent, e.child): e.relation for e in tree.edges}
    assert edges == {("r", "c1"): "finetune", ("r", "c2"): "finetune", ("c1", "m"): "merge",
                     ("c2", "m"): "merge", ("c1", "copy"): "duplicate"}
    assert tree.roots == ("r",)


def test_recover_family_checks_pairs():
    with pytest.raises(ValueError, match="expected pairs among nodes"):
        recover_family(["a"], [PairEvidence("a", "z", 0.1, 0.0, "finetune")])


def test_relations_on_matrices_past_the_exact_svd_size():
    """Above 512 a side, ranks come from a randomized sketch; the verdicts must not change."""
    g = torch.Generator().manual_seed(11)
    big = {("attn.q", 0): torch.randn(520, 520, generator=g) * 0.02,
           ("mlp.up", 0): torch.randn(1100, 520, generator=g) * 0.02,
           ("mlp.down", 0): torch.randn(520, 1100, generator=g) * 0.02}
    dense = {k: v + 0.002 * torch.randn(v.shape, generator=g) for k, v in big.items()}
    assert classify_relation(big, dense).relation == "finetune"
    low = {k: v + 0.002 * torch.randn(v.shape[0], 4, generator=g) @ torch.randn(4, v.shape[1], generator=g)
           if k[0] == "attn.q" else v for k, v in big.items()}
    ev = classify_relation(big, low)
    # attn.q changed but no invariant product covers it: an adapter, not a permuted duplicate
    assert ev.relation == "adapter" and ev.delta_rank_fraction == pytest.approx(4 / 520)
    with_gate = {**big, ("mlp.gate", 0): torch.randn(1100, 520, generator=g) * 0.02}
    assert classify_relation(with_gate, _permute(with_gate, 3)).relation == "duplicate"


def test_unknown_architecture_falls_back_to_tensors_paired_by_shape():
    from mothertree.lineage import independence_test

    g = torch.Generator().manual_seed(3)
    a = {("other:enc.w1", None): torch.randn(48, 32, generator=g), ("other:enc.w2", None): torch.randn(32, 48, generator=g)}
    child = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in a.items()}
    stranger = {k: torch.randn(v.shape, generator=g) for k, v in a.items()}
    r = independence_test(a, child)
    assert r.method == "shape" and r.dependent and any("approximate" in n for n in r.notes)
    assert not independence_test(a, stranger).dependent
    with pytest.raises(ValueError, match="expected activations"):
        independence_test(a, {("other:x", None): torch.randn(5, 5)})
