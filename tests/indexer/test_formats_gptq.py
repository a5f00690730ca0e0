"""GPTQ (4 and 8 bit, act-order g_idx) and AWQ (4 bit) checkpoints packed here from the formats' specs,
dequantized on read, and placed by the registry as quantized children of the model they came from."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mothertree.indexer import open_source, scan_model
from mothertree.indexer.weights import load_weight_map
from mothertree.registry.errors import UnreadableWeightsError

ZOO = Path(os.environ.get("MOTHERTREE_ZOO_DIR", "/work/zoo")) / "test"
_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _pack_rows(q: torch.Tensor, bits: int) -> torch.Tensor:
    """[K, N] small ints -> int32 [K / p, N], p consecutive rows per word, lowest bits first."""
    p = 32 // bits
    q = q.to(torch.int64).reshape(q.shape[0] // p, p, q.shape[1])
    word = sum(q[:, i] << (bits * i) for i in range(p))
    return ((word + 2**31) % 2**32 - 2**31).to(torch.int32)


def _pack_cols(q: torch.Tensor, bits: int, order=None) -> torch.Tensor:
    """[R, N] -> int32 [R, N / p], p consecutive columns per word (AWQ: in its interleaved order)."""
    p = 32 // bits
    q = q.to(torch.int64).reshape(q.shape[0], q.shape[1] // p, p)
    order = order or tuple(range(p))
    word = sum(q[:, :, order[i]] << (bits * i) for i in range(p))
    return ((word + 2**31) % 2**32 - 2**31).to(torch.int32)


def quantize_folder(src: Path, out: Path, method: str, bits: int = 4, group: int = 32, act_order: bool = False):
    """Write ``src`` as a GPTQ or AWQ checkpoint; return the dequantized weights it encodes (reference)."""
    state = load_file(src / "model.safetensors")
    cfg = json.loads((src / "config.json").read_text())
    packed, ref = {}, {}
    gen = torch.Generator().manual_seed(0)
    for name, w in state.items():
        mod = name.removesuffix(".weight")
        if not (name.endswith(".weight") and mod.rsplit(".", 1)[-1] in _LINEAR):
            packed[name] = w.half()
            continue
        wt = w.T.contiguous()  # [K, N]
        k, n = wt.shape
        if method == "gptq":
            g_idx = torch.arange(k) // group
            if act_order:
                g_idx = g_idx[torch.randperm(k, generator=gen)]
            groups = int(g_idx.max()) + 1
            maxq = 2**bits - 1
            zero = torch.full((groups, n), 2 ** (bits - 1), dtype=torch.int64)  # symmetric
            scale = torch.stack([wt[g_idx == gi].abs().amax(0) for gi in range(groups)]) / (2 ** (bits - 1) - 1)
            q = torch.clamp(torch.round(wt / scale[g_idx]) + zero[g_idx], 0, maxq)
            ref[name] = (scale[g_idx] * (q - zero[g_idx])).T.contiguous()
            packed[f"{mod}.qweight"] = _pack_rows(q, bits)
            packed[f"{mod}.qzeros"] = _pack_cols(zero - 1, bits)  # GPTQ v1 stores zero - 1
            packed[f"{mod}.scales"] = scale.half()
            packed[f"{mod}.g_idx"] = g_idx.to(torch.int32)
            ref[name] = (scale.half().float()[g_idx] * (q - zero[g_idx])).T.contiguous()
        else:
            g = wt.reshape(k // group, group, n)
            lo, hi = g.amin(1), g.amax(1)
            scale = (hi - lo).clamp_min(1e-8) / 15
            zero = torch.clamp(torch.round(-lo / scale), 0, 15)
            q = torch.clamp(torch.round(g / scale[:, None]) + zero[:, None], 0, 15).reshape(k, n)
            packed[f"{mod}.qweight"] = _pack_cols(q, 4, _AWQ_ORDER)
            packed[f"{mod}.qzeros"] = _pack_cols(zero, 4, _AWQ_ORDER)
            packed[f"{mod}.scales"] = scale.half()
            gi = torch.arange(k) // group
            ref[name] = (scale.half().float()[gi] * (q - zero[gi])).T.contiguous()
    out.mkdir(parents=True)
    qcfg = {"quant_method": method, "bits": bits, "group_size": group}
    if method == "gptq":
        qcfg |= {"desc_act": act_order, "sym": True, "checkpoint_format": "gptq"}
    else:
        qcfg |= {"zero_point": True, "version": "gemm"}
    (out / "config.json").write_text(json.dumps({**cfg, "quantization_config": qcfg}))
    save_file(packed, str(out / "model.safetensors"), metadata={"format": "pt"})
    return ref


@pytest.fixture(scope="module")
def zoo() -> Path:
    if not (ZOO / "llama-a" / "model.safetensors").is_file():
        pytest.skip(f"test zoo not built at {ZOO}")
    return ZOO


@pytest.mark.parametrize("method,bits,act_order", [("gptq", 4, False), ("gptq", 4, True), ("gptq", 8, False),
                                                   ("awq", 4, False)])
def test_dequantized_exactly_as_the_spec_encodes(zoo, tmp_path, method, bits, act_order):
    out = tmp_path / f"{method}{bits}"
    ref = quantize_folder(zoo / "llama-a-ft", out, method, bits, act_order=act_order)
    src = open_source(out)
    assert src.format == "gptq"
    from mothertree.indexer.readers import iter_tensors, read_header

    infos = read_header(src)
    name = "model.layers.2.mlp.down_proj.weight"
    assert infos[name].shape == (64, 128) and infos[name].dtype == f"Q{bits}_{method.upper()}"
    got = dict(iter_tensors(src))
    for n, r in ref.items():
        assert torch.allclose(got[n], r, atol=1e-6), n
    source = load_weight_map(zoo / "llama-a-ft")
    w = load_weight_map(src)
    err = max(float((w[k] - source[k]).norm() / source[k].norm()) for k in source if k[0] != "embed.tokens")
    assert 0 < err < (0.02 if bits == 8 else 0.2)
    assert scan_model(src).dtype == f"Q{bits}_{method.upper()}"


def test_gptq_and_awq_are_quantized_children(zoo, tmp_path, registry):
    quantize_folder(zoo / "llama-a-ft", tmp_path / "ft-gptq", "gptq", 4)
    quantize_folder(zoo / "llama-a-ft", tmp_path / "ft-awq", "awq", 4)
    registry.index([zoo / "llama-a-ft", tmp_path / "ft-gptq", tmp_path / "ft-awq"])
    registry.resolve()
    edges = {(e.parent, e.child): e.relation for e in registry.family("llama-a-ft").edges}
    assert edges == {("llama-a-ft", "ft-gptq"): "quantized", ("llama-a-ft", "ft-awq"): "quantized"}, edges


def test_bad_packing(zoo, tmp_path):
    out = tmp_path / "bad"
    quantize_folder(zoo / "llama-a", out, "gptq", 4)
    state = load_file(out / "model.safetensors")
    state["model.layers.0.self_attn.q_proj.scales"] = state["model.layers.0.self_attn.q_proj.scales"][:1]
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(UnreadableWeightsError, match=r"gptq shapes do not agree: qweight \[8, 64\]") as exc:
        scan_model(out)
    assert "model.layers.0.self_attn.q_proj" in str(exc.value)
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"]["bits"] = 3
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnreadableWeightsError, match="gptq with 3 bits is not supported"):
        scan_model(out)
