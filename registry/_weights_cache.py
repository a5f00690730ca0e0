"""A byte-bounded cache of model weights (and activations) for the independence tests.

Resolve reads each model through this cache, so a family larger than memory is
compared one or two models at a time; the bound is on the bytes held.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import select

from ._schema import Model, Tensor
from ..threads import configure as configure_threads
from .settings import forward_max_params, threads

__all__ = ["WeightsCache", "LoadedModel", "Verdicts", "stored_verdicts"]

#: ``content digest -> {stored tensor name: why it is degenerate, or None when informative}``,
#: for the tensors judged when the model was indexed.
Verdicts = Callable[[str], "dict[str, str | None]"]


def stored_verdicts(session_factory: Callable[[], Any], digest: str) -> dict[str, str | None]:
    """The verdicts ``index`` stored for the weights of ``digest`` (empty when none were stored)."""
    with session_factory() as s:
        model_id = s.scalar(
            select(Tensor.model_id).join(Model, Model.id == Tensor.model_id)
            .where(Model.content_digest == digest, Tensor.informative.is_not(None)).limit(1)
        )
        if model_id is None:
            return {}
        rows = s.execute(
            select(Tensor.name, Tensor.informative, Tensor.degenerate_reason)
            .where(Tensor.model_id == model_id, Tensor.informative.is_not(None))
        )
        return {name: None if ok else (why or "degenerate") for name, ok, why in rows}

#: Tokens per forward pass for phi_MATCH: 8 sequences of 64 seeded random tokens.
_N_SEQ, _SEQ_LEN = 8, 64


@dataclass
class _Loaded:
    weights: Any  # a dict of tensors, or an indexer.streaming.StreamingWeightMap
    activations: dict | None
    notes: tuple[str, ...]


#: The public name of what :meth:`WeightsCache.load` returns.
LoadedModel = _Loaded


class WeightsCache:
    """Weights (and activations) of models by ``(source, digest)``, at most ``cache_bytes`` of them."""

    def __init__(
        self, cache_bytes: int = 4 << 30, *, home: Path | None = None, verdicts: Verdicts | None = None,
    ) -> None:
        self._cache: OrderedDict[tuple[str, str | None], _Loaded] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._home = home  # activations are cached on disk under it (none: kept in memory)
        self._verdicts = verdicts  # degenerate verdicts stored at index time, by content digest

    def load(self, source: str, digest: str | None = None, *, activations: bool = True) -> LoadedModel:
        """Weights (and, unless ``activations=False``, activations) of the model at ``source``."""
        configure_threads(threads())  # the tests that follow run on these threads
        return self._load(source, digest, activations=activations)

    def _load(self, source: str, digest: str | None = None, *, activations: bool = True) -> _Loaded:
        """Weights (and activations) of the model at ``source``, cached by path and content digest.

        Weights stream from the memory-mapped files (a small model is read
        whole); activations are computed block by block on first use and
        cached on disk per content digest (``registry/_loading.py``).
        """
        key = (source, digest)
        cached = self._cache.get(key)
        if cached is not None and (cached.activations is not None or cached.notes or not activations):
            self._cache.move_to_end(key)
            return cached
        from ..indexer.streaming import StreamingWeightMap
        from ._loading import check_block_budget, in_memory_limit

        streamed = StreamingWeightMap(source)
        check_block_budget(streamed, f"'{source}'")
        weights = streamed.to_dict() if streamed.float32_bytes <= in_memory_limit() else streamed
        if weights is streamed and digest is not None:
            # the tests check a dict themselves; a registry model streams with its verdicts. A path
            # has none: its tensors are judged as they are read (a degenerate one stops the test),
            # since judging them up front would read the whole model before a sequential test starts
            streamed.degenerate = self._judged(streamed, digest)
        acts, notes = self._activations(source, streamed, digest) if activations else (None, ())
        loaded = _Loaded(weights, acts, notes)
        self._cache[key] = loaded
        self._evict()
        return loaded

    def _activations(self, source: str, streamed: Any, digest: str | None) -> tuple[dict | None, tuple[str, ...]]:
        """Lazy phi_MATCH activations of a model, or ``None`` and the note why only weights-only tests run.

        Nothing runs here: the runner (and transformers) is built only when a
        test needs a block that is not cached yet, and a model too large for a
        forward pass or without a usable config is named in the notes instead.
        """
        from ._loading import LazyActivations, activation_cache_dir

        n_params = streamed.n_params
        if n_params > forward_max_params():
            return None, (
                f"weights-only tests: {n_params:,} identity parameters exceed MOTHERTREE_FORWARD_MAX_PARAMS "
                f"({forward_max_params():,}), no forward pass",
            )
        config = streamed.source.config or {}
        vocab = config.get("vocab_size")
        max_pos = config.get("max_position_embeddings") or config.get("n_positions")
        if not config:
            return None, ("weights-only tests: cannot build a forward pass: no config.json in the folder",)
        if streamed.architecture == "unknown" or not isinstance(vocab, int) or vocab < 1:
            return None, (f"weights-only tests: cannot build a forward pass for model_type "
                          f"{config.get('model_type')!r}",)
        from ..indexer.forward import build_block_runner, runner_device, seeded_inputs
        from .settings import get as setting

        seq_len = min(_SEQ_LEN, max_pos) if isinstance(max_pos, int) and max_pos > 0 else _SEQ_LEN
        ids = seeded_inputs(vocab, _N_SEQ, seq_len, seed=0)
        cache_dir = activation_cache_dir(self._home, digest, vocab, _N_SEQ, seq_len) \
            if self._home is not None else None
        device = runner_device(setting("MOTHERTREE_DEVICE") or "auto")
        return {
            "vocab": vocab,
            "seq_len": seq_len,
            "blocks": LazyActivations(lambda: build_block_runner(source, weights=streamed, device=device),
                                      ids, cache_dir, blocks=streamed.blocks),
        }, ()

    def _evict(self) -> None:
        """Drop least recently used models until at most ``cache_bytes`` (and half the memory budget) are held.

        The two most recent models stay whatever their size: they are the pair at hand.
        """
        from ._loading import loaded_nbytes
        from .settings import max_memory

        limit = min(self._cache_bytes, max_memory() // 2)
        while len(self._cache) > 2 and sum(loaded_nbytes(x.weights, x.activations) for x in self._cache.values()) > limit:
            self._cache.popitem(last=False)

    def _judged(self, streamed: Any, digest: str | None) -> dict:
        """Each degenerate key of a streamed model, with why: from the index, else judged now.

        A tensor the index did not judge (a model indexed before verdicts were
        stored) is read once here, one at a time: a test never builds evidence
        from a degenerate tensor.
        """
        from ..lineage import degenerate_reason

        stored = self._verdicts(digest) if self._verdicts is not None and digest is not None else {}
        out = {}
        for key in streamed:
            name = streamed.stored_name(key)
            why = stored[name] if name in stored else degenerate_reason(streamed[key])
            if why is not None:
                out[key] = why
        return out
