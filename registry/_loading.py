"""Streaming loads for the lineage tests: lazy weights, block-by-block activations cached on disk.

:meth:`WeightsCache._load <mothertree.registry._weights_cache.WeightsCache._load>` hands the
tests a :class:`~mothertree.indexer.streaming.StreamingWeightMap` (tensors
read from memory maps on demand) and a :class:`LazyActivations` (each block's
phi_MATCH views pushed through a :class:`~mothertree.indexer.forward.BlockRunner`
only when a test asks for that block, and cached per content digest under the
registry's folder, so a model is pushed through once however many pairs it
joins). Small models are read into memory whole: for them re-reading costs
more than it saves. Everything is sized against ``MOTHERTREE_MAX_MEMORY``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import MemoryBudgetError
from .settings import max_memory

__all__ = ["LazyActivations", "ACTIVATIONS_VERSION", "in_memory_limit", "check_block_budget", "loaded_nbytes"]

#: Bumped when the views or the inputs change, so stale cache files are never read.
ACTIVATIONS_VERSION = 1


def in_memory_limit() -> int:
    """Models whose identity weights take at most this in float32 are read whole (1/16 of the budget)."""
    return max_memory() // 16


def check_block_budget(weights: Any, what: str) -> None:
    """Refuse a model whose largest block (two models' worth, with working copies) cannot fit the budget."""
    per_block: dict[Any, int] = {}
    for key in weights:
        shape = weights.shape_of(key)
        n = 1
        for d in shape:
            n *= d
        per_block[key[1]] = per_block.get(key[1], 0) + 4 * n
    biggest = max(per_block.values(), default=0)
    # a test holds one block of each model plus a float32 working copy of each
    need = 4 * biggest
    budget = max_memory()
    if need > budget:
        raise MemoryBudgetError(f"Testing {what} block by block", need, budget)


def loaded_nbytes(weights: Any, activations: Any) -> int:
    """Bytes a cache entry holds in memory (a streaming map holds no tensors)."""
    n = 0
    if isinstance(weights, dict):
        n += sum(t.numel() * t.element_size() for t in weights.values())
    blocks = (activations or {}).get("blocks")
    if isinstance(blocks, dict):
        for acts in blocks.values():
            n += sum(t.numel() * t.element_size() for t in (acts.a, acts.b))
    elif isinstance(blocks, LazyActivations):
        n += blocks.nbytes_in_memory
    return n


#: Activation views a disk-cached model keeps in memory (small models: all of them; 7B: a few blocks).
KEEP_BYTES = 64 << 20


class LazyActivations(Mapping):
    """``block -> BlockActivations`` computed on first use, block by block, cached on disk.

    Asking for block ``i`` when it is not cached runs the model through the
    first ``max(i + 1, 2 * computed)`` blocks (doubling, as sequential testing
    looks after 1, 2, 4, ... blocks), stores every new block's views as
    float16 files under ``cache_dir`` and returns float32 views. Without a
    ``cache_dir`` (a model known only by its path) the views stay in memory.
    """

    def __init__(self, runner: Any, input_ids: Any, cache_dir: Path | None, blocks: Any = None) -> None:
        # ``runner`` is a BlockRunner or a callable building one: transformers is imported, and the
        # model built, only when a test first needs a block that is not cached
        self._runner = runner
        self._ids = input_ids
        self._dir = cache_dir
        self._blocks = tuple(blocks if blocks is not None else runner.blocks)
        self._memory: dict[int, Any] = {}
        self._computed = 0
        self.blocks_computed = 0  # blocks pushed through the model by this object

    def __iter__(self):
        return iter(self._blocks)

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: object) -> bool:
        return key in self._blocks

    @property
    def nbytes_in_memory(self) -> int:
        return sum(a.a.numel() * 4 * 2 for a in self._memory.values())

    def _keep(self, block: int, acts: Any) -> Any:
        """``acts``, also kept in memory while this model's kept views stay under :data:`KEEP_BYTES`.

        A model joins many pairs; re-reading its views from disk for each one
        also makes every test re-judge new tensors (degenerate checks are
        remembered per tensor object).
        """
        if self.nbytes_in_memory + acts.a.numel() * 4 * 2 <= KEEP_BYTES:
            self._memory[block] = acts
        return acts

    def _file(self, block: int) -> Path | None:
        return None if self._dir is None else self._dir / f"block{block}.pt"

    def __getitem__(self, block: int):
        import torch

        from ..lineage.robust import BlockActivations

        if block not in self._blocks:
            raise KeyError(block)
        if block in self._memory:
            return self._memory[block]
        f = self._file(block)
        if f is not None and f.is_file():
            try:
                d = torch.load(f, map_location="cpu", weights_only=True)
                return self._keep(block, BlockActivations(d["kind"], d["a"].float(), d["b"].float()))
            except (OSError, RuntimeError, KeyError, ValueError):
                pass  # a damaged cache file is recomputed
        n = min(len(self._blocks), max(block + 1, 2 * self._computed))
        from ..indexer.activations import mlp_activation_hooks

        if callable(self._runner) and not hasattr(self._runner, "collect"):
            self._runner = self._runner()
        got = self._runner.collect(self._ids, mlp_activation_hooks, n_blocks=self._blocks[n - 1] + 1)
        self.blocks_computed += len(got)
        self._computed = max(self._computed, n)
        for b, views in got.items():
            acts = BlockActivations(*views)  # the indexer's MlpViews (kind, a, b)
            path = self._file(b)
            if path is None:
                self._memory[b] = acts
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            small = max(float(acts.a.abs().max()), float(acts.b.abs().max())) < 6e4  # float16's range
            torch.save({"kind": acts.kind, "a": acts.a.half() if small else acts.a,
                        "b": acts.b.half() if small else acts.b}, tmp)
            os.replace(tmp, path)
        if self._dir is None:
            return self._memory[block]
        return self[block]  # as stored: later reads see the same values


def activation_cache_dir(home: Path, digest: str | None, vocab: int, n_seq: int, seq_len: int) -> Path | None:
    """Where a model's activations live: one folder per content digest and input set."""
    if not digest:
        return None
    key = hashlib.sha256(f"{digest}|{vocab}|{n_seq}|{seq_len}|0|v{ACTIVATIONS_VERSION}".encode()).hexdigest()[:32]
    return Path(home) / "activations" / key
