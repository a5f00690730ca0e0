"""Write a GGUF from a Hugging Face folder the way llama.cpp's converter does (for tests only).

Names come from gguf-py's ``TensorNameMap``; the rotary Q/K rows of llama
models are permuted like ``convert_hf_to_gguf.LlamaModel.permute``; GPT-2
Conv1D weights are transposed to ``[out, in]``; 2-D weights are quantized
with ``gguf.quants.quantize``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

_ARCH = {"llama": "LLAMA", "gpt2": "GPT2"}


def converter_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The converter's rotary row permutation, per head: halves interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(
    src: Path, out: Path, qtype: str = "F32", *, permute: bool = True, split: int = 0,
) -> Path:
    """Convert the HF model folder ``src`` into ``out`` (a ``.gguf``), 2-D weights as ``qtype``.

    ``split`` > 0 writes a split set of that many tensors per shard.
    """
    import gguf
    from gguf.quants import quantize

    cfg = json.loads((src / "config.json").read_text())
    mt = cfg["model_type"]
    state = load_file(str(src / "model.safetensors"))
    n_layer = cfg.get("num_hidden_layers") or cfg["n_layer"]
    heads = cfg.get("num_attention_heads") or cfg["n_head"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    hidden = cfg.get("hidden_size") or cfg["n_embd"]
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, _ARCH[mt]), n_layer)
    out.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(out, mt, split_max_tensors=split)
    w.add_name(src.name)
    w.add_block_count(n_layer)
    w.add_context_length(cfg.get("max_position_embeddings") or cfg["n_positions"])
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * hidden)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_vocab_size(cfg["vocab_size"])
    if mt == "llama":
        w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    q = getattr(gguf.GGMLQuantizationType, qtype)
    for name, t in state.items():
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            continue
        t = t.astype(np.float32)
        if mt == "gpt2" and t.ndim == 2 and any(k in name for k in ("c_attn", "c_proj", "c_fc")):
            t = np.ascontiguousarray(t.T)
        if permute and mt == "llama" and name.endswith("q_proj.weight"):
            t = converter_permute(t, heads)
        if permute and mt == "llama" and name.endswith("k_proj.weight"):
            t = converter_permute(t, kv_heads)
        if t.ndim == 2 and qtype != "F32":
            w.add_tensor(gname, quantize(t, q), raw_dtype=q)
        else:
            w.add_tensor(gname, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
