"""phi_MATCH on real forward passes, localization, and building forward models from folders."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from scipy import stats

from mothertree.indexer.forward import find_mlp_modules, load_forward_model, seeded_inputs
from mothertree.indexer.activations import collect_mlp_activations
from mothertree.lineage.independence import match_test
from mothertree.lineage.robust import BlockActivations, block_activations, localize, match_consistency_test, monotone_block_map
from mothertree.registry.errors import UnreadableWeightsError

VOCAB = 128


def tiny_llama(seed: int, *, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=4)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()


def activations(model, family: str):
    return block_activations(collect_mlp_activations(model, find_mlp_modules(model, family), seeded_inputs(VOCAB, 4, 32, seed=0)))


@torch.no_grad()
def disguise(model, seed: int):
    """Fine-tune-sized noise, then permute hidden units, flip unit signs and permute the residual stream.

    Everything after the noise preserves the function; no weight keeps its index.
    """
    g = torch.Generator().manual_seed(seed)
    child = tiny_llama(0, layers=model.config.num_hidden_layers)
    child.load_state_dict(model.state_dict())
    for p in child.parameters():
        p.add_(0.05 * p.std() * torch.randn(p.shape, generator=g))
    d = child.config.hidden_size
    res = torch.randperm(d, generator=g)
    child.model.embed_tokens.weight.copy_(child.model.embed_tokens.weight[:, res])
    child.lm_head.weight.copy_(child.lm_head.weight[:, res])
    child.model.norm.weight.copy_(child.model.norm.weight[res])
    for layer in child.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            lin.weight.copy_(lin.weight[:, res])
        for lin in (attn.o_proj, mlp.down_proj):
            lin.weight.copy_(lin.weight[res])
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight.copy_(norm.weight[res])
        hid = torch.randperm(mlp.up_proj.weight.shape[0], generator=g)
        sign = torch.where(torch.rand(len(hid), generator=g) < 0.5, -1.0, 1.0)
        mlp.gate_proj.weight.copy_(mlp.gate_proj.weight[hid])
        mlp.up_proj.weight.copy_(mlp.up_proj.weight[hid] * sign[:, None])
        mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, hid] * sign[None, :])
    return child


def test_disguise_preserves_the_function_up_to_noise():
    parent = tiny_llama(1)
    ids = seeded_inputs(VOCAB, 2, 16, seed=3)
    child = disguise(parent, 2)
    torch.testing.assert_close(child(ids).logits, parent(ids).logits, atol=0.05, rtol=0.05)


def test_match_rejects_a_disguised_fine_tune():
    parent = tiny_llama(1)
    r = match_test(activations(parent, "llama"), activations(disguise(parent, 2), "llama"))
    assert r.p_value_log10 < -6 and r.dependent and r.method == "match"
    assert json.loads(json.dumps(r.to_dict(), allow_nan=False))["block_map"] == [[0, 0], [1, 1]]


def test_match_is_calibrated_on_independent_random_init_models():
    p = np.array([
        match_test(activations(tiny_llama(2 * k), "llama"), activations(tiny_llama(2 * k + 1), "llama")).p_value
        for k in range(40)
    ])
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert (p < 0.01).mean() <= 0.025


def test_plain_mlp_views_are_collected_and_match_themselves_only():
    acts = [activations(tiny_gpt2(k), "gpt2") for k in range(3)]
    assert {b: (a.kind, tuple(a.a.shape)) for b, a in acts[0].items()} == {0: ("plain", (128, 128)),
                                                                          1: ("plain", (128, 128))}
    assert match_test(acts[0], acts[0]).p_value_log10 < -6
    assert not match_test(acts[1], acts[2]).dependent


def test_gpt2_pre_activation_and_dt_x_views_are_what_the_docstring_says():
    model = tiny_gpt2(0)
    mods = find_mlp_modules(model, "gpt2")
    ids = seeded_inputs(VOCAB, 1, 8, seed=0)
    seen = {}
    h = mods[0]["mlp.in"].register_forward_hook(lambda m, i, o: seen.update(x=i[0].reshape(-1, 32)))
    acts = collect_mlp_activations(model, mods, ids)
    model(ids)
    h.remove()
    w_in = mods[0]["mlp.in"].weight.T  # Conv1D stores [in, out]
    d = mods[0]["mlp.out"].weight.T  # canonical D: [hidden, intermediate]
    torch.testing.assert_close(acts[0].a, w_in @ seen["x"].T + mods[0]["mlp.in"].bias[:, None])
    torch.testing.assert_close(acts[0].b, d.T @ seen["x"].T)


# ------------------------------------------------------------------ localization


def _synthetic(seed: int, blocks: int, units: int = 24, inputs: int = 200):
    g = torch.Generator().manual_seed(seed)
    return {i: BlockActivations("glu", torch.randn(units, inputs, generator=g), torch.randn(units, inputs, generator=g))
            for i in range(blocks)}


def test_localize_recovers_a_pruned_childs_block_map_and_kept_units():
    parent = _synthetic(0, 6)
    g = torch.Generator().manual_seed(1)
    kept_blocks = (0, 2, 3, 5)
    kept_units = {i: torch.randperm(24, generator=g)[:16].sort().values for i in kept_blocks}
    child = {k: BlockActivations("glu", parent[i].a[kept_units[i]] + 0.3 * torch.randn(16, 200, generator=g),
                                 parent[i].b[kept_units[i]]) for k, i in enumerate(kept_blocks)}
    loc = localize(parent, child)
    assert loc.block_map == ((0, 0), (2, 1), (3, 2), (5, 3))
    for i, _j, units_a, _units_b in loc.kept_units:
        assert set(units_a) <= set(kept_units[i].tolist()) and len(units_a) >= 14
    r = match_test(parent, child)
    assert r.block_map == loc.block_map and r.p_value_log10 < -6


def test_monotone_block_map_is_the_best_strictly_increasing_map():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = -rng.exponential(size=(3, 5))
        best = max(itertools.combinations(range(5), 3), key=lambda js: -sum(m[i, j] for i, j in enumerate(js)))
        assert monotone_block_map(m) == tuple(enumerate(best))
        assert monotone_block_map(m.T) == tuple((j, i) for i, j in enumerate(best))


def test_sign_flips_and_width_changes_do_not_hide_a_derivation():
    x = _synthetic(3, 1, units=30)[0]
    g = torch.Generator().manual_seed(4)
    keep = torch.randperm(30, generator=g)[:20]
    flip = torch.where(torch.rand(20, generator=g) < 0.5, -1.0, 1.0)[:, None]
    y = BlockActivations("glu", x.a[keep], x.b[keep] * flip)
    r = match_consistency_test(x, y)
    assert r.p_value_log10 < -6 and r.agreement == 1.0
    assert r.units_b == tuple(range(20)) and sorted(r.units_a) == sorted(keep.tolist())


@pytest.mark.parametrize(
    "x, y, message",
    [
        (BlockActivations("glu", torch.ones(4, 5), torch.ones(4, 5)),
         BlockActivations("plain", torch.ones(4, 5), torch.ones(4, 5)),
         "x and y: expected the same block kind, got 'glu' and 'plain'"),
        (BlockActivations("glu", torch.ones(4, 5), torch.ones(4, 5)),
         BlockActivations("glu", torch.ones(4, 6), torch.ones(4, 6)),
         "x and y: expected activations over the same inputs, got 5 and 6 columns"),
    ],
)
def test_match_consistency_rejects_incomparable_blocks(x, y, message):
    with pytest.raises(ValueError) as e:
        match_consistency_test(x, y)
    assert str(e.value) == message


def test_block_activations_check_their_views():
    with pytest.raises(ValueError) as e:
        BlockActivations("glu", torch.ones(4, 5), torch.ones(3, 5))
    assert str(e.value) == "a and b: expected the same shape [units, inputs], got (4, 5) and (3, 5)"


# ------------------------------------------------------------------ forward models from folders


def test_load_forward_model_from_a_saved_folder(tmp_path):
    tiny_llama(5).save_pretrained(tmp_path / "llama")
    tiny_gpt2(5).save_pretrained(tmp_path / "gpt2")
    llama = load_forward_model(tmp_path / "llama")
    gpt2 = load_forward_model(tmp_path / "gpt2")
    assert (llama.architecture, llama.vocab_size, sorted(llama.mlp_modules[1])) == (
        "llama", VOCAB, ["mlp.down", "mlp.gate", "mlp.up"])
    assert (gpt2.architecture, sorted(gpt2.mlp_modules[0])) == ("gpt2", ["mlp.in", "mlp.out"])
    loaded = activations(llama.model, "llama")
    direct = activations(tiny_llama(5), "llama")
    torch.testing.assert_close(loaded[1].b, direct[1].b)


def test_load_forward_model_explains_what_is_missing(tmp_path):
    with pytest.raises(UnreadableWeightsError) as e:
        load_forward_model(tmp_path)
    assert str(e.value) == (
        f"{tmp_path}: cannot build a forward pass: no config.json in the folder; "
        "use the weights-only independence tests"
    )
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "not-a-model"}))
    with pytest.raises(UnreadableWeightsError) as e:
        load_forward_model(tmp_path)
    assert "transformers does not know model_type 'not-a-model'" in str(e.value)


def test_seeded_inputs_are_reproducible_and_in_range():
    a = seeded_inputs(50, 3, 7, seed=9)
    assert a.shape == (3, 7) and a.dtype == torch.long and int(a.max()) < 50
    assert torch.equal(a, seeded_inputs(50, 3, 7, seed=9))
    assert not torch.equal(a, seeded_inputs(50, 3, 7, seed=10))
