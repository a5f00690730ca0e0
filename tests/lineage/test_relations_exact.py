"""Duplicates are exact conversions, quantized copies round onto a grid, siblings are never chained."""

from __future__ import annotations

import math

import pytest
import torch

from mothertree.lineage import PairEvidence, classify_relation, recover_family
from mothertree.lineage.relations import (
    CONVERSION_MISMATCH,
    containment_ratio,
    conversion_check,
    relative_distance,
    rounds_onto_grid,
)
from mothertree.lineage.tree import CHAIN_ABOVE, SIBLING_BELOW


def _model(seed: int, blocks: int = 2, d: int = 64, h: int = 128) -> dict:
    g = torch.Generator().manual_seed(seed)
    w = {}
    for b in range(blocks):
        for role, shape in (("attn.q", (d, d)), ("attn.k", (d, d)), ("attn.v", (d, d)), ("attn.o", (d, d)),
                            ("mlp.gate", (h, d)), ("mlp.up", (h, d)), ("mlp.down", (d, h))):
            w[(role, b)] = torch.randn(*shape, generator=g) * 0.05
    return w


def _bf16(w: dict) -> dict:
    return {k: v.bfloat16().float() for k, v in w.items()}


def _trunc(w: dict) -> dict:
    return {k: (v.view(torch.int32) & -65536).view(torch.float32) for k, v in w.items()}


def _nudge(w: dict, seed: int, rel: float) -> dict:
    """Add a change of ``rel`` times each weight's bf16 rounding step (2**-8 of its magnitude)."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + rel * v.abs().mean() * 2 ** -8 * torch.randn(v.shape, generator=g) for k, v in w.items()}


def _permute(w: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = dict(w)
    for b in {k[1] for k in w}:
        p = torch.randperm(w[("mlp.up", b)].shape[0], generator=g)
        out[("mlp.up", b)], out[("mlp.gate", b)] = w[("mlp.up", b)][p], w[("mlp.gate", b)][p]
        out[("mlp.down", b)] = w[("mlp.down", b)][:, p]
    return out


def _int8(w: dict) -> dict:
    out = {}
    for k, v in w.items():
        s = v.abs().amax(dim=1, keepdim=True) / 127
        out[k] = ((v / s).round() * s).half().float()
    return out


def _q4_1(w: dict) -> dict:
    """ggml Q4_1: blocks of 32, min and step stored in fp16, 16 levels."""
    out = {}
    for k, v in w.items():
        blocks = v.reshape(-1, 32)
        lo = blocks.amin(dim=1, keepdim=True).half().float()
        d = ((blocks.amax(dim=1, keepdim=True) - lo) / 15).half().float()
        out[k] = (((blocks - lo) / d).round().clamp(0, 15) * d + lo).reshape(v.shape)
    return out


P = _model(0)


@pytest.mark.parametrize(
    "make, mode, lower, permuted",
    [
        (lambda: {k: v.clone() for k, v in P.items()}, "exact", None, False),
        (lambda: _bf16(P), "bf16-rne", "b", False),
        (lambda: {k: v.half().float() for k, v in P.items()}, "fp16-rne", "b", False),
        (lambda: _trunc(P), "bf16-trunc", "b", False),
        (lambda: _permute(P, 1), "exact", None, True),
        (lambda: _bf16(_permute(P, 2)), "bf16-rne", "b", True),
    ],
)
def test_conversions_are_duplicates(make, mode, lower, permuted):
    child = make()
    conv = conversion_check(P, child)
    assert (conv.mode, conv.lower_side, conv.permuted, conv.mismatch_fraction) == (mode, lower, permuted, 0.0)
    ev = classify_relation(P, child)
    assert ev.relation == "duplicate" and ev.child_side == lower
    # the reverse order names the other side
    assert classify_relation(child, P).child_side == {"b": "a", None: None}[lower]


def test_a_light_finetune_below_the_rounding_step_is_a_finetune():
    """The issue's case: a change smaller than the bf16 rounding of the parent, saved in bf16."""
    child = _bf16(_nudge(P, 3, rel=0.5))
    change = sum(float((child[k] - P[k]).abs().sum()) for k in P) / sum(v.numel() for v in P.values())
    rounding = sum(float((_bf16(P)[k] - P[k]).abs().sum()) for k in P) / sum(v.numel() for v in P.values())
    step = sum(float((v.abs() * 2 ** -7).sum()) for v in P.values()) / sum(v.numel() for v in P.values())
    assert change < step  # below the parent's bf16 rounding step, about as large as its rounding
    assert relative_distance(P, child) < 5e-3  # the old tolerance called this a duplicate
    conv = conversion_check(P, child)
    assert conv.mode == "bf16-rne" and conv.mismatch_fraction > 100 * CONVERSION_MISMATCH
    ev = classify_relation(P, child)
    assert ev.relation == "finetune" and ev.child_side is None
    assert ev.to_dict()["conversion"]["is_conversion"] is False
    assert rounding > 0


