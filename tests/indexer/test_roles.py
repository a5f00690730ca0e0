"""The role map on real transformers models of every supported architecture."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import transformers as tf

from mothertree.indexer.roles import assign_role, canonical_parts, detect_architecture

H, I, L, HEADS, KV, V = 32, 48, 2, 4, 2, 64

ARCHITECTURES = {
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(num_key_value_heads=KV), "llama"),
    "mistral": (tf.MistralConfig, tf.MistralForCausalLM, dict(num_key_value_heads=KV), "llama"),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(num_key_value_heads=KV), "llama"),
    "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM, dict(num_key_value_heads=KV, head_dim=8), "llama"),
    "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, dict(num_key_value_heads=KV, pad_token_id=0), "phi3"),
}


def _decoder(name):
    cfg_cls, model_cls, extra, arch = ARCHITECTURES[name]
    cfg = cfg_cls(
        hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=HEADS,
        vocab_size=V, max_position_embeddings=32, **extra,
    )
    return cfg, model_cls(cfg), arch


def _canonical(state, arch, cfg):
    out = {}
    for name, t in state.items():
        a = assign_role(name, arch)
        if not a.learned or a.part != "weight":
            continue
        for role, part in canonical_parts(a, t, architecture=arch, config=cfg).items():
            out[(role, a.block)] = part
    return out


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_glu_decoders(name):
    cfg, model, arch = _decoder(name)
    state = model.state_dict()
    assert detect_architecture(cfg.to_dict(), state) == arch
    assert detect_architecture(None, state) == arch  # names alone are enough
    canon = _canonical(state, arch, cfg.to_dict())
    hd = getattr(cfg, "head_dim", None) or H // HEADS
    for b in range(L):
        assert canon[("attn.q", b)].shape == (HEADS * hd, H)
        assert canon[("attn.k", b)].shape == (KV * hd, H)
        assert canon[("attn.v", b)].shape == (KV * hd, H)
        assert canon[("attn.o", b)].shape == (H, HEADS * hd)
        assert canon[("mlp.gate", b)].shape == (I, H)
        assert canon[("mlp.up", b)].shape == (I, H)
        assert canon[("mlp.down", b)].shape == (H, I)
    assert canon[("embed.tokens", None)].shape == (V, H)
    roles = Counter(assign_role(n, arch).role for n in state)
    assert roles["other"] == 0, [n for n in state if assign_role(n, arch).role == "other"]


def test_phi3_fused_split_matches_the_model():
    cfg, model, arch = _decoder("phi3")
    attn = model.model.layers[0].self_attn
    mlp = model.model.layers[0].mlp
    canon = _canonical(model.state_dict(), arch, cfg.to_dict())
    x = torch.randn(5, H)
    qkv = attn.qkv_proj(x)
    q_dim = HEADS * (H // HEADS)
    torch.testing.assert_close(x @ canon[("attn.q", 0)].T, qkv[:, :q_dim])
    gate, up = mlp.gate_up_proj(x).chunk(2, dim=-1)
    torch.testing.assert_close(x @ canon[("mlp.gate", 0)].T, gate)
    torch.testing.assert_close(x @ canon[("mlp.up", 0)].T, up)


def test_gpt2_conv1d_is_transposed_and_split():
    cfg = tf.GPT2Config(n_embd=H, n_layer=L, n_head=HEADS, vocab_size=V, n_positions=32)
    model = tf.GPT2LMHeadModel(cfg)
    state = model.state_dict()
    arch = detect_architecture(cfg.to_dict(), state)
    assert arch == "gpt2"
    canon = _canonical(state, arch, cfg.to_dict())
    assert canon[("mlp.in", 0)].shape == (4 * H, H)
    assert canon[("mlp.out", 0)].shape == (H, 4 * H)
    x = torch.randn(3, H)
    block = model.transformer.h[0]
    q = block.attn.c_attn(x)[:, :H]
    torch.testing.assert_close(x @ canon[("attn.q", 0)].T + state["transformer.h.0.attn.c_attn.bias"][:H], q)
    pre = block.mlp.c_fc(x)
    torch.testing.assert_close(x @ canon[("mlp.in", 0)].T + state["transformer.h.0.mlp.c_fc.bias"], pre)
    assert canon[("embed.positions", None)].shape == (32, H)


def test_gpt_neox_interleaved_qkv():
    cfg = tf.GPTNeoXConfig(
        hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=HEADS,
        vocab_size=V, max_position_embeddings=32,
    )
    model = tf.GPTNeoXForCausalLM(cfg)
    state = model.state_dict()
    arch = detect_architecture(cfg.to_dict(), state)
    assert arch == "gpt_neox"
    canon = _canonical(state, arch, cfg.to_dict())
    x = torch.randn(3, H)
    qkv = x @ state["gpt_neox.layers.0.attention.query_key_value.weight"].T
    per_head = qkv.view(3, HEADS, 3 * (H // HEADS))
    q = per_head[..., : H // HEADS].reshape(3, H)
    torch.testing.assert_close(x @ canon[("attn.q", 0)].T, q)
    assert {r for r, _ in canon} >= {"mlp.in", "mlp.out", "attn.o", "embed.tokens", "head.lm"}


def test_bert_roles():
    cfg = tf.BertConfig(
        hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=HEADS,
        vocab_size=V, max_position_embeddings=32,
    )
    state = tf.BertForMaskedLM(cfg).state_dict()
    arch = detect_architecture(cfg.to_dict(), state)
    assert arch == "bert"
    assert assign_role("bert.encoder.layer.1.output.dense.weight", arch).role == "mlp.out"
    assert assign_role("bert.encoder.layer.1.attention.output.dense.weight", arch).role == "attn.o"
    assert assign_role("bert.encoder.layer.1.intermediate.dense.weight", arch).role == "mlp.in"
    assert assign_role("bert.encoder.layer.0.attention.output.LayerNorm.gamma", arch).part == "weight"
    canon = _canonical(state, arch, cfg.to_dict())
    assert canon[("embed.token_type", None)].shape == (2, H)
    assert canon[("mlp.in", 1)].shape == (I, H)


def test_buffers_and_unknown_names():
    assert not assign_role("bert.embeddings.position_ids", "bert").learned
    assert not assign_role("transformer.h.0.attn.masked_bias", "gpt2").learned
    a = assign_role("encoder.blocks.3.conv.weight", "unknown")
    assert (a.role, a.block) == ("other", 3)
    assert detect_architecture({"model_type": "mystery"}, ["foo.weight", "bar.bias"]) == "unknown"
