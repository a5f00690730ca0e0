"""Streaming weight access, the block-by-block forward runner and sequential early stopping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from mothertree.indexer.forward import build_block_runner, load_forward_model, seeded_inputs
from mothertree.indexer.streaming import StreamingWeightMap
from mothertree.indexer.weights import load_weight_map
from mothertree.indexer.activations import collect_mlp_activations, mlp_activation_hooks
from mothertree.lineage.independence import independence_test, look_schedule


@pytest.mark.parametrize("kind", ["llama", "gpt2", "llama-bin", "llama-sharded"])
def test_streaming_map_equals_the_loaded_map(tiny_models, kind):
    wm = StreamingWeightMap(tiny_models[kind])
    full = load_weight_map(tiny_models[kind])
    assert list(wm) == sorted(full, key=lambda k: (-1 if k[1] is None else k[1], k[0]))
    for key, t in full.items():
        assert wm.shape_of(key) == tuple(t.shape)
        got = wm[key]
        assert got.dtype == torch.float32 and got.is_contiguous() and torch.equal(got, t)
    assert wm.blocks == (0, 1)
    assert wm.float32_bytes == sum(4 * t.numel() for t in full.values())
    assert {k[0] for k in wm.block_keys(None)} >= {"embed.tokens"}


def test_streaming_map_holds_no_tensors(tiny_models):
    wm = StreamingWeightMap(tiny_models["llama"])
    t = wm[("mlp.up", 0)]
    t.mul_(0)  # the caller owns its copy: the next read is unchanged
    assert float(wm[("mlp.up", 0)].abs().sum()) > 0
    with pytest.raises(KeyError):
        wm[("mlp.up", 7)]


def _runner_matches_full_model(path):
    runner = build_block_runner(path, device="cpu")
    ids = seeded_inputs(runner.vocab_size, 2, 16, seed=0)
    got = runner.collect(ids, mlp_activation_hooks)
    first = runner.collect(ids, mlp_activation_hooks, n_blocks=1)
    fm = load_forward_model(path)
    ref = collect_mlp_activations(fm.model, fm.mlp_modules, ids)
    assert list(got) == list(ref) and list(first) == [0]
    for b in ref:
        torch.testing.assert_close(got[b].a, ref[b].a)
        torch.testing.assert_close(got[b].b, ref[b].b)
    torch.testing.assert_close(first[0].a, ref[0].a)
    # every parameter is back on the meta device: nothing kept between calls
    assert {p.device.type for p in runner.model.parameters()} == {"meta"}


@pytest.mark.parametrize("kind", ["llama", "gpt2", "llama-bin", "llama-sharded"])
def test_block_runner_matches_the_whole_model(tiny_models, kind):
    _runner_matches_full_model(tiny_models[kind])


def test_block_runner_runs_grouped_query_attention(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=64, max_position_embeddings=32, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "gqa")
    _runner_matches_full_model(tmp_path / "gqa")


def test_block_runner_refuses_a_folder_without_config(tiny_models, tmp_path):
    from mothertree.registry.errors import UnreadableWeightsError

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "model.safetensors").write_bytes((tiny_models["llama"] / "model.safetensors").read_bytes())
    with pytest.raises(UnreadableWeightsError, match="no config.json.*weights-only"):
        build_block_runner(tmp_path / "x")


# ------------------------------------------------------------------ sequential testing


def _model(seed: int, blocks: int = 8, h: int = 300, d: int = 32) -> dict:
    g = torch.Generator().manual_seed(seed)
    w = {}
    for i in range(blocks):
        w["mlp.up", i] = torch.randn(h, d, generator=g)
        w["attn.q", i] = torch.randn(d, d, generator=g)
    return w


def test_look_schedule():
    assert look_schedule(32) == (1, 2, 4, 8, 16, 32)
    assert look_schedule(3) == (1, 2, 3)
    assert look_schedule(1) == (1,)


def test_sequential_test_stops_after_one_block_on_a_derived_pair():
    a = _model(0)
    b = {k: v + 0.5 * torch.randn(v.shape, generator=torch.Generator().manual_seed(9)) for k, v in a.items()}
    r = independence_test(a, b, sequential=True)
    assert r.blocks_read == 1 and r.p_value_log10 < -12 and r.dependent
    assert "sequential: stopped after 1 of 8 blocks" in r.notes[-1]
    assert r.to_dict()["blocks_read"] == 1


def test_sequential_test_is_calibrated_and_unchanged_on_independent_pairs():
    seq, plain = [], []
    for k in range(60):
        a, b = _model(2 * k, blocks=4, h=40, d=12), _model(2 * k + 1, blocks=4, h=40, d=12)
        r = independence_test(a, b, sequential=True)
        assert r.blocks_read == 4
        seq.append(r.p_value)
        plain.append(independence_test(a, b).p_value)
    # no look stopped: the reported p is the full test's, so the null stays uniform
    assert np.allclose(seq, plain)
    assert stats.kstest(seq, "uniform").pvalue > 0.01


def test_sequential_test_works_on_a_streaming_map(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    src = tiny_models["llama"]
    child = tmp_path / "child"
    child.mkdir()
    (child / "config.json").write_text((src / "config.json").read_text())
    g = torch.Generator().manual_seed(3)
    state = {k: v + 0.1 * v.std() * torch.randn(v.shape, generator=g) if v.ndim == 2 else v
             for k, v in load_file(src / "model.safetensors").items()}
    save_file(state, child / "model.safetensors")
    r = independence_test(StreamingWeightMap(src), StreamingWeightMap(child), sequential=True)
    ref = independence_test(load_weight_map(src), load_weight_map(child), sequential=True)
    assert r.dependent and r.blocks_read == ref.blocks_read
    assert r.p_value_log10 == pytest.approx(ref.p_value_log10, rel=1e-4)


def test_registry_test_reports_blocks_read_and_caches_activations(registry, tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    src = tiny_models["llama"]
    child = tmp_path / "child"
    child.mkdir()
    (child / "config.json").write_text((src / "config.json").read_text())
    g = torch.Generator().manual_seed(4)
    state = {k: v + 0.1 * v.std() * torch.randn(v.shape, generator=g) if v.ndim == 2 else v
             for k, v in load_file(src / "model.safetensors").items()}
    save_file(state, child / "model.safetensors")
    registry.index_one(src, name="parent")
    registry.index_one(child, name="child")
    r = registry.test("parent", "child", method="match").result
    assert r.method == "match" and r.dependent and r.blocks_read in (1, 2)
    files = sorted((registry.home / "activations").rglob("block*.pt"))
    assert len(files) >= 2  # both models' first block(s), cached per content digest
    # a fresh registry object reads the cache: no block is pushed through again
    from mothertree.registry import Registry

    again = Registry(registry.url)
    try:
        with again.session() as s:
            _, source, digest = again._pairs.source_of(s, "parent")
        loaded = again._pairs.cache.load(source, digest)
        loaded.activations["blocks"][0]
        assert loaded.activations["blocks"].blocks_computed == 0
    finally:
        again.close()


def test_memory_budget_gives_a_clear_error(cli, tiny_models, monkeypatch):
    monkeypatch.setenv("MOTHERTREE_MAX_MEMORY", "1K")
    code, out, err = cli("test", str(tiny_models["llama"]), str(tiny_models["llama-other"]), "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["type"] == "MemoryBudgetError" and "MOTHERTREE_MAX_MEMORY" in doc["error"]