def test_a_bf16_parent_and_its_bf16_finetune():
    parent = _bf16(P)
    child = _bf16(_nudge(parent, 4, rel=0.3))
    conv = conversion_check(parent, child)
    assert 0.01 < conv.mismatch_fraction < 0.5
    assert classify_relation(parent, child).relation == "finetune"


def test_a_permuted_finetune_is_not_a_duplicate():
    child = _permute(_bf16(_nudge(P, 5, rel=0.5)), 6)
    assert not conversion_check(P, child).is_conversion
    assert classify_relation(P, child).relation == "finetune"


@pytest.mark.parametrize("quantize", [_int8, _q4_1])
def test_quantized_copies_round_onto_their_grid(quantize):
    q = quantize(P)
    ev = classify_relation(P, q)
    assert (ev.relation, ev.child_side) == ("quantized", "b")
    v, spread = rounds_onto_grid(q[("mlp.up", 0)], P[("mlp.up", 0)])
    assert v == 0.0 and 0.2 < spread < 0.3


def test_a_finetune_of_a_quantized_model_is_not_its_source():
    """A fine-tune *of* a dequantized base moves off the grid by far less than a rounding."""
    base = _q4_1(P)
    g = torch.Generator().manual_seed(7)
    child = {k: v + 0.02 * v.std() * torch.randn(v.shape, generator=g) for k, v in base.items()}
    _, spread = rounds_onto_grid(base[("mlp.up", 0)], child[("mlp.up", 0)])
    assert spread < 0.15
    ev = classify_relation(base, child)
    assert ev.relation == "finetune" and ev.child_side is None


def test_a_quantized_relative_that_is_not_the_source_is_not_quantized():
    other = {k: v + 0.3 * v.std() * torch.randn(v.shape, generator=torch.Generator().manual_seed(8))
             for k, v in P.items()}
    ev = classify_relation(other, _int8(P))
    assert ev.relation == "finetune"
    assert any("does not round onto it" in n for n in ev.notes)


def _drift(w: dict, direction: dict, amount: float, seed: int, noise: float) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: v + amount * direction[k] + noise * v.std() * torch.randn(v.shape, generator=g) for k, v in w.items()}


def _common() -> dict:
    g = torch.Generator().manual_seed(99)
    return {k: 0.5 * v.std() * torch.randn(v.shape, generator=g) for k, v in P.items()}


def test_containment_ratio_separates_chains_from_siblings():
    s = _common()
    x = _drift(P, s, 1.0, 1, 0.3)
    chain = _drift(x, s, 0.3, 2, 0.3)  # training went on the same way
    sibling = _drift(P, s, 1.0, 3, 0.3)  # same common drift, its own noise
    assert containment_ratio(P, x, chain) > 1.05
    assert containment_ratio(P, x, sibling) < SIBLING_BELOW
    assert math.isnan(containment_ratio(P, P, x))


def _pairs(models: dict) -> list[PairEvidence]:
    names = list(models)
    return [PairEvidence(a, b, relative_distance(models[a], models[b]), 0.0, "finetune")
            for i, a in enumerate(names) for b in names[i + 1:]]


def test_siblings_with_a_common_drift_are_not_chained():
    s = _common()
    x = _drift(P, s, 1.0, 1, 0.3)
    y = _drift(P, s, 1.0, 3, 0.3)
    models = {"g": P, "x": x, "y": y}
    # the failure: each sibling is closer to the other than to the parent
    assert relative_distance(x, y) < relative_distance(P, y)
    pairs = _pairs(models)
    pairs = [PairEvidence(p.a, p.b, p.distance, 1.0 if p.a == "g" else p.parent_log_odds, p.relation) for p in pairs]
    chained = recover_family(list(models), pairs)
    assert len({(e.parent, e.child) for e in chained.edges} & {("x", "y"), ("y", "x")}) == 1
    tree = recover_family(list(models), pairs, containment=lambda g, a, b: containment_ratio(models[g], models[a], models[b]))
    assert {(e.parent, e.child) for e in tree.edges} == {("g", "x"), ("g", "y")}
    moved = [e for e in tree.edges if e.containment is not None]
    assert len(moved) == 1 and moved[0].containment < SIBLING_BELOW and not moved[0].low_confidence
    assert "a sibling of" in moved[0].notes[0]


