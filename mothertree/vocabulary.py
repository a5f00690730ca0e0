"""The shared vocabulary: canonical layer roles and invariant product names.

Standard library only, so both :mod:`mothertree.indexer` (which assigns roles
and stores fingerprints under product names) and :mod:`mothertree.lineage`
(which compares weights by role and product) can import it without depending
on each other. Each name here is spelled once; the product names are stored in
the ``fingerprints`` table, so changing one is a versioned, reindexing decision.
"""

from __future__ import annotations

from typing import Mapping

__all__ = ["ROLES", "IDENTITY_ROLES", "FUSED_ROLES", "ATTENTION_ROLES", "PRODUCTS"]

#: Every canonical role. ``attn.qkv`` and ``mlp.gate_up`` only ever describe a
#: stored (fused) parameter; the indexer splits them into their parts.
ROLES: tuple[str, ...] = (
    "embed.tokens",
    "embed.positions",
    "embed.token_type",
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.qkv",
    "attn.o",
    "mlp.gate",
    "mlp.up",
    "mlp.gate_up",
    "mlp.down",
    "mlp.in",
    "mlp.out",
    "norm.embed",
    "norm.attn",
    "norm.mlp",
    "norm.qk",
    "norm.final",
    "head.lm",
    "other",
)

#: Roles whose weights carry a model's identity (fingerprinted and tested).
IDENTITY_ROLES: frozenset[str] = frozenset(
    {
        "embed.tokens",
        "embed.positions",
        "attn.q",
        "attn.k",
        "attn.v",
        "attn.o",
        "mlp.gate",
        "mlp.up",
        "mlp.down",
        "mlp.in",
        "mlp.out",
    }
)

#: Fused stored parameters and the canonical roles they hold, in order.
FUSED_ROLES: Mapping[str, tuple[str, ...]] = {
    "attn.qkv": ("attn.q", "attn.k", "attn.v"),
    "mlp.gate_up": ("mlp.gate", "mlp.up"),
}

#: Attention matrices (fused or not): their summed kurtosis is a direction signal.
ATTENTION_ROLES: tuple[str, ...] = ("attn.q", "attn.k", "attn.v", "attn.o", "attn.qkv")

#: Invariant products: name -> (left role, right role). The product is ``left · right``
#: (``attn.q`` enters transposed), unchanged when the hidden units (or heads)
#: in the middle are permuted.
PRODUCTS: Mapping[str, tuple[str, str]] = {
    "mlp.down_up": ("mlp.down", "mlp.up"),
    "mlp.down_gate": ("mlp.down", "mlp.gate"),
    "mlp.out_in": ("mlp.out", "mlp.in"),
    "attn.qk": ("attn.q", "attn.k"),
    "attn.ov": ("attn.o", "attn.v"),
}
