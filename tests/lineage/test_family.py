"""The family solver on its own: weight maps and stored statistics in, edges out (no registry)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import torch

from mothertree.lineage.direction import float_grid_parent
from mothertree.lineage.family import (
    MERGE_PARENT_OPTIONS,
    ModelFacts,
    PairStat,
    align_blocks,
    solve_family,
)

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _model(seed: int, blocks: int = 2, d: int = 32, h: int = 64) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        (role, b): torch.randn(*shape, generator=g) * 0.05
        for b in range(blocks)
        for role, shape in (("attn.q", (d, d)), ("attn.k", (d, d)), ("attn.v", (d, d)), ("attn.o", (d, d)),
                            ("mlp.gate", (h, d)), ("mlp.up", (h, d)), ("mlp.down", (d, h)))
    }


def _finetune(w, seed, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * v.std() * torch.randn(v.shape, generator=g) for k, v in w.items()}


def _quantize(w):
    out = {}
    for k, v in w.items():
        s = v.abs().amax(dim=1, keepdim=True) / 127
        out[k] = (v / s).round() * s
    return out


def _facts(names, days=None):
    return {n: ModelFacts(n, created_at=None if days is None else T0 + timedelta(days=days[n])) for n in names}


class _Recorder:
    """A ``test_pair`` callback that records the pairs asked for."""

    def __init__(self, dependent=True):
        self.asked, self.dependent = [], dependent

    def __call__(self, a, b):
        self.asked.append((a, b))
        return PairStat(self.dependent, -30.0 if self.dependent else -0.5)


def _edges(solution):
    return {(e.parent, e.child): e.relation for e in solution.edges}


def test_chain_with_stored_stats_and_timestamps():
    r = _model(0)
    c = _finetune(r, 1)
    g = _finetune(c, 2)
    weights = {"a-root": r, "b-child": c, "c-grandchild": g}
    stats = {("a-root", "b-child"): PairStat(True, -40.0), ("b-child", "c-grandchild"): PairStat(True, -40.0)}
    rec = _Recorder()
    sol = solve_family(list(weights), weights, _facts(weights, {"a-root": 0, "b-child": 1, "c-grandchild": 2}),
                       stats, test_pair=rec)
    assert _edges(sol) == {("a-root", "b-child"): "finetune", ("b-child", "c-grandchild"): "finetune"}
    # Every edge carries a test: none was missing, so none was run.
    assert rec.asked == [] and sol.tested == ()
    e = next(e for e in sol.edges if e.child == "b-child")
    assert e.pair == ("a-root", "b-child") and e.relation_evidence.relation == "finetune"
    assert e.direction.parent == "a" and 0.5 < e.direction_confidence <= 1 and e.merge is None


def test_a_pair_stored_as_independent_is_never_an_edge():
    r = _model(0)
    c1, c2 = _finetune(r, 1), _finetune(r, 2)
    weights = {"r": r, "c1": c1, "c2": c2}
    stats = {("c1", "r"): PairStat(True, -40.0), ("c2", "r"): PairStat(True, -40.0), ("c1", "c2"): PairStat(False, -0.1)}
    sol = solve_family(list(weights), weights, _facts(weights, {"r": 0, "c1": 1, "c2": 2}), stats, test_pair=_Recorder())
    assert _edges(sol) == {("r", "c1"): "finetune", ("r", "c2"): "finetune"}


def test_missing_edge_test_is_run_and_reported():
    r = _model(0)
    c = _finetune(r, 1)
    weights = {"p": r, "q": c}
    rec = _Recorder()
    sol = solve_family(["p", "q"], weights, _facts(weights, {"p": 0, "q": 1}), {}, test_pair=rec)
    assert _edges(sol) == {("p", "q"): "finetune"}
    assert rec.asked == [("p", "q")] and sol.tested == (("p", "q"),)


def test_quantized_copy_and_merge():
    r = _model(0)
    c1, c2 = _finetune(r, 1), _finetune(r, 2)
    m = {k: 0.5 * c1[k] + 0.5 * c2[k] for k in r}
    q = _quantize(c1)
    weights = {"r": r, "c1": c1, "c2": c2, "m": m, "q": q}
    days = {"r": 0, "c1": 1, "c2": 1, "m": 3, "q": 2}
    facts = {n: ModelFacts(n, created_at=T0 + timedelta(days=d), dtypes=("I8",) if n == "q" else ()) for n, d in days.items()}
    sol = solve_family(list(weights), weights, facts, {}, test_pair=_Recorder())
    edges = _edges(sol)
    assert edges[("c1", "q")] == "quantized"
    assert edges[("c1", "m")] == "merge" and edges[("c2", "m")] == "merge"
    assert edges[("r", "c1")] == "finetune" and edges[("r", "c2")] == "finetune"
    merge = next(e.merge for e in sol.edges if e.child == "m")
    assert merge is not None and merge.is_merge
    # The quantized copy of c1 is not a second merge parent candidate beside c1.
    assert ("q", "m") not in edges
    assert MERGE_PARENT_OPTIONS == 6


def test_duplicates_hang_off_the_first_created():
    r = _model(0)
    c = _finetune(r, 1)
    weights = {"orig": c, "copy": {k: v.clone() for k, v in c.items()}, "r": r}
    facts = _facts(weights, {"r": 0, "orig": 1, "copy": 2})
    sol = solve_family(list(weights), weights, facts, {}, test_pair=_Recorder())
    assert _edges(sol) == {("r", "orig"): "finetune", ("orig", "copy"): "duplicate"}


def test_no_comparable_tensors_falls_back_to_the_p_value():
    g = torch.Generator().manual_seed(0)
    a = {("other:x", None): torch.randn(8, 8, generator=g)}
    b = {("other:y", None): torch.randn(8, 8, generator=g)}
    rec = _Recorder()
    sol = solve_family(["a", "b"], {"a": a, "b": b}, _facts("ab"), {}, test_pair=rec)
    # classify_relation finds nothing aligned: the distance comes from the test, run once.
    assert rec.asked == [("a", "b")] and len(sol.edges) == 1 and sol.edges[0].relation == "unknown"


def test_align_blocks_renumbers_both_sides():
    a = {("mlp.up", 0): 1, ("mlp.up", 1): 2, ("attn.q", 1): 3}
    b = {("mlp.up", 0): 4, ("mlp.up", 3): 5, ("attn.q", 3): 6}
    assert align_blocks(a, b, [(1, 3)]) == ({("mlp.up", 0): 2, ("attn.q", 0): 3}, {("mlp.up", 0): 5, ("attn.q", 0): 6})


def test_results_are_frozen():
    r = _model(0)
    weights = {"p": r, "q": _finetune(r, 1)}
    sol = solve_family(["p", "q"], weights, _facts(weights), {}, test_pair=_Recorder())
    with pytest.raises(AttributeError):
        sol.edges[0].relation = "merge"  # type: ignore[misc]


def test_chains_are_checked_by_containment_and_siblings_stay_siblings():
    r = _model(0)
    c = _finetune(r, 1)
    weights = {"a-root": r, "b-child": c, "c-grandchild": _finetune(c, 2)}
    facts = _facts(weights, {"a-root": 0, "b-child": 1, "c-grandchild": 2})
    sol = solve_family(list(weights), weights, facts, {}, test_pair=_Recorder())
    assert _edges(sol) == {("a-root", "b-child"): "finetune", ("b-child", "c-grandchild"): "finetune"}
    chained = next(e for e in sol.edges if e.child == "c-grandchild")
    assert chained.containment is not None and chained.containment > 0.97 and not chained.low_confidence
    assert chained.tree_dict()["containment"] == chained.containment
    # Two fine-tunes of one parent sharing most of their change: closer to each
    # other than to the parent, yet siblings (containment about 0.8): never chained.
    common = _finetune(r, 3)
    sib = {"a-root": r, "b-one": _finetune(common, 4, scale=0.15), "c-two": _finetune(common, 5, scale=0.15)}
    facts = _facts(sib, {"a-root": 0, "b-one": 1, "c-two": 2})
    sol = solve_family(list(sib), sib, facts, {}, test_pair=_Recorder())
    assert _edges(sol) == {("a-root", "b-one"): "finetune", ("a-root", "c-two"): "finetune"}


def _sub_step(w, seed, fraction):
    """A light fine-tune saved in bf16: changes of ``fraction`` of a bf16 step (relative 2^-8), then rounded."""
    g = torch.Generator().manual_seed(seed)
    return {k: (v + fraction * 2.0 ** -8 * v.abs().mean() * torch.randn(v.shape, generator=g)).bfloat16().float()
            for k, v in w.items()}


def test_light_bf16_fine_tunes_of_a_float32_root_hang_from_the_root():
    """Changes below one rounding step: the float grid orients them, and siblings are not chained."""
    r = _model(0, d=48, h=96)
    kids = {f"b-kid{i}": _sub_step(r, 10 + i, f) for i, f in enumerate((0.01, 0.06, 0.2))}
    weights = {"a-root": r, **kids}
    names = {"a-root": 0, **{k: 0 for k in kids}}
    sol = solve_family(list(weights), weights, _facts(names), {}, test_pair=_Recorder())
    assert {(e.parent, e.child) for e in sol.edges} == {("a-root", k) for k in kids}
    assert all(e.direction_confidence > 0.8 for e in sol.edges)  # without the grid vote: a child is the root


def test_the_float_grid_names_the_parent_either_way():
    r = _model(1, d=48, h=96)
    child = _sub_step(r, 2, 0.05)
    assert float_grid_parent(r, child) == "a" and float_grid_parent(child, r) == "b"
    # a float32 fine-tune of a bf16 model starts on the grid and moves by training steps
    b16 = {k: v.bfloat16().float() for k, v in r.items()}
    trained = {k: v + 1e-6 * torch.sign(torch.randn(v.shape, generator=torch.Generator().manual_seed(3)))
               for k, v in b16.items()}
    assert float_grid_parent(b16, trained) == "a"
    # ... and with steps of a third or more of a rounding step its residual is no longer near 0: no vote,
    # never the false "rounded side" vote its mean alone would give
    for f in (0.3, 0.6):
        g = torch.Generator().manual_seed(6)
        far = {k: v + f * 2.0 ** -8 * 0.04 * torch.sign(torch.randn(v.shape, generator=g)) for k, v in b16.items()}
        assert float_grid_parent(b16, far) is None
    # equal precisions, or changes far beyond a step: no vote
    assert float_grid_parent(r, _finetune(r, 4)) is None
    assert float_grid_parent(b16, _sub_step(b16, 5, 0.05)) is None