def test_a_true_chain_stays_and_an_undecided_one_is_flagged():
    s = _common()
    x = _drift(P, s, 1.0, 1, 0.3)
    models = {"g": P, "x": x, "y": _drift(x, s, 0.3, 2, 0.3)}
    lo = {("g", "x"): 2.0, ("g", "y"): 2.0, ("x", "y"): 2.0}
    pairs = [PairEvidence(p.a, p.b, p.distance, lo[(p.a, p.b)], p.relation) for p in _pairs(models)]
    fn = lambda g, a, b: containment_ratio(models[g], models[a], models[b])  # noqa: E731
    tree = recover_family(list(models), pairs, containment=fn)
    edges = {(e.parent, e.child): e for e in tree.edges}
    assert set(edges) == {("g", "x"), ("x", "y")}
    assert edges[("x", "y")].containment >= CHAIN_ABOVE and not edges[("x", "y")].low_confidence
    # a ratio between the bounds cannot tell: the arborescence's chain stays, flagged
    tree = recover_family(list(models), pairs, containment=lambda g, a, b: (SIBLING_BELOW + CHAIN_ABOVE) / 2)
    edges = {(e.parent, e.child): e for e in tree.edges}
    assert set(edges) == {("g", "x"), ("x", "y")} and edges[("x", "y")].low_confidence
    assert edges[("x", "y")].to_dict()["low_confidence"] is True
    assert "chain or sibling" in edges[("x", "y")].notes[-1]


def test_the_higher_precision_original_represents_its_casts():
    models = ["copy", "orig"]
    # direction evidence: the cast copy is the child (structure), whatever the node order says
    pairs = [PairEvidence("copy", "orig", 0.0, -4.6, "duplicate")]
    tree = recover_family(models, pairs, representative={"copy": 0, "orig": 1})
    assert [(e.parent, e.child) for e in tree.edges] == [("orig", "copy")]
    assert tree.edges[0].direction_confidence > 0.98


def test_bf16_fine_tunes_of_a_float32_parent_are_judged_on_training_not_rounding():
    """Changes below the bf16 step: the shared rounding of the parent must not read as a common drift."""
    from mothertree.lineage.direction import norm_growth_fraction

    g = torch.Generator().manual_seed(5)
    step = {k: v.abs().mean() * 2.0 ** -8 for k, v in P.items()}  # about a bf16 rounding step
    # changes of 1% of a step: without rounding the parent first the siblings measured 0.97 (a chain)
    u = {k: 0.01 * step[k] * torch.randn(v.shape, generator=g) for k, v in P.items()}
    v2 = {k: 0.01 * step[k] * torch.randn(v.shape, generator=g) for k, v in P.items()}
    x = {k: (P[k] + u[k]).bfloat16().float() for k in P}
    sibling = {k: (P[k] + v2[k]).bfloat16().float() for k in P}
    chain = {k: (x[k] + 0.01 * step[k] * torch.randn(v.shape, generator=g)).bfloat16().float() for k, v in P.items()}
    assert containment_ratio(P, x, sibling) < SIBLING_BELOW
    assert containment_ratio(P, x, chain) > CHAIN_ABOVE
    # a pure cast changes nothing that training did: no norm-growth vote either way
    assert norm_growth_fraction(P, {k: v.bfloat16().float() for k, v in P.items()}) is None


def test_an_edge_between_copy_groups_takes_its_relation_from_the_representatives():
    """A permuted duplicate's pair with the quantized copy says 'finetune' (misaligned); the original's says 'quantized'."""
    pairs = [
        PairEvidence("ft", "ft-perm", 0.0, 0.0, "duplicate"),
        PairEvidence("ft", "q", 0.010, 4.6, "quantized"),
        PairEvidence("ft-perm", "q", 0.009, 0.0, "finetune"),
    ]
    tree = recover_family(["ft", "ft-perm", "q"], pairs)
    edges = {(e.parent, e.child): e.relation for e in tree.edges}
    assert edges == {("ft", "q"): "quantized", ("ft", "ft-perm"): "duplicate"}
