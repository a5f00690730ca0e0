"""Lazy views of WeightMaps: shapes without reads, renumbered and sampled blocks.

A WeightMap may be an in-memory dict or a lazy mapping over memory-mapped
files (a 7B model in float32 is 28 GB; see ``indexer/streaming.py``). The
statistics here must hold at most a few tensors of a lazy map at a time, so
they never build dicts of tensors from one: these views re-key or restrict a
map and read through it only when a value is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator, Sequence

__all__ = ["shape_of", "is_lazy", "KeySubset", "BlockSubset", "Renumbered", "spread", "typing_view", "TYPING_BLOCKS"]

Key = tuple[str, "int | None"]

#: Blocks of a lazily read model that relation typing, distances and direction
#: statistics look at: evenly spaced, first and last included. Every relation
#: they decide is a property of every block (a cast, a quantization grid, a
#: dense or low-rank change, growing norms), so a spread sample of blocks sees
#: it; what differs in single blocks (depth pruning, reinitialised layers) is
#: found by the localization of the independence test, which reads them all.
TYPING_BLOCKS = 3


def shape_of(weights: Mapping, key: Key) -> tuple[int, ...]:
    """A tensor's shape without reading it when the map can tell (``shape_of``)."""
    if hasattr(weights, "shape_of"):
        return tuple(weights.shape_of(key))
    return tuple(weights[key].shape)


def is_lazy(weights: Mapping) -> bool:
    """True for maps that read tensors on demand (anything but an in-memory dict)."""
    return not isinstance(weights, dict)


class _View(Mapping):
    """A re-keyed or restricted view of a WeightMap: ``key -> source key``, read on access."""

    def __init__(self, weights: Mapping, keys: dict[Key, Key]) -> None:
        self._w = weights
        self._keys = keys

    def __getitem__(self, key: Key) -> Any:
        return self._w[self._keys[key]]

    def __iter__(self) -> Iterator[Key]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def shape_of(self, key: Key) -> tuple[int, ...]:
        return shape_of(self._w, self._keys[key])

    @property
    def degenerate(self) -> Mapping[Key, str] | None:
        """The source's degenerate verdicts (``lineage._validation.verdicts_of``) for the keys kept, re-keyed."""
        verdicts = getattr(self._w, "degenerate", None)
        if not isinstance(verdicts, Mapping):
            return None
        return {new: verdicts[old] for new, old in self._keys.items() if old in verdicts}


class KeySubset(_View):
    """The tensors of ``keys`` of a WeightMap (e.g. all but the degenerate ones)."""

    def __init__(self, weights: Mapping, keys: Sequence[Key]) -> None:
        super().__init__(weights, {k: k for k in keys})


class BlockSubset(_View):
    """The tensors of ``blocks`` (and, with ``model_level``, the block-less ones) of a WeightMap."""

    def __init__(self, weights: Mapping, blocks: Sequence[int], *, model_level: bool = True) -> None:
        keep = set(blocks)
        super().__init__(weights, {k: k for k in weights if (k[1] is None and model_level) or k[1] in keep})


class Renumbered(_View):
    """Blocks ``block_map[i][side]`` of a WeightMap, renumbered ``i`` (pairs of a localization map)."""

    def __init__(self, weights: Mapping, blocks: Sequence[int]) -> None:
        where = {b: i for i, b in enumerate(blocks)}
        super().__init__(weights, {(k[0], where[k[1]]): k for k in weights if k[1] in where})


def spread(items: Sequence[int], n: int) -> list[int]:
    """At most ``n`` of ``items``, evenly spaced, first and last included."""
    if len(items) <= n:
        return list(items)
    if n == 1:
        return [items[0]]
    return sorted({items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)})


def typing_view(*maps: Mapping, blocks: int = TYPING_BLOCKS) -> tuple[Mapping, ...]:
    """The maps unchanged when all are in memory; else each restricted to the same spread of blocks.

    The blocks are spread over the blocks the maps share, so the sample pairs
    like with like.
    """
    if not any(is_lazy(m) for m in maps):
        return maps
    shared = set.intersection(*({k[1] for k in m if k[1] is not None} for m in maps))
    pick = spread(sorted(shared), blocks)
    return tuple(BlockSubset(m, pick, model_level=False) for m in maps)
