"""Canonical weights of a model, for the statistics in :mod:`mothertree.lineage`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .readers import WeightSource, iter_tensors, open_source, read_header
from .roles import IDENTITY_ROLES, assign_role, canonical_parts, detect_architecture

if TYPE_CHECKING:
    import torch

__all__ = ["load_weight_map"]


def load_weight_map(
    path: str | os.PathLike | WeightSource,
) -> dict[tuple[str, int | None], "torch.Tensor"]:
    """Read a model's identity weights as a WeightMap: ``(role, block) -> float32 [out, in]``.

    Fused projections are split and Conv1D weights transposed; biases, norms,
    buffers and unknown tensors are left out (an unknown architecture's 2-D
    tensors are kept under role ``other`` so shape-wise tests still apply).
    """
    source = path if isinstance(path, WeightSource) else open_source(path)
    infos = read_header(source)
    architecture = detect_architecture(source.config, infos)
    out = {}
    for name, tensor in iter_tensors(source, infos):
        a = assign_role(name, architecture)
        if not a.learned or a.part != "weight":
            continue
        if architecture == "unknown":
            if tensor.ndim == 2:
                out[(f"other:{name}", a.block)] = tensor.float()
            continue
        for role, part in canonical_parts(a, tensor, architecture=architecture, config=source.config).items():
            if role in IDENTITY_ROLES and part.ndim == 2:
                out[(role, a.block)] = part.float().contiguous()
    return out
