"""A byte-bounded cache of model weights (and activations) for the independence tests.

Resolve reads each model through this cache, so a family larger than memory is
compared one or two models at a time; the bound is on the bytes held.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .errors import UnreadableWeightsError
from .settings import forward_max_params

__all__ = ["WeightsCache", "LoadedModel"]

#: Tokens per forward pass for phi_MATCH: 8 sequences of 64 seeded random tokens.
_N_SEQ, _SEQ_LEN = 8, 64


@dataclass
class _Loaded:
    weights: dict
    activations: dict | None
    notes: tuple[str, ...]


#: The public name of what :meth:`WeightsCache.load` returns.
LoadedModel = _Loaded


class WeightsCache:
    """Weights (and activations) of models by ``(source, digest)``, at most ``cache_bytes`` of them."""

    def __init__(self, cache_bytes: int = 4 << 30) -> None:
        self._cache: OrderedDict[tuple[str, str | None], _Loaded] = OrderedDict()
        self._cache_bytes = cache_bytes

    def load(self, source: str, digest: str | None = None, *, activations: bool = True) -> LoadedModel:
        """Weights (and, unless ``activations=False``, activations) of the model at ``source``."""
        return self._load(source, digest, activations=activations)

    def _load(self, source: str, digest: str | None = None, *, activations: bool = True) -> _Loaded:
        """Weights (and activations) of the model at ``source``, cached by path and content digest."""
        key = (source, digest)
        cached = self._cache.get(key)
        if cached is not None and (cached.activations is not None or cached.notes or not activations):
            self._cache.move_to_end(key)
            return cached
        from ..indexer.weights import load_weight_map

        weights = load_weight_map(source)
        acts, notes = None, ()
        n_params = sum(t.numel() for t in weights.values())
        if activations and n_params > forward_max_params():
            notes = (
                f"weights-only tests: {n_params:,} identity parameters exceed MOTHERTREE_FORWARD_MAX_PARAMS "
                f"({forward_max_params():,}), no forward pass",
            )
        elif activations:
            try:
                from ..indexer.forward import load_forward_model, seeded_inputs
                from ..indexer.activations import collect_mlp_activations

                fm = load_forward_model(source)
                cfg = fm.model.config
                max_pos = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
                seq_len = min(_SEQ_LEN, max_pos) if isinstance(max_pos, int) and max_pos > 0 else _SEQ_LEN
                ids = seeded_inputs(fm.vocab_size, _N_SEQ, seq_len, seed=0)
                acts = {
                    "vocab": fm.vocab_size,
                    "seq_len": seq_len,
                    "blocks": collect_mlp_activations(fm.model, fm.mlp_modules, ids),
                }
                del fm
            except UnreadableWeightsError as exc:
                notes = (f"weights-only tests: {exc.problem}",)
            except (RuntimeError, IndexError, ValueError) as exc:
                notes = (f"weights-only tests: the forward pass failed ({type(exc).__name__}: {exc})",)
        loaded = _Loaded(weights, acts, notes)
        self._cache[key] = loaded
        # Keep at most ``cache_bytes`` of weights and activations, and always
        # the two models of the pair at hand.
        while len(self._cache) > 2 and sum(_nbytes(x) for x in self._cache.values()) > self._cache_bytes:
            self._cache.popitem(last=False)
        return loaded


def _nbytes(loaded: _Loaded) -> int:
    n = sum(t.numel() * t.element_size() for t in loaded.weights.values())
    for acts in ((loaded.activations or {}).get("blocks") or {}).values():
        n += sum(t.numel() * t.element_size() for t in (acts.a, acts.b))
    return n
