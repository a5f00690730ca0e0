"""Canonical layer roles: what each parameter *is*, whatever the architecture calls it.

Every later stage (fingerprints, independence tests, edge typing) speaks in
roles, never in parameter names, so that a GPT-2 ``h.3.mlp.c_fc.weight`` and a
Llama ``model.layers.3.mlp.up_proj.weight`` are handled by one code path.

Two storage quirks are undone here so that downstream code always sees
``[out_features, in_features]`` matrices with one role each:

- GPT-2's ``Conv1D`` stores weights as ``[in, out]``: they are transposed;
- fused projections (GPT-2 ``c_attn``, Phi-3 ``qkv_proj``/``gate_up_proj``,
  GPT-NeoX ``query_key_value``) are split into their q/k/v or gate/up parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ..vocabulary import FUSED_ROLES, IDENTITY_ROLES, ROLES

if TYPE_CHECKING:
    import torch

__all__ = [
    "ROLES",
    "IDENTITY_ROLES",
    "FUSED_ROLES",
    "RoleAssignment",
    "assign_role",
    "detect_architecture",
    "canonical_parts",
]

# ROLES, IDENTITY_ROLES and FUSED_ROLES are spelled once, in mothertree.vocabulary.

#: Architectures with a role table, keyed by the ``model_type`` values that use it.
_ARCHITECTURE_OF_MODEL_TYPE = {
    **{
        t: "llama"
        for t in (
            "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gemma",
            "gemma2", "gemma3_text", "olmo", "olmo2", "granite", "cohere", "starcoder2",
            "stablelm", "internlm2", "deepseek_v2", "yi", "smollm3",
        )
    },
    "phi3": "phi3",
    "phimoe": "phi3",
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "electra": "bert",
}

_B = r"(?:^|\.)(?:layers|h|layer|blocks)\.(\d+)\."

# (pattern, role, architecture hint). The first match wins; ``part`` comes from the
# final ``.weight``/``.bias`` (or BERT's old ``gamma``/``beta``).
_PATTERNS: tuple[tuple[re.Pattern[str], str, str | None], ...] = tuple(
    (re.compile(p), role, arch)
    for p, role, arch in (
        # --- GPT-2 (Conv1D, fused c_attn) ---
        (rf"{_B}attn\.c_attn$", "attn.qkv", "gpt2"),
        (rf"{_B}attn\.c_proj$", "attn.o", "gpt2"),
        (rf"{_B}mlp\.c_fc$", "mlp.in", "gpt2"),
        (rf"{_B}mlp\.c_proj$", "mlp.out", "gpt2"),
        (rf"{_B}ln_1$", "norm.attn", "gpt2"),
        (rf"{_B}ln_2$", "norm.mlp", "gpt2"),
        (r"(?:^|\.)wte$", "embed.tokens", "gpt2"),
        (r"(?:^|\.)wpe$", "embed.positions", "gpt2"),
        (r"(?:^|\.)ln_f$", "norm.final", "gpt2"),
        # --- GPT-NeoX ---
        (rf"{_B}attention\.query_key_value$", "attn.qkv", "gpt_neox"),
        (rf"{_B}attention\.dense$", "attn.o", "gpt_neox"),
        (rf"{_B}mlp\.dense_h_to_4h$", "mlp.in", "gpt_neox"),
        (rf"{_B}mlp\.dense_4h_to_h$", "mlp.out", "gpt_neox"),
        (r"(?:^|\.)embed_in$", "embed.tokens", "gpt_neox"),
        (r"(?:^|\.)final_layer_norm$", "norm.final", "gpt_neox"),
        (r"(?:^|\.)embed_out$", "head.lm", "gpt_neox"),
        # --- BERT, RoBERTa, ELECTRA ---
        (rf"{_B}attention\.self\.query$", "attn.q", "bert"),
        (rf"{_B}attention\.self\.key$", "attn.k", "bert"),
        (rf"{_B}attention\.self\.value$", "attn.v", "bert"),
        (rf"{_B}attention\.output\.dense$", "attn.o", "bert"),
        (rf"{_B}attention\.output\.LayerNorm$", "norm.attn", "bert"),
        (rf"{_B}intermediate\.dense$", "mlp.in", "bert"),
        (rf"{_B}output\.dense$", "mlp.out", "bert"),
        (rf"{_B}output\.LayerNorm$", "norm.mlp", "bert"),
        (r"(?:^|\.)embeddings\.word_embeddings$", "embed.tokens", "bert"),
        (r"(?:^|\.)embeddings\.position_embeddings$", "embed.positions", "bert"),
        (r"(?:^|\.)embeddings\.token_type_embeddings$", "embed.token_type", "bert"),
        (r"(?:^|\.)embeddings\.LayerNorm$", "norm.embed", "bert"),
        (r"(?:^|\.)cls\.predictions\.decoder$", "head.lm", "bert"),
        # --- Llama-style decoders (Llama, Mistral, Qwen2/3, Gemma, Phi-3 fused) ---
        (rf"{_B}self_attn\.q_proj$", "attn.q", "llama"),
        (rf"{_B}self_attn\.k_proj$", "attn.k", "llama"),
        (rf"{_B}self_attn\.v_proj$", "attn.v", "llama"),
        (rf"{_B}self_attn\.qkv_proj$", "attn.qkv", "phi3"),
        (rf"{_B}self_attn\.o_proj$", "attn.o", "llama"),
        (rf"{_B}self_attn\.[qk]_norm$", "norm.qk", "llama"),
        (rf"{_B}mlp\.gate_proj$", "mlp.gate", "llama"),
        (rf"{_B}mlp\.up_proj$", "mlp.up", "llama"),
        (rf"{_B}mlp\.gate_up_proj$", "mlp.gate_up", "phi3"),
        (rf"{_B}mlp\.down_proj$", "mlp.down", "llama"),
        (rf"{_B}input_layernorm$", "norm.attn", None),
        (rf"{_B}post_attention_layernorm$", "norm.mlp", None),
        (rf"{_B}(?:pre|post)_feedforward_layernorm$", "norm.mlp", "llama"),
        (r"(?:^|\.)embed_tokens$", "embed.tokens", "llama"),
        (r"^(?:model\.)?norm$", "norm.final", "llama"),
        (r"(?:^|\.)lm_head$", "head.lm", None),
    )
)

# llama.cpp (GGUF) tensor names, one table for every architecture. The GGUF
# reader returns tensors in the source layout ([out, in], Q/K un-permuted,
# GPT-NeoX qkv re-interleaved), so nothing here is transposed. ``ffn_up`` and
# ``ffn_down`` are the plain MLP's in/out for GPT-2, GPT-NeoX and BERT, and
# Phi-3 stores its fused gate_up as ``ffn_up``.
_GGUF_BLOCK = re.compile(r"^blk\.(\d+)\.(\w+)$")
_GGUF_BLOCK_ROLES = {
    "attn_q": "attn.q", "attn_k": "attn.k", "attn_v": "attn.v", "attn_qkv": "attn.qkv",
    "attn_output": "attn.o", "ffn_gate": "mlp.gate", "ffn_up": "mlp.up", "ffn_down": "mlp.down",
    "attn_norm": "norm.attn", "attn_output_norm": "norm.attn", "attn_q_norm": "norm.qk",
    "attn_k_norm": "norm.qk", "ffn_norm": "norm.mlp", "post_attention_norm": "norm.mlp",
    "post_ffw_norm": "norm.mlp", "layer_output_norm": "norm.mlp",
}
_GGUF_TOP_ROLES = {
    "token_embd": "embed.tokens", "position_embd": "embed.positions", "token_types": "embed.token_type",
    "token_embd_norm": "norm.embed", "output_norm": "norm.final", "output": "head.lm",
}
_GGUF_PLAIN_MLP = {"gpt2", "gpt_neox", "bert"}


def _assign_gguf(stem: str, part: str, architecture: str) -> RoleAssignment | None:
    m = _GGUF_BLOCK.match(stem)
    if m:
        role = _GGUF_BLOCK_ROLES.get(m.group(2))
        if role is None:
            return RoleAssignment("other", int(m.group(1)), part)
        if architecture in _GGUF_PLAIN_MLP and role in ("mlp.up", "mlp.down"):
            role = "mlp.in" if role == "mlp.up" else "mlp.out"
        elif architecture == "phi3" and role == "mlp.up":
            role = "mlp.gate_up"
        return RoleAssignment(role, int(m.group(1)), part)
    role = _GGUF_TOP_ROLES.get(stem)
    return RoleAssignment(role, None, part) if role else None


# Buffers saved beside the weights that no training touches: identical in
# independent models by construction, so they must never count as evidence.
_BUFFERS = re.compile(
    r"(?:(?:^|\.)attn\.(?:masked_)?bias$|(?:^|\.)attention\.(?:masked_)?bias$|rotary_emb\.inv_freq$"
    r"|position_ids$|\.inv_freq$|_float_tensor$)"
)

_PARTS = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}


@dataclass(frozen=True)
class RoleAssignment:
    """Where one stored parameter sits in the canonical layout.

    Attributes
    ----------
    role : str
        One of :data:`ROLES`.
    block : int or None
        Transformer block index, ``None`` for model-level tensors.
    part : str
        ``"weight"``, ``"bias"`` or ``"buffer"`` (not learned: skipped by
        fingerprints and tests).
    transposed : bool
        True when the file stores the matrix as ``[in, out]`` (GPT-2 Conv1D).
    """

    role: str
    block: int | None
    part: str
    transposed: bool = False

    @property
    def learned(self) -> bool:
        return self.part != "buffer"


def detect_architecture(config: Mapping[str, Any] | None, names: Iterable[str]) -> str:
    """Return the role-table architecture of a model: from its config, else from its names.

    The config's ``model_type`` decides when it is known; otherwise the architecture
    hinted by most matching parameter names wins. ``"unknown"`` means no
    parameter matched any table: the model is still indexed, with role ``other``.
    """
    model_type = (config or {}).get("model_type")
    if model_type in _ARCHITECTURE_OF_MODEL_TYPE:
        return _ARCHITECTURE_OF_MODEL_TYPE[model_type]
    votes: dict[str, int] = {}
    for name in names:
        stem, _ = _split_part(name)
        for pattern, _role, arch in _PATTERNS:
            if pattern.search(stem):
                if arch:
                    votes[arch] = votes.get(arch, 0) + 1
                break
    if not votes:
        return "unknown"
    # Phi-3 shares most names with Llama; fused names decide it.
    if votes.get("phi3") and votes.get("llama"):
        return "phi3"
    return max(votes, key=votes.get)


def _split_part(name: str) -> tuple[str, str]:
    stem, _, last = name.rpartition(".")
    if last in _PARTS and stem:
        return stem, _PARTS[last]
    return name, "weight"


def assign_role(name: str, architecture: str) -> RoleAssignment:
    """Map one stored parameter name to its :class:`RoleAssignment`.

    Examples
    --------
    >>> assign_role("model.layers.3.mlp.up_proj.weight", "llama")
    RoleAssignment(role='mlp.up', block=3, part='weight', transposed=False)
    >>> assign_role("h.0.attn.c_attn.weight", "gpt2").transposed
    True
    """
    if _BUFFERS.search(name):
        return RoleAssignment("other", _block_of(name), "buffer")
    stem, part = _split_part(name)
    gguf = _assign_gguf(stem, part, architecture)
    if gguf is not None:
        return gguf
    for pattern, role, _arch in _PATTERNS:
        m = pattern.search(stem)
        if m:
            block = int(m.group(1)) if m.groups() else None
            transposed = architecture == "gpt2" and part == "weight" and role in (
                "attn.qkv", "attn.o", "mlp.in", "mlp.out"
            )
            return RoleAssignment(role, block, part, transposed)
    return RoleAssignment("other", _block_of(name), part)


def _block_of(name: str) -> int | None:
    m = re.search(_B, name)
    return int(m.group(1)) if m else None


def canonical_parts(
    assignment: RoleAssignment,
    tensor: "torch.Tensor",
    *,
    architecture: str,
    config: Mapping[str, Any] | None = None,
) -> dict[str, "torch.Tensor"]:
    """Turn one stored tensor into ``{role: tensor}`` in ``[out, in]`` layout.

    Fused projections are split (q/k/v by the head counts in ``config`` when
    it has them, equal parts otherwise); Conv1D weights are transposed.
    """
    t = tensor.T if assignment.transposed else tensor
    role = assignment.role
    if role not in FUSED_ROLES:
        return {role: t}
    if role == "mlp.gate_up":
        gate, up = t.chunk(2, dim=0)
        return {"mlp.gate": gate, "mlp.up": up}
    cfg = config or {}
    n = t.shape[0]
    if architecture == "gpt_neox":
        heads = int(cfg.get("num_attention_heads") or 1)
        rest = t.shape[1:]
        per_head = t.reshape(heads, 3, n // (3 * heads), *rest)
        q, k, v = (per_head[:, i].reshape(n // 3, *rest) for i in range(3))
        return {"attn.q": q, "attn.k": k, "attn.v": v}
    heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    kv_heads = cfg.get("num_key_value_heads") or heads
    hidden = cfg.get("hidden_size") or cfg.get("n_embd")
    if heads and hidden:
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
        if sum(sizes) != n:
            sizes = [n // 3] * 3
    else:
        sizes = [n // 3] * 3
    q, k, v = t.split(sizes, dim=0)
    return {"attn.q": q, "attn.k": k, "attn.v": v}
