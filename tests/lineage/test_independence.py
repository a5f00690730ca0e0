"""Exact independence tests: p-values in log space, calibration under the null, power, properties."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from mothertree.lineage.independence import (
    NULL_UNIFORM_STATISTICS,
    PERMUTATION_INVARIANT_STATISTICS,
    STATISTICS,
    SYMMETRIC_STATISTICS,
    aligned_weight_similarity,
    apply_null_symmetry,
    exact_test,
    independence_test,
    permutation_test,
    tensor_evidence,
)
from mothertree.lineage.matching import (
    aligned_cosine_test,
    chi2_sf_log10,
    fisher_combine,
    spearman_identity_log10_p,
    t_sf_log10,
    unit_matching_test,
)
from mothertree.lineage.robust import BlockActivations, match_consistency_test

D, H, L, V = 32, 64, 4, 100


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_model(seed: int, *, d: int = D, h: int = H, blocks: int = L, vocab: int = V) -> dict:
    """A random-init GLU WeightMap: a valid independent draw under the null."""
    g = _gen(seed)
    w = {("embed.tokens", None): torch.randn(vocab, d, generator=g)}
    for i in range(blocks):
        for role, shape in (("attn.q", (d, d)), ("attn.k", (d, d)), ("attn.v", (d, d)), ("attn.o", (d, d)),
                            ("mlp.gate", (h, d)), ("mlp.up", (h, d)), ("mlp.down", (d, h))):
            w[role, i] = torch.randn(*shape, generator=g) / math.sqrt(shape[1])
    return w


def noisy(w: dict, scale: float, seed: int) -> dict:
    g = _gen(seed)
    return {k: v + scale * v.std() * torch.randn(v.shape, generator=g) for k, v in w.items()}


def prune_rows(w: dict, keep: int, seed: int) -> dict:
    """Keep ``keep`` hidden units per block (sorted), as structured pruning does."""
    g = _gen(seed)
    out = dict(w)
    for (role, block), t in w.items():
        if role == "mlp.up":
            idx = torch.randperm(t.shape[0], generator=g)[:keep].sort().values
            out["mlp.gate", block] = w["mlp.gate", block][idx]
            out["mlp.up", block] = w["mlp.up", block][idx]
            out["mlp.down", block] = w["mlp.down", block][:, idx]
    return out


# ------------------------------------------------------------------ log-space tails


@pytest.mark.parametrize("t, df", [(0.5, 5), (3.0, 10), (10.0, 50), (30.0, 100), (40.0, 4000)])
def test_t_tail_matches_scipy_where_scipy_is_finite(t, df):
    assert t_sf_log10(t, df) == pytest.approx(stats.t.logsf(t, df) / math.log(10), rel=1e-9)


@pytest.mark.parametrize("x, df", [(5.0, 10), (50.0, 10), (200.0, 20), (1000.0, 8)])
def test_chi2_tail_matches_scipy_where_scipy_is_finite(x, df):
    assert chi2_sf_log10(x, df) == pytest.approx(stats.chi2.logsf(x, df) / math.log(10), rel=1e-9)


def test_tails_stay_finite_where_scipy_underflows():
    assert stats.t.logsf(1e4, 4000) == -np.inf
    lt = t_sf_log10(1e4, 4000)
    assert math.isfinite(lt) and lt < -300
    # the t tail falls off like t^-df: one decade of t is df decades of p
    assert t_sf_log10(1e5, 4000) - lt == pytest.approx(-4000, rel=1e-3)
    lc = fisher_combine([-400.0] * 32)
    assert math.isfinite(lc) and lc < -12000


def test_identical_matching_gets_exact_floor_of_one_over_n_factorial():
    r, lp = spearman_identity_log10_p(range(10), range(10))
    assert (r, lp) == (1.0, pytest.approx(-math.log10(math.factorial(10))))


# ------------------------------------------------------------------ calibration under the null


def _ks_uniform(p):
    p = np.asarray(p)
    return stats.kstest(p, "uniform").pvalue, float((p < 0.01).mean())


def test_subsampled_rectangular_matching_is_uniform_under_the_null():
    g = _gen(0)
    p = [
        10 ** unit_matching_test(torch.randn(32, 16, generator=g), torch.randn(40, 16, generator=g),
                                 max_units=20, rng=k).p_value_log10
        for k in range(200)
    ]
    ks, fpr = _ks_uniform(p)
    assert ks > 0.01 and fpr <= 0.02


def test_aligned_statistic_is_uniform_under_the_null():
    g = _gen(1)
    p = [aligned_cosine_test(torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)).p_value
         for _ in range(200)]
    ks, fpr = _ks_uniform(p)
    assert ks > 0.01 and fpr <= 0.02


def test_exact_test_over_blocks_and_residual_is_calibrated_on_independent_pairs():
    results = [exact_test(random_model(2 * k, h=24, blocks=3), random_model(2 * k + 1, h=24, blocks=3),
                          max_units=16, rng=k) for k in range(120)]
    # Fisher over the residual and block matchings: exactly uniform
    fisher = [10 ** next(t.p_value_log10 for t in r.tests if t.name == "phi_u") for r in results]
    ks, fpr = _ks_uniform(fisher)
    assert ks > 0.01 and fpr <= 0.02
    # the reported p (Cauchy combination with the aligned test) is uniform too
    ks, fpr = _ks_uniform([r.p_value for r in results])
    assert ks > 0.01 and fpr <= 0.02


# ------------------------------------------------------------------ power on dependent pairs


@pytest.mark.parametrize(
    "derive",
    [
        pytest.param(lambda w: noisy(w, 0.5, 7), id="fine-tuned"),
        pytest.param(lambda w: noisy(w, 1.5, 7), id="heavily-fine-tuned"),
        pytest.param(lambda w: prune_rows(w, 40, 7), id="row-pruned"),
        pytest.param(lambda w: {k: (v.half().float()) for k, v in w.items()}, id="quantized"),
        pytest.param(lambda w: {k: 0.5 * v + 0.5 * o for (k, v), o in zip(w.items(), random_model(99).values())},
                     id="merged"),
        pytest.param(lambda w: {**w, **{k: v for k, v in random_model(98).items() if k[1] == 2}},
                     id="reinitialised-block"),
    ],
)
def test_exact_test_rejects_derived_models(derive):
    parent = random_model(0)
    r = exact_test(parent, derive(parent))
    assert r.p_value_log10 < -6 and r.dependent


def test_siblings_from_one_ancestor_are_dependent():
    parent = random_model(0)
    assert exact_test(noisy(parent, 1.0, 1), noisy(parent, 1.0, 2)).p_value_log10 < -6


def test_exact_test_recovers_a_depth_pruned_block_map():
    parent = random_model(0, blocks=6)
    kept = (0, 2, 3, 5)
    child = {}
    for (role, block), t in prune_rows(noisy(parent, 0.3, 1), 40, 2).items():
        if block is None:
            child[role, None] = t
        elif block in kept:
            child[role, kept.index(block)] = t
    r = exact_test(parent, child)
    assert r.block_map == ((0, 0), (2, 1), (3, 2), (5, 3))
    assert r.dependent and all(b.kept_units is not None and len(b.kept_units) == 40 for b in r.blocks)


def test_residual_test_sees_shared_embeddings_when_mlps_are_retrained():
    a = random_model(0)
    b = {k: (v if k[0].startswith(("embed", "attn")) else random_model(1)[k]) for k, v in a.items()}
    b = noisy(b, 1.0, 3)
    r = exact_test(a, b)
    residual = [t for t in r.tests if t.name == "residual_matching"][0]
    assert residual.p_value_log10 < -6 and r.dependent
    assert max(b.matching_p_value_log10 for b in r.blocks) > -3


def test_permuted_copy_defeats_exact_test_but_not_match():
    parent = random_model(0)
    child = apply_null_symmetry(parent, rng=5)
    assert not exact_test(parent, child).dependent
    g = _gen(3)
    acts = {i: BlockActivations("glu", torch.randn(H, 300, generator=g), torch.randn(H, 300, generator=g))
            for i in range(L)}
    perm = {i: torch.randperm(H, generator=g) for i in range(L)}
    acts_child = {i: BlockActivations("glu", acts[i].a[perm[i]], -acts[i].b[perm[i]]) for i in range(L)}
    r = independence_test(parent, child, activations_a=acts, activations_b=acts_child)
    assert r.method == "match" and r.p_value_log10 < -6
    assert any("Cauchy combination" in n for n in r.notes)


# ------------------------------------------------------------------ PERMTEST and the null's symmetry


def test_null_symmetry_preserves_the_function_of_a_glu_block():
    w = random_model(0, blocks=1)
    x = torch.randn(5, D, generator=_gen(1))

    def mlp(m, x):
        h = torch.nn.functional.silu(x @ m["mlp.gate", 0].T) * (x @ m["mlp.up", 0].T)
        return h @ m["mlp.down", 0].T

    p = apply_null_symmetry(w, rng=4)
    # the residual permutation relabels inputs and outputs alike: find it from the embeddings
    emb, emb_p = w["embed.tokens", None], p["embed.tokens", None]
    sigma = [int(torch.nonzero((emb_p == emb[:, [j]]).all(0))[0]) for j in range(D)]
    inv = torch.empty(D, dtype=torch.long)
    inv[torch.tensor(sigma)] = torch.arange(D)
    torch.testing.assert_close(mlp(p, x[:, inv])[:, torch.tensor(sigma)], mlp(w, x), rtol=1e-5, atol=1e-5)


def test_permtest_floor_and_null():
    parent = random_model(0, blocks=2)
    dep = permutation_test(parent, noisy(parent, 0.5, 1), n_permutations=19, rng=0)
    assert dep.p_value == pytest.approx(1 / 20) and dep.method == "permtest"
    p = [permutation_test(random_model(2 * k, blocks=1), random_model(2 * k + 1, blocks=1),
                          n_permutations=19, rng=k).p_value for k in range(40)]
    assert np.mean(np.array(p) <= 0.05) <= 0.15


# ------------------------------------------------------------------ declared properties


def _stat(name, a, b):
    if name == "unit_matching":
        return unit_matching_test(a, b).statistic
    if name == "aligned_cosine":
        return aligned_cosine_test(a, b).statistic
    if name == "aligned_weight_similarity":
        return aligned_weight_similarity({("mlp.up", 0): a}, {("mlp.up", 0): b})
    # a second view that moves with the same unit permutation, as U X does with G X
    mix = torch.randn(a.shape[1], a.shape[1], generator=_gen(5))
    acts_a = BlockActivations("glu", a, a @ mix)
    acts_b = BlockActivations("glu", b, b @ mix)
    return match_consistency_test(acts_a, acts_b).statistic


def test_property_sets_cover_every_statistic():
    for s in (SYMMETRIC_STATISTICS, PERMUTATION_INVARIANT_STATISTICS, NULL_UNIFORM_STATISTICS):
        assert s <= STATISTICS
    assert STATISTICS == {"unit_matching", "aligned_cosine", "match_consistency", "aligned_weight_similarity"}


@pytest.mark.parametrize("name", sorted(STATISTICS))
def test_symmetry_is_as_declared(name):
    g = _gen(11)
    a = torch.randn(20, 40, generator=g)
    b = 0.3 * a + torch.randn(20, 40, generator=g)
    same = math.isclose(_stat(name, a, b), _stat(name, b, a), rel_tol=1e-6, abs_tol=1e-9)
    assert same == (name in SYMMETRIC_STATISTICS)


@pytest.mark.parametrize("name", sorted(STATISTICS))
def test_permutation_invariance_is_as_declared(name):
    g = _gen(12)
    a = torch.randn(20, 40, generator=g)
    b = 0.3 * a + torch.randn(20, 40, generator=g)
    perm = torch.randperm(20, generator=g)
    same = math.isclose(_stat(name, a, b), _stat(name, a[perm], b), rel_tol=1e-6, abs_tol=1e-9)
    assert same == (name in PERMUTATION_INVARIANT_STATISTICS)


@pytest.mark.parametrize("name", sorted(NULL_UNIFORM_STATISTICS - {"aligned_weight_similarity"}))
def test_declared_null_uniform_statistics_are_uniform(name):
    g = _gen(13)
    test = unit_matching_test if name == "unit_matching" else aligned_cosine_test
    p = [test(torch.randn(24, 12, generator=g), torch.randn(24, 12, generator=g)).p_value for _ in range(200)]
    assert _ks_uniform(p)[0] > 0.01


# ------------------------------------------------------------------ results and inputs


def test_auto_result_serialises_to_strict_json():
    parent = random_model(0)
    r = independence_test(parent, noisy(parent, 0.3, 1))
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["method"] == "exact" and d["dependent"] is True and d["p_value"] == 0.0
    assert d["p_value_log10"] < -100 and len(d["blocks"]) == L
    assert d["block_map"] == [[i, i] for i in range(L)]
    assert "weights-only: no forward pass available" in d["notes"]


def test_tensor_evidence_names_the_shared_tensors():
    a, b = random_model(0), random_model(1)
    b["attn.q", 1] = a["attn.q", 1].clone()
    shared = {(t.role, t.block) for t in tensor_evidence(a, b) if t.aligned_p_value_log10 < -6}
    assert shared == {("attn.q", 1)}


def test_max_units_keeps_the_test_exact_and_bounds_its_size():
    parent = random_model(0)
    r = exact_test(parent, noisy(parent, 0.5, 1), max_units=10)
    assert all(b.n_units == 10 for b in r.blocks) and r.dependent


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"method": "fast"}, ValueError, "method: expected one of 'auto', 'exact', 'match', 'permtest', got 'fast'"),
        ({"alpha": 1.5}, ValueError, "alpha: expected a float in (0, 1), got 1.5"),
        ({"max_units": 2}, ValueError, "max_units: expected an int >= 3, got 2"),
        ({"activations_a": {}}, ValueError, "activations_a and activations_b: expected both or neither, got only one"),
    ],
)
def test_bad_inputs_say_what_was_expected(kwargs, error, message):
    w = random_model(0, blocks=1)
    with pytest.raises(error) as e:
        independence_test(w, w, **kwargs)
    assert str(e.value) == message


def test_no_shared_residual_basis_and_no_activations_is_an_error():
    with pytest.raises(ValueError) as e:
        independence_test(random_model(0, d=32), random_model(1, d=16))
    assert str(e.value) == (
        "activations_a and activations_b: expected activations since the exact test cannot run "
        "(no shared residual basis (hidden sizes [32] and [16])), got none"
    )


def test_weight_map_values_are_checked():
    with pytest.raises(TypeError) as e:
        exact_test({("mlp.up", 0): [[1.0]]}, random_model(0))
    assert str(e.value) == "a['mlp.up', 0]: expected a torch.Tensor or numpy array, got list"
