"""Sketch properties: deterministic, cosine-tracking, permutation-invariant, bounded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mothertree.indexer.fingerprints import (
    DIM,
    Fingerprinter,
    aligned_sketch,
    fingerprint_model,
    product_sketch,
    _Projections,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _double_centre(w: torch.Tensor) -> torch.Tensor:
    return w - w.mean(dim=1, keepdim=True) - w.mean(dim=0) + w.mean()


def test_dimension_fits_pgvector():
    assert DIM <= 2000
    v = aligned_sketch(torch.randn(300, 70, generator=_gen(0)))
    assert v.shape == (DIM,) and v.dtype == np.float32
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)


def test_sketch_is_deterministic_and_prefix_stable():
    w = torch.randn(5000, 40, generator=_gen(1))
    assert np.array_equal(aligned_sketch(w), aligned_sketch(w.clone()))
    # The projection of index i depends on i alone (chunks are seeded by index, not shape).
    long = _Projections("cpu").get("left", 9000)
    short = _Projections("cpu").get("left", 4500)
    assert torch.equal(long[:, :4500], short)
    assert not torch.equal(long[:, :4096], long[:, 4096:8192])


def test_chunked_rows_give_the_same_sketch(monkeypatch):
    from mothertree.indexer import fingerprints

    w = torch.randn(257, 33, generator=_gen(2))
    whole = aligned_sketch(w)
    monkeypatch.setattr(fingerprints, "_CHUNK_ELEMENTS", 33 * 10)  # 26 row chunks
    assert np.allclose(aligned_sketch(w), whole, atol=1e-5)


@pytest.mark.parametrize("noise", [0.1, 0.5, 1.0, 2.0])
def test_sketch_cosine_tracks_weight_cosine(noise):
    w = torch.randn(512, 128, generator=_gen(3))
    w2 = w + noise * torch.randn(512, 128, generator=_gen(4))
    a, b = _double_centre(w), _double_centre(w2)
    true = float((a * b).sum() / (a.norm() * b.norm()))
    assert float(aligned_sketch(w) @ aligned_sketch(w2)) == pytest.approx(true, abs=0.08)


def test_unrelated_matrices_are_near_orthogonal():
    a = aligned_sketch(torch.randn(512, 128, generator=_gen(5)))
    b = aligned_sketch(torch.randn(512, 128, generator=_gen(6)))
    assert abs(float(a @ b)) < 0.15


def test_shared_row_offsets_are_centred_away():
    # Two unrelated embeddings whose rows share a frequency-like offset per token.
    offset = torch.linspace(-3, 3, 512)[:, None]
    a = offset + torch.randn(512, 64, generator=_gen(7))
    b = offset + torch.randn(512, 64, generator=_gen(8))
    assert abs(float(aligned_sketch(a) @ aligned_sketch(b))) < 0.15


def test_product_sketch_equals_sketch_of_explicit_hollow_product():
    left = torch.randn(48, 96, generator=_gen(9))
    right = torch.randn(96, 48, generator=_gen(10))
    p = left @ right
    p = _double_centre(p - torch.diag(torch.diag(p)))
    assert float(product_sketch(left, right) @ aligned_sketch(p)) > 0.9999


def test_product_sketch_ignores_a_shared_identity_component():
    eye = 20 * torch.eye(64)
    a = product_sketch(torch.randn(64, 64, generator=_gen(11)), torch.randn(64, 64, generator=_gen(12)) + eye)
    b = product_sketch(torch.randn(64, 64, generator=_gen(13)), torch.randn(64, 64, generator=_gen(14)) + eye)
    assert abs(float(a @ b)) < 0.15


def _tiny_llama_state(seed: int, heads: int = 4, kv_heads: int = 4) -> dict[str, torch.Tensor]:
    g = _gen(seed)
    d, h, hd = 32, 64, 8
    state = {"embed.tokens": torch.randn(100, d, generator=g)}
    for b in range(2):
        state |= {
            f"{b}.attn.q": torch.randn(heads * hd, d, generator=g),
            f"{b}.attn.k": torch.randn(kv_heads * hd, d, generator=g),
            f"{b}.attn.v": torch.randn(kv_heads * hd, d, generator=g),
            f"{b}.attn.o": torch.randn(d, heads * hd, generator=g),
            f"{b}.mlp.gate": torch.randn(h, d, generator=g),
            f"{b}.mlp.up": torch.randn(h, d, generator=g),
            f"{b}.mlp.down": torch.randn(d, h, generator=g),
            f"{b}.norm.mlp": torch.ones(d),
        }
    return state


def _fingerprint(state: dict[str, torch.Tensor], config: dict | None = None):
    fp = Fingerprinter(device="cpu", config=config)
    for key, t in state.items():
        block, _, role = key.partition(".") if key[0].isdigit() else (None, "", key)
        fp.visit(role, None if block is None else int(block), "weight", t)
    return fp.finish()


def _permute(state: dict[str, torch.Tensor], seed: int, heads: int = 4, hd: int = 8) -> dict[str, torch.Tensor]:
    """MLP units and attention heads permuted per block: the function is unchanged."""
    g = _gen(seed)
    out = dict(state)
    for b in range(2):
        units = torch.randperm(64, generator=g)
        dims = (torch.randperm(heads, generator=g)[:, None] * hd + torch.arange(hd)).reshape(-1)
        for r in ("attn.q", "attn.k", "attn.v"):
            out[f"{b}.{r}"] = state[f"{b}.{r}"][dims]
        out[f"{b}.attn.o"] = state[f"{b}.attn.o"][:, dims]
        out[f"{b}.mlp.gate"] = state[f"{b}.mlp.gate"][units]
        out[f"{b}.mlp.up"] = state[f"{b}.mlp.up"][units]
        out[f"{b}.mlp.down"] = state[f"{b}.mlp.down"][:, units]
    return out


def _by_key(fp, kind):
    return {(l.role, l.block): l.vector for l in fp.layers if l.kind == kind}


def test_invariant_sketch_survives_mlp_and_head_permutation():
    state = _tiny_llama_state(0)
    orig, perm = _fingerprint(state), _fingerprint(_permute(state, 1))
    inv_a, inv_b = _by_key(orig, "invariant"), _by_key(perm, "invariant")
    assert set(inv_a) == set(inv_b) == {("embed.tokens", None)} | {
        (r, b) for r in ("attn.qk", "attn.ov", "mlp.down_up", "mlp.down_gate") for b in (0, 1)
    }
    for key in inv_a:
        assert float(inv_a[key] @ inv_b[key]) > 0.999, key
    # The aligned MLP sketches do see the permutation: the invariant kind is what survives.
    al_a, al_b = _by_key(orig, "aligned"), _by_key(perm, "aligned")
    assert float(al_a[("mlp.up", 0)] @ al_b[("mlp.up", 0)]) < 0.5
    assert float(orig.model_vector("invariant") @ perm.model_vector("invariant")) > 0.999


def test_grouped_query_heads_are_folded_with_the_config():
    state = _tiny_llama_state(2, heads=4, kv_heads=2)
    fp = _fingerprint(state, {"num_attention_heads": 4, "num_key_value_heads": 2})
    assert ("attn.qk", 0) in _by_key(fp, "invariant") and not fp.notes
    without = _fingerprint(state)
    assert ("attn.qk", 0) not in _by_key(without, "invariant")
    assert any("attn.qk skipped, head layout unknown" in n for n in without.notes)


def test_unidentifying_tensors_are_skipped_and_counted():
    fp = _fingerprint(_tiny_llama_state(3))
    assert dict(fp.skipped) == {"norm.mlp 1-D": 2}
    fp2 = Fingerprinter(device="cpu")
    fp2.visit("attn.q", 0, "bias", torch.zeros(4))
    fp2.visit("head.lm", None, "weight", torch.zeros(10, 4))
    assert dict(fp2.finish().skipped) == {"attn.q bias": 1, "head.lm": 1}


def test_missing_partner_is_noted():
    fp = Fingerprinter(device="cpu")
    fp.visit("mlp.down", 0, "weight", torch.randn(8, 16, generator=_gen(4)))
    fp.visit("mlp.up", 0, "weight", torch.randn(16, 8, generator=_gen(5)))
    result = fp.finish()
    assert result.notes == ("block 0: mlp.down_gate skipped, mlp.gate missing",)


def test_unknown_architecture_is_fingerprinted_by_shape(tmp_path: Path):
    from safetensors.torch import save_file

    g = _gen(6)
    tensors = {"enc.w1": torch.randn(40, 24, generator=g), "enc.w2": torch.randn(24, 40, generator=g),
               "enc.scale": torch.ones(24)}
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mystery"}))
    fp = fingerprint_model(tmp_path, device="cpu")
    assert {(l.kind, l.role, l.shape) for l in fp.layers} == {
        ("aligned", "other", (40, 24)), ("aligned", "other", (24, 40))
    }
    assert [k for k, _ in fp.model_vectors] == ["aligned"]


def test_device_is_validated():
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda; got 'tpu'"):
        Fingerprinter(device="tpu")
