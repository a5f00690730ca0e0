"""Which indexed model a PEFT adapter belongs to: shapes first, then the weights, then the declared hint.

Pure functions on shapes and tensors. An adapter's update ``B @ A`` fits any
model with the same shapes (a base and all its fine-tunes), so shapes only
narrow the field. Two things in an adapter are copies of its true base and
decide between relatives that fit:

- ``modules_to_save`` tensors start as copies of the base's module (the
  closest candidate is the base);
- DoRA's magnitude vector starts as the base weight's per-output-row norms.

A plain LoRA update carries no copy of the base: then the declared
``base_model_name_or_path`` decides *if* it names a model that fits, and
otherwise the result says the weights cannot tell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

__all__ = ["AdapterPlacement", "place_adapter", "match_names", "MAGNITUDE_SUFFIX"]

MAGNITUDE_SUFFIX = ".lora_magnitude_vector"
#: The best candidate's distance must be this many times smaller than the runner-up's.
_MARGIN = 2.0


@dataclass(frozen=True)
class AdapterPlacement:
    """Where an adapter goes and why.

    ``decided_by`` is ``"weights"`` (modules_to_save / DoRA magnitudes point at
    one candidate), ``"only-fit"`` (one candidate has the shapes),
    ``"declared"`` (several fit, the weights cannot tell, the declared base is
    one of them), ``"undecided"`` (several fit and nothing tells: placed under
    the first, in the caller's order), or ``"none"`` (nothing fits).
    """

    base: str | None
    decided_by: str
    confidence: float
    fitting: tuple[str, ...]
    distances: tuple[tuple[str, float], ...]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "decided_by": self.decided_by,
            "confidence": self.confidence,
            "fitting": list(self.fitting),
            "distances": {n: (None if math.isnan(d) else d) for n, d in self.distances},
            "notes": list(self.notes),
        }


def match_names(adapter_names: Sequence[str], base_names: Sequence[str]) -> dict[str, str]:
    """Adapter parameter name -> the base's, equal or equal after a leading module prefix
    (``transformer.h.0.attn.c_attn.weight`` ~ ``h.0.attn.c_attn.weight``).

    >>> match_names(["transformer.h.0.attn.c_attn.weight"], ["h.0.attn.c_attn.weight"])
    {'transformer.h.0.attn.c_attn.weight': 'h.0.attn.c_attn.weight'}
    """
    base = set(base_names)
    by_tail: dict[str, str] = {}
    for b in base_names:
        parts = b.split(".")
        for i in range(len(parts)):
            by_tail.setdefault(".".join(parts[i:]), b)
    out = {}
    for a in adapter_names:
        if a in base:
            out[a] = a
            continue
        parts = a.split(".")
        for i in range(len(parts)):
            tail = ".".join(parts[i:])
            if tail in by_tail and tail.count(".") >= 2:
                out[a] = by_tail[tail]
                break
    return out


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.float().flatten(), y.float().flatten()
    return float((x - y).norm() / y.norm().clamp_min(1e-12))


def _row_norms(w: torch.Tensor, n: int) -> torch.Tensor | None:
    if w.ndim != 2:
        return None
    if w.shape[0] == n:
        return w.float().norm(dim=1)
    if w.shape[1] == n:  # Conv1D storage ([in, out])
        return w.float().norm(dim=0)
    return None


def place_adapter(
    update_shapes: Mapping[str, tuple[int, ...]],
    candidates: Mapping[str, Mapping[str, tuple[int, ...]]],
    *,
    evidence: Mapping[str, torch.Tensor] | None = None,
    candidate_tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    declared: Sequence[str] = (),
    dora_updates: Mapping[str, torch.Tensor] | None = None,
) -> AdapterPlacement:
    """Choose the base of an adapter among indexed models.

    Parameters
    ----------
    update_shapes : mapping
        The adapter's effective tensors (LoRA updates and full weights) by the
        base parameter name they apply to, with shapes. Magnitude vectors
        (names ending in ``.lora_magnitude_vector``) are not shapes to fit.
    candidates : mapping
        Candidate name -> its parameter shapes, in preference order for ties.
    evidence : mapping, optional
        The adapter's copies of base tensors: ``modules_to_save`` weights under
        their parameter names, DoRA magnitudes under ``<module>.lora_magnitude_vector``.
    candidate_tensors : mapping, optional
        Candidate name -> its tensors for the evidence names (magnitudes are
        compared with ``<module>.weight``).
    declared : sequence of str
        Candidates the adapter's declared base names (a hint, checked here).
    dora_updates : mapping, optional
        ``<module>.weight`` -> the adapter's update of that module: DoRA's
        magnitude starts as the row norms of ``W_base + update``, so that sum is
        what the magnitude is compared with.
    """
    names = [n for n in update_shapes if not n.endswith(MAGNITUDE_SUFFIX)]
    fitting = _fitting(names, update_shapes, candidates)
    if not fitting:
        return AdapterPlacement(
            None, "none", 0.0, (), (),
            (f"no indexed model has the {len(names)} target shapes of this adapter: index its base model",),
        )
    notes: list[str] = []
    distances: list[tuple[str, float]] = []
    if evidence and candidate_tensors:
        distances = [
            (cand, _evidence_distance(evidence, candidate_tensors.get(cand, {}), dora_updates or {}))
            for cand in fitting
        ]
        placed = _place_by_weights(fitting, distances, notes)
        if placed is not None:
            return placed
    return _place_by_shapes(fitting, declared, distances, notes)


def _fitting(
    names: Sequence[str], update_shapes: Mapping[str, tuple[int, ...]],
    candidates: Mapping[str, Mapping[str, tuple[int, ...]]],
) -> list[str]:
    """The candidates with every target name and shape of the adapter, in preference order.

    An adapter cannot apply to a model it does not fit, so fit is the first
    filter and the only one that needs no weights.
    """
    fitting = []
    for cand, shapes in candidates.items():
        m = match_names(names, list(shapes))
        if len(m) == len(names) and all(tuple(shapes[m[n]]) == tuple(update_shapes[n]) for n in names):
            fitting.append(cand)
    return fitting


def _evidence_distance(
    evidence: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor],
    dora_updates: Mapping[str, torch.Tensor],
) -> float:
    """Mean relative distance of the adapter's copies of base tensors from one candidate's (NaN: nothing to compare).

    A ``modules_to_save`` weight is compared with the candidate's tensor; a DoRA
    magnitude with the row norms of the candidate's module weight plus the
    adapter's update, which is what DoRA's magnitude starts as.
    """
    ds = []
    for name, t in evidence.items():
        if name.endswith(MAGNITUDE_SUFFIX):
            module = name.removesuffix(MAGNITUDE_SUFFIX) + ".weight"
            module_w = match_names([module], list(tensors))
            w = tensors.get(next(iter(module_w.values()), ""), None)
            upd = dora_updates.get(module)
            if w is not None and upd is not None and tuple(upd.shape) == tuple(w.shape):
                w = w.float() + upd.float()
            norms = _row_norms(w, t.numel()) if w is not None else None
            if norms is not None:
                ds.append(_rel(t, norms))
        else:
            key = match_names([name], list(tensors))
            w = tensors.get(next(iter(key.values()), ""), None)
            if w is not None and tuple(w.shape) == tuple(t.shape):
                ds.append(_rel(t, w))
    return sum(ds) / len(ds) if ds else float("nan")


def _place_by_weights(
    fitting: list[str], distances: list[tuple[str, float]], notes: list[str],
) -> AdapterPlacement | None:
    """The nearest candidate when its copied tensors set it clearly apart; else ``None`` and a note why not.

    Weights are the strongest evidence, so they decide alone when the nearest
    candidate beats the runner-up by :data:`_MARGIN`; a tie falls through to fit and declarations.
    """
    scored = sorted((d, c) for c, d in distances if not math.isnan(d))
    if not scored:
        return None
    best_d, best = scored[0]
    runner = scored[1][0] if len(scored) > 1 else float("inf")
    if len(scored) == 1 or runner > _MARGIN * max(best_d, 1e-9):
        notes.append(
            f"{best}: the adapter's copies of base tensors (modules_to_save / DoRA magnitudes) are "
            f"{best_d:.3g} from it" + (f", {runner:.3g} from the runner-up" if runner < float('inf') else "")
        )
        return AdapterPlacement(best, "weights", 0.95, tuple(fitting), tuple(distances), tuple(notes))
    notes.append(f"the copied base tensors are as close to {scored[1][1]} ({runner:.3g}) as to {best} ({best_d:.3g})")
    return None


def _place_by_shapes(
    fitting: list[str], declared: Sequence[str], distances: list[tuple[str, float]], notes: list[str],
) -> AdapterPlacement:
    """Without decisive weights: the only fit, else the one declared fit, else the first fit (undecided).

    A LoRA update holds no copy of its base, so shapes and declarations are all
    that is left; the confidence says which of them decided.
    """
    if len(fitting) == 1:
        notes.append(f"{fitting[0]} is the only indexed model whose shapes fit")
        return AdapterPlacement(fitting[0], "only-fit", 0.8, tuple(fitting), tuple(distances), tuple(notes))
    hinted = [c for c in fitting if c in set(declared)]
    if len(hinted) == 1:
        notes.append(
            f"{len(fitting)} models fit ({', '.join(fitting)}) and the weights cannot tell them apart "
            f"(a LoRA update holds no copy of its base); the declared base {hinted[0]} fits, so it wins"
        )
        return AdapterPlacement(hinted[0], "declared", 0.7, tuple(fitting), tuple(distances), tuple(notes))
    notes.append(
        f"{len(fitting)} models fit ({', '.join(fitting)}) and neither the weights nor a declared base tell "
        f"them apart: placed under {fitting[0]}, the first in family order"
    )
    return AdapterPlacement(fitting[0], "undecided", 0.4, tuple(fitting), tuple(distances), tuple(notes))
