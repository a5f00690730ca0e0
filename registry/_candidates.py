"""Candidate relatives of a model: FAISS retrieval, then exact scores from SQL.

Retrieval pools the nearest model vectors of each fingerprint kind and the
owners of the nearest layer vectors (so a model that shares only a few
blocks is still found), then scores every pooled model exactly from its
stored vectors:

- model score: the larger of the aligned and the invariant model-vector
  cosines. Aligned catches fine-tunes, merges, quantized copies; invariant
  catches the same after hidden units or heads were permuted; taking the
  maximum means either kind of evidence suffices.
- layer matches: for every block of the query and every role group
  (``attn``, ``mlp``; ``embed`` for the embeddings), the candidate block
  whose sketches of the same roles are closest on average, in the kind
  where it is closest ("block 3 of X is closest to block 6 of Y").

:data:`THRESHOLD` separates relatives from unrelated models; see its comment
for how it was measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..indexer.fingerprints import DIM, KINDS, LayerFingerprint, ModelFingerprint, role_group
from ._schema import Fingerprint, Model
from ._vectors import VectorStore

__all__ = [
    "THRESHOLD",
    "LayerMatch",
    "Candidate",
    "CandidatesResult",
    "find_candidates",
    "fingerprint_from_rows",
    "fingerprint_rows",
    "layer_matches",
]

#: Model score at or above which a candidate is called a relative. Measured on
#: the test zoo (``bench/bench_fingerprints.py``, 23 Llama and GPT-2 models):
#: the highest unrelated pair, roots trained on the same corpus from other
#: seeds included, scored 0.103 (sketch noise is about 1/sqrt(DIM) = 0.03);
#: the lowest true relative (same family: fine-tunes, LoRA, int8, depth and
#: width pruning, permutation, merge, a re-initialised block) scored 0.70.
THRESHOLD = 0.3

#: Neighbours fetched per layer vector when pooling candidates by layers.
_LAYER_K = 8


@dataclass(frozen=True)
class LayerMatch:
    """Block ``block`` of the query is closest to block ``other_block`` of the candidate."""

    block: int | None
    other_block: int | None
    role: str
    kind: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "other_block": self.other_block,
            "role": self.role,
            "kind": self.kind,
            "score": round(self.score, 6),
        }


@dataclass(frozen=True)
class Candidate:
    """One retrieved model, its model score (max over kinds) and its layer matches."""

    name: str
    score: float
    aligned_score: float | None
    invariant_score: float | None
    above_threshold: bool
    layers: tuple[LayerMatch, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "score": round(self.score, 6),
            "aligned_score": None if self.aligned_score is None else round(self.aligned_score, 6),
            "invariant_score": None if self.invariant_score is None else round(self.invariant_score, 6),
            "above_threshold": self.above_threshold,
            "layers": [layer.to_dict() for layer in self.layers],
        }


@dataclass(frozen=True)
class CandidatesResult:
    """Relatives of ``model``, best first.

    Attributes
    ----------
    model : str
        The query: a registry name, or the default name of a path fingerprinted on the fly.
    candidates : tuple of Candidate
    threshold : float
        :data:`THRESHOLD`; ``above_threshold`` on each candidate compares with it.
    stored : bool
        Whether the query's fingerprints are in the registry.
    notices : tuple of str
        Repairs the FAISS store made while answering (rebuilt indexes).
    """

    model: str
    candidates: tuple[Candidate, ...]
    threshold: float
    stored: bool
    notices: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "candidates": [c.to_dict() for c in self.candidates]}


def fingerprint_rows(model_id: int, fp: ModelFingerprint) -> list[Fingerprint]:
    """SQL rows for a fingerprint: one per model vector and one per layer sketch."""
    rows = [
        Fingerprint(model_id=model_id, kind=kind, level="model", role=None, block=None, shape=None,
                    dim=int(v.shape[0]), vector=v.astype(np.float32).tobytes())
        for kind, v in fp.model_vectors
    ]
    rows += [
        Fingerprint(model_id=model_id, kind=layer.kind, level="layer", role=layer.role, block=layer.block,
                    shape=list(layer.shape), dim=int(layer.vector.shape[0]),
                    vector=layer.vector.astype(np.float32).tobytes())
        for layer in fp.layers
    ]
    return rows


def fingerprint_from_rows(rows: Iterable[Fingerprint]) -> ModelFingerprint:
    """Rebuild a :class:`ModelFingerprint` from its stored rows."""
    layers, model_vectors = [], {}
    for r in sorted(rows, key=lambda r: r.id):
        vec = np.frombuffer(r.vector, dtype=np.float32)
        if r.level == "model":
            model_vectors[r.kind] = vec
        else:
            layers.append(LayerFingerprint(r.kind, r.role, r.block, tuple(r.shape or ()), vec))
    return ModelFingerprint(
        layers=tuple(layers),
        model_vectors=tuple((k, model_vectors[k]) for k in KINDS if k in model_vectors),
        skipped=(),
        notes=(),
        device="stored",
    )


def _owners(s: Session, fingerprint_ids: Iterable[int]) -> dict[int, int]:
    ids = sorted({int(i) for i in fingerprint_ids if i >= 0})
    if not ids:
        return {}
    return dict(s.execute(select(Fingerprint.id, Fingerprint.model_id).where(Fingerprint.id.in_(ids))).all())


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def _block_means(layers: Sequence[LayerFingerprint], kind: str) -> dict[tuple[str, tuple[int, ...]], dict]:
    """``{(role, shape): {block: unit vector}}`` for one kind (duplicates averaged)."""
    out: dict[tuple[str, tuple[int, ...]], dict[int | None, list[np.ndarray]]] = {}
    for layer in layers:
        if layer.kind == kind:
            out.setdefault((layer.role, tuple(layer.shape)), {}).setdefault(layer.block, []).append(layer.vector)
    means = {}
    for key, blocks in out.items():
        means[key] = {}
        for b, vs in blocks.items():
            m = np.mean(vs, axis=0)
            n = np.linalg.norm(m)
            means[key][b] = m / n if n > 0 else m
    return means


def layer_matches(query: Sequence[LayerFingerprint], other: Sequence[LayerFingerprint]) -> tuple[LayerMatch, ...]:
    """For each query block and role group, the closest block of ``other`` (in its best kind).

    A block pair's similarity in a group is the mean cosine over the roles
    (and shapes) both blocks have.
    """
    best: dict[tuple[int | None, str], LayerMatch] = {}
    for kind in KINDS:
        q, o = _block_means(query, kind), _block_means(other, kind)
        # group -> ({(query block, other block): summed cosine}, {...: count})
        acc: dict[str, tuple[dict, dict]] = {}
        for key, qblocks in q.items():
            oblocks = o.get(key)
            if not oblocks:
                continue
            qb, ob = list(qblocks), list(oblocks)
            cos = np.stack([qblocks[b] for b in qb]) @ np.stack([oblocks[b] for b in ob]).T
            total, count = acc.setdefault(role_group(key[0]), ({}, {}))
            for i, bq in enumerate(qb):
                for j, bo in enumerate(ob):
                    total[bq, bo] = total.get((bq, bo), 0.0) + float(cos[i, j])
                    count[bq, bo] = count.get((bq, bo), 0) + 1
        for group, (total, count) in acc.items():
            for (bq, bo), t in total.items():
                score = t / count[bq, bo]
                current = best.get((bq, group))
                if current is None or score > current.score:
                    best[(bq, group)] = LayerMatch(bq, bo, group, kind, score)
    return tuple(sorted(best.values(), key=lambda m: (m.block is not None, m.block or 0, m.role)))


def _pool(s: Session, store: VectorStore, query: ModelFingerprint, *, k: int, threshold: float) -> set[int]:
    """The model ids the ANN indexes put near ``query``: by model vector, or by any layer above ``threshold``.

    The model-vector search fetches more than ``k`` (the query itself and
    ties take places), and a layer hit brings in a model that shares one
    block with the query however far its model vector is.
    """
    pool: set[int] = set()
    fetch = k + 1 + max(k, 10)
    for kind, vec in query.model_vectors:
        _, ids = store.search((kind, "model", int(vec.shape[0])), vec[None, :], fetch)
        pool.update(_owners(s, ids.ravel()).values())
    for kind in KINDS:
        vecs = [layer.vector for layer in query.layers if layer.kind == kind and np.any(layer.vector)]
        if not vecs:
            continue
        scores, ids = store.search((kind, "layer", DIM), np.stack(vecs), _LAYER_K)
        hit = ids[scores >= threshold]
        pool.update(_owners(s, hit.ravel()).values())
    return pool


def _scored(
    s: Session, store: VectorStore, query: ModelFingerprint, pool: set[int],
) -> list[tuple[float, int, dict[str, float], ModelFingerprint]]:
    """``(score, model id, cosine per kind, fingerprint)`` of each pooled model, scored exactly from SQL rows.

    The ANN search only proposes; the score is recomputed from the stored
    vectors (SQL is the source of truth), the best over the kinds both sides have.
    """
    rows_by_model: dict[int, list[Fingerprint]] = {}
    for row in store.vectors(s, pool):
        rows_by_model.setdefault(row.model_id, []).append(row)
    query_vectors = dict(query.model_vectors)
    scored = []
    for mid, rows in rows_by_model.items():
        theirs = fingerprint_from_rows(rows)
        per_kind = {
            kind: _cos(qv, theirs.model_vector(kind))
            for kind, qv in query_vectors.items()
            if theirs.model_vector(kind) is not None
        }
        if per_kind:
            scored.append((max(per_kind.values()), mid, per_kind, theirs))
    return scored


def find_candidates(
    s: Session,
    store: VectorStore,
    query: ModelFingerprint,
    *,
    name: str,
    exclude_model_id: int | None,
    k: int,
    threshold: float = THRESHOLD,
    stored: bool,
) -> CandidatesResult:
    """Rank the registry's models by similarity to ``query`` (see the module docstring).

    Parameters
    ----------
    s : Session
    store : VectorStore
    query : ModelFingerprint
    name : str
        Reported as the query's name.
    exclude_model_id : int or None
        The query's own row, never its own candidate.
    k : int
        Candidates returned (at most).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    notices_before = len(store.notices)
    pool = _pool(s, store, query, k=k, threshold=threshold)
    pool.discard(exclude_model_id)
    if not pool:
        return CandidatesResult(name, (), threshold, stored, tuple(store.notices[notices_before:]))
    names = dict(s.execute(select(Model.id, Model.name).where(Model.id.in_(pool))).all())
    scored = _scored(s, store, query, pool)
    scored.sort(key=lambda t: (-t[0], names[t[1]]))
    candidates = tuple(
        Candidate(
            name=names[mid],
            score=score,
            aligned_score=per_kind.get("aligned"),
            invariant_score=per_kind.get("invariant"),
            above_threshold=score >= threshold,
            layers=layer_matches(query.layers, theirs.layers),
        )
        for score, mid, per_kind, theirs in scored[:k]
    )
    return CandidatesResult(name, candidates, threshold, stored, tuple(store.notices[notices_before:]))
