"""Lineage in the registry: test pairs, resolve families, answer ancestry queries.

Data flows one way: fingerprints give candidates, :mod:`mothertree.lineage`
tests and types each pair, and the confirmed edges are written here with their
evidence. Everything statistical is delegated to pure functions in ``lineage``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import networkx as nx
from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from ._models import iso
from ._schema import Edge, FamilyMember, Model, PairTest, ResolutionRun, Tensor
from .errors import ModelNotFoundError, MothertreeError, NoComparableTensorsError, UnreadableWeightsError
from .settings import forward_max_params

if TYPE_CHECKING:
    from ._registry import Registry

__all__ = ["PairReport", "ResolveReport", "EdgeView", "LineageView", "Lineage"]

Progress = Callable[[str], None]

#: Ids per ``IN (...)`` list, well under SQLite's and PostgreSQL's parameter limits.
_IN_CHUNK = 1000

#: Largest family whose every pair is compared on weights when building its tree.
_ALL_PAIRS_MAX = 64

#: Tokens per forward pass for phi_MATCH: 8 sequences of 64 seeded random tokens.
_N_SEQ, _SEQ_LEN = 8, 64


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class PairReport:
    """One independence test between two models, with their names."""

    a: str
    b: str
    result: Any  # lineage.IndependenceResult

    def to_dict(self) -> dict[str, Any]:
        d = self.result.to_dict()
        return {"a": self.a, "b": self.b, **d}


@dataclass(frozen=True)
class EdgeView:
    parent: str
    child: str
    relation: str
    p_value_log10: float
    q_value_log10: float | None
    direction_confidence: float
    relation_confidence: float | None
    method: str
    block_map: tuple[tuple[int, int], ...] | None
    evidence: dict[str, Any] | None
    computed_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "parent": self.parent,
            "child": self.child,
            "relation": self.relation,
            "p_value_log10": self.p_value_log10,
            "q_value_log10": self.q_value_log10,
            "direction_confidence": self.direction_confidence,
            "relation_confidence": self.relation_confidence,
            "method": self.method,
            "block_map": [list(x) for x in self.block_map] if self.block_map else None,
            "evidence": self.evidence,
            "computed_at": self.computed_at,
        }


@dataclass(frozen=True)
class LineageView:
    """A set of models and the edges among them (a family, an ancestry, descendants, the forest)."""

    model: str | None
    models: tuple[str, ...]
    edges: tuple[EdgeView, ...]
    roots: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "models": [{"name": m} for m in self.models],
            "edges": [e.to_dict() for e in self.edges],
            "roots": list(self.roots),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class ResolveReport:
    models_resolved: int
    pairs_tested: int
    dependent_pairs: int
    edges: int
    families: int
    alpha: float
    full: bool
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, warnings=list(self.warnings))


@dataclass
class _Loaded:
    weights: dict
    activations: dict | None
    notes: tuple[str, ...]


class Lineage:
    """The lineage operations of one :class:`Registry` (reached as ``registry.lineage``)."""

    def __init__(self, registry: "Registry", cache_bytes: int = 4 << 30) -> None:
        self.registry = registry
        self._cache: OrderedDict[tuple[str, str | None], _Loaded] = OrderedDict()
        self._cache_bytes = cache_bytes

    # -- loading ---------------------------------------------------------
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
        from ._loading import (
            LazyActivations, activation_cache_dir, check_block_budget, in_memory_limit, loaded_nbytes,
        )
        from .settings import max_memory

        streamed = StreamingWeightMap(source)
        check_block_budget(streamed, f"'{source}'")
        weights = streamed.to_dict() if streamed.float32_bytes <= in_memory_limit() else streamed
        acts, notes = None, ()
        n_params = streamed.n_params
        if activations and n_params > forward_max_params():
            notes = (
                f"weights-only tests: {n_params:,} identity parameters exceed MOTHERTREE_FORWARD_MAX_PARAMS "
                f"({forward_max_params():,}), no forward pass",
            )
        elif activations:
            config = streamed.source.config or {}
            vocab = config.get("vocab_size")
            max_pos = config.get("max_position_embeddings") or config.get("n_positions")
            if not config:
                notes = ("weights-only tests: cannot build a forward pass: no config.json in the folder",)
            elif streamed.family == "unknown" or not isinstance(vocab, int) or vocab < 1:
                notes = (f"weights-only tests: cannot build a forward pass for model_type "
                         f"{config.get('model_type')!r}",)
            else:
                from ..indexer.forward import build_block_runner, runner_device, seeded_inputs
                from .settings import get as setting

                seq_len = min(_SEQ_LEN, max_pos) if isinstance(max_pos, int) and max_pos > 0 else _SEQ_LEN
                ids = seeded_inputs(vocab, _N_SEQ, seq_len, seed=0)
                cache_dir = activation_cache_dir(self.registry.home, digest, vocab, _N_SEQ, seq_len)
                device = runner_device(setting("MOTHERTREE_DEVICE") or "auto")
                acts = {
                    "vocab": vocab,
                    "seq_len": seq_len,
                    # the runner (and transformers) is built only when a test needs an uncached block
                    "blocks": LazyActivations(lambda: build_block_runner(source, weights=streamed, device=device),
                                              ids, cache_dir, blocks=streamed.blocks),
                }
        loaded = _Loaded(weights, acts, notes)
        self._cache[key] = loaded
        # Keep at most ``cache_bytes`` (and the memory budget) of weights and
        # activations, and always the two models of the pair at hand.
        limit = min(self._cache_bytes, max_memory() // 2)
        while len(self._cache) > 2 and sum(loaded_nbytes(x.weights, x.activations) for x in self._cache.values()) > limit:
            self._cache.popitem(last=False)
        return loaded

    def _source_of(self, s: Session, name_or_path: str) -> tuple[str, str, str | None]:
        """``(name, source, content digest)`` of a registry name, or of a path (digest unknown)."""
        m = s.scalar(select(Model).where(Model.name == name_or_path))
        if m is not None:
            return m.name, m.source, m.content_digest
        if Path(name_or_path).exists():
            return name_or_path, name_or_path, None
        raise ModelNotFoundError(name_or_path, self.registry.display_url)

    def _test_loaded(self, a: _Loaded, b: _Loaded, *, method: str, alpha: float, names: tuple[str, str]):
        """The pair's test, read block by block with sequential early stopping (``docs/streaming.md``)."""
        from ..lineage import independence_test

        acts_a = acts_b = None
        if (
            a.activations and b.activations
            and (a.activations["vocab"], a.activations["seq_len"]) == (b.activations["vocab"], b.activations["seq_len"])
        ):
            acts_a, acts_b = a.activations["blocks"], b.activations["blocks"]
        try:
            try:
                return independence_test(
                    a.weights, b.weights, method=method, activations_a=acts_a, activations_b=acts_b, alpha=alpha,
                    sequential=method in ("auto", "exact", "match"),
                )
            except (RuntimeError, IndexError, UnreadableWeightsError) as exc:
                # no forward pass after all (built on first use), or one that fails half-way:
                # the weights-only tests, with a notice
                if acts_a is None or method == "match":
                    raise
                why = exc.problem if isinstance(exc, UnreadableWeightsError) else \
                    f"the forward pass failed ({type(exc).__name__}: {exc})"
                res = independence_test(a.weights, b.weights, method=method, alpha=alpha,
                                        sequential=method in ("auto", "exact"))
                return dataclasses.replace(res, notes=res.notes + (f"weights-only tests: {why}",))
        except ValueError as exc:
            raise NoComparableTensorsError(names[0], names[1], str(exc)) from None

    def test_pair(self, a: str, b: str, *, method: str = "auto", alpha: float = 0.01) -> PairReport:
        """Run the independence test between two models (names in the registry, or paths)."""
        with self.registry.session() as s:
            (na, *sa), (nb, *sb) = self._source_of(s, a), self._source_of(s, b)
        la, lb = self._load(*sa), self._load(*sb)
        result = self._test_loaded(la, lb, method=method, alpha=alpha, names=(na, nb))
        notes = tuple(dict.fromkeys(la.notes + lb.notes))
        if notes and not set(notes) <= set(result.notes):
            result = dataclasses.replace(result, notes=tuple(result.notes) + notes)
        return PairReport(na, nb, result)

    # -- resolve ---------------------------------------------------------
    def resolve(
        self, *, full: bool = False, k: int = 10, alpha: float = 0.01, progress: Progress | None = None,
    ) -> ResolveReport:
        """Test candidate pairs of every unresolved model and refresh the families they touch.

        Incremental by default: only models never resolved are tested against
        their retrieval candidates, and only the families they join are
        re-solved. ``full`` forgets every test and edge and starts over.
        False discoveries are controlled over *all* pairs the registry has
        tested (Benjamini-Hochberg at ``alpha``).
        """
        from ..lineage.multiple import benjamini_hochberg

        say = progress or (lambda msg: None)
        warnings: list[str] = []
        started = _now()
        with self.registry.session() as s:
            if full:
                s.execute(delete(Edge))
                s.execute(delete(PairTest))
                s.execute(delete(FamilyMember))
                s.execute(update(Model).values(resolved_at=None))
            models = {m.id: m for m in s.scalars(select(Model))}
            pending = [m for m in models.values() if m.resolved_at is None]
            tested = {(t.a_id, t.b_id) for t in s.scalars(select(PairTest))}
            by_name = {m.name: m.id for m in models.values()}
            by_digest: dict[str, list[int]] = {}
            for m in models.values():
                by_digest.setdefault(m.content_digest, []).append(m.id)
            sources = {m.id: (m.source, m.content_digest) for m in models.values()}
            names = {m.id: m.name for m in models.values()}
        todo: list[tuple[int, int]] = []
        for m in pending:
            partners: set[int] = set(by_digest[m.content_digest]) - {m.id}
            try:
                cands = self.registry.candidates(m.name, k=k)
                partners |= {by_name[c.name] for c in cands.candidates if c.name in by_name}
            except MothertreeError as exc:
                warnings.append(f"{m.name}: no candidates ({exc})")
            for p in partners:
                pair = (min(m.id, p), max(m.id, p))
                if pair not in tested and pair not in todo:
                    todo.append(pair)
        for i, (a, b) in enumerate(todo, 1):
            say(f"testing {names[a]} ~ {names[b]} ({i}/{len(todo)})")
            try:
                row = self._pair_test(a, b, sources, (names[a], names[b]), alpha)
            except (NoComparableTensorsError, UnreadableWeightsError, OSError) as exc:
                row = PairTest(
                    a_id=a, b_id=b, method="none", statistic=None, p_value_log10=0.0, dependent=False,
                    details={"error": str(exc)}, computed_at=_now(),
                )
            with self.registry.session() as s:
                s.add(row)
        with self.registry.session() as s:
            rows = list(s.scalars(select(PairTest)))
            if rows:
                rejected, q = benjamini_hochberg([r.p_value_log10 for r in rows], alpha=alpha)
                for r, rej, qv in zip(rows, rejected, q):
                    r.q_value_log10 = float(qv)
                    r.dependent = bool(rej) and r.method != "none"
            dep = [(r.a_id, r.b_id) for r in rows if r.dependent]
            g = nx.Graph()
            g.add_nodes_from(models)
            g.add_edges_from(dep)
            comps = [sorted(c) for c in nx.connected_components(g)]
            pending_ids = {m.id for m in pending}
            touched = [c for c in comps if full or pending_ids & set(c)]
            fams = {}
            for comp in touched:
                members = set(comp)
                fams[tuple(comp)] = [(r.a_id, r.b_id, r) for r in rows if r.a_id in members and r.b_id in members]
            snapshot = {mid: (m.created_at, m.declared_base_models or [], m.name) for mid, m in models.items()}
        n_edges = 0
        failed: set[int] = set()
        for comp, dep_pairs in fams.items():
            say(f"family of {names[comp[0]]}: {len(comp)} model(s)")
            try:
                edges, new_tests = (
                    self._solve_family(list(comp), dep_pairs, sources, snapshot, alpha) if len(comp) > 1 else ([], [])
                )
            except (MothertreeError, OSError, ValueError) as exc:
                # One unreadable model must not stop the others; its family stays
                # pending and is tried again by the next resolve.
                warnings.append(f"family of {names[comp[0]]} not resolved: {exc}")
                failed |= set(comp)
                continue
            with self.registry.session() as s:
                s.add_all(new_tests)
                s.execute(delete(Edge).where(or_(Edge.child_id.in_(comp), Edge.parent_id.in_(comp))))
                s.execute(delete(FamilyMember).where(FamilyMember.model_id.in_(comp)))
                s.add_all(edges)
                children = {e.child_id for e in edges}
                s.add_all(FamilyMember(model_id=m, family_id=comp[0], is_root=m not in children) for m in comp)
            n_edges += len(edges)
        with self.registry.session() as s:
            now = _now()
            done = [m.id for m in pending if m.id not in failed]
            for i in range(0, len(done), _IN_CHUNK):
                s.execute(update(Model).where(Model.id.in_(done[i : i + _IN_CHUNK])).values(resolved_at=now))
            n_fam = len({f for f in s.scalars(select(FamilyMember.family_id))})
            total_edges = len(list(s.scalars(select(Edge.id))))
            s.add(ResolutionRun(
                started_at=started, finished_at=now, full=full, alpha=alpha, pairs_tested=len(todo),
                edges=total_edges, families=n_fam,
            ))
        return ResolveReport(len(done), len(todo), len(dep), total_edges, n_fam, alpha, full, tuple(warnings))

    def _pair_test(self, a: int, b: int, sources: dict, names: tuple[str, str], alpha: float) -> PairTest:
        """Run the automatic independence test on two registry models; the unsaved row."""
        la, lb = self._load(*sources[a]), self._load(*sources[b])
        res = self._test_loaded(la, lb, method="auto", alpha=alpha, names=names)
        return PairTest(
            a_id=a, b_id=b, method=res.method, statistic=_finite(res.statistic),
            p_value_log10=float(res.p_value_log10), dependent=bool(res.dependent),
            details={"block_map": [list(x) for x in res.block_map], "notes": list(res.notes)},
            computed_at=_now(),
        )

    def _solve_family(self, comp, dep_pairs, sources, snapshot, alpha) -> tuple[list[Edge], list[PairTest]]:
        """Type, orient and arrange one family into edges.

        Membership comes from the tested pairs; inside the family every pair
        is compared on its weights (up to :data:`_ALL_PAIRS_MAX` models), so a
        parent is found even when retrieval never paired it with its child.
        An edge the tests never covered is tested before it is stored.
        Returns the edges and the pair tests run on the way.
        """
        from ..lineage.direction import DirectionSignals, norm_growth_fraction, orient
        from ..lineage.relations import classify_relation, invariant_distance, merge_fit, relative_distance
        from ..lineage.tree import PairEvidence, recover_family

        with self.registry.session() as s:
            dtypes: dict[int, list[str]] = {m: [] for m in comp}
            kurt: dict[int, float] = {m: 0.0 for m in comp}
            for t in s.scalars(select(Tensor).where(Tensor.model_id.in_(comp), Tensor.part == "weight")):
                dtypes[t.model_id].append(t.dtype)
                if t.role in ("attn.q", "attn.k", "attn.v", "attn.o", "attn.qkv") and t.kurtosis is not None:
                    kurt[t.model_id] += t.kurtosis
        class _Weights:
            """Each model's weights through the bounded cache, never all at once."""

            def __getitem__(_, m: int) -> dict:
                return self._load(*sources[m], activations=False).weights

        weights = _Weights()
        evidence: list[PairEvidence] = []
        signals: dict[tuple[int, int], DirectionSignals] = {}
        info: dict[tuple[int, int], tuple[Any, Any, PairTest]] = {}
        rows = {(a, b): row for a, b, row in dep_pairs}
        new_tests: list[PairTest] = []

        def row_for(a: int, b: int) -> PairTest:
            if (a, b) not in rows:
                rows[(a, b)] = self._pair_test(a, b, sources, (snapshot[a][2], snapshot[b][2]), alpha)
                new_tests.append(rows[(a, b)])
            return rows[(a, b)]

        ordered = sorted(comp)
        all_pairs = (
            [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1:]]
            if len(comp) <= _ALL_PAIRS_MAX else list(rows)
        )
        for a, b in all_pairs:
            if (a, b) in rows and not rows[(a, b)].dependent:
                continue  # tested and found independent: never an edge
            wa, wb = weights[a], weights[b]
            rel = classify_relation(wa, wb, dtypes_a=dtypes[a], dtypes_b=dtypes[b])
            row = rows.get((a, b))
            if row is None and rel.relation == "pruned":
                row = row_for(a, b)  # the block map comes from localization
            block_map = [tuple(x) for x in ((row.details or {}).get("block_map") if row else None) or []]
            if rel.relation == "pruned" and block_map:
                wa_aligned, wb_aligned = _align_blocks(wa, wb, block_map)
                d = _nanmin(relative_distance(wa_aligned, wb_aligned), invariant_distance(wa_aligned, wb_aligned))
            else:
                d = _nanmin(rel.distance, rel.invariant_distance)
            if d is None:
                d = 1.0 + 1.0 / max(1.0, -(row_for(a, b).p_value_log10))
            ca, da, na = snapshot[a]
            cb, db, nb = snapshot[b]
            declared = 1 if na in db else -1 if nb in da else 0
            sig = DirectionSignals(
                created_a=ca, created_b=cb, declared=declared, structural_child=rel.child_side,
                kurtosis_a=kurt[a], kurtosis_b=kurt[b], norm_growth=norm_growth_fraction(wa, wb),
            )
            direction = orient(sig)
            signals[(a, b)] = sig
            evidence.append(PairEvidence(a, b, d, direction.log_odds, rel.relation))
            info[(a, b)] = (rel, direction)
        # Merges: a model that a least-squares mix of two relatives explains far
        # better than any single one. Parents are drawn from its nearest relatives.
        dup_graph = nx.Graph()
        dup_graph.add_nodes_from(comp)
        dup_graph.add_edges_from((e.a, e.b) for e in evidence if e.relation == "duplicate")
        # A quantized copy joins the group of the nearest model it quantizes.
        nearest_source: dict[int, tuple[float, int]] = {}
        for e in evidence:
            if e.relation == "quantized":
                rel = info[(e.a, e.b)][0]
                q, src = (e.a, e.b) if rel.child_side == "a" else (e.b, e.a)
                if q not in nearest_source or e.distance < nearest_source[q][0]:
                    nearest_source[q] = (e.distance, src)
        dup_graph.add_edges_from((q, src) for q, (_, src) in nearest_source.items())
        group = {m: i for i, g in enumerate(nx.connected_components(dup_graph)) for m in g}
        merges: dict[int, tuple[int, int]] = {}
        merge_fits = {}
        near: dict[int, list[tuple[float, int]]] = {m: [] for m in comp}
        for e in evidence:
            near[e.a].append((e.distance, e.b))
            near[e.b].append((e.distance, e.a))
        for c in comp:
            # Nearest relatives, one per group of copies (duplicates and
            # quantized copies are one parent candidate, not several).
            options, seen_groups = [], {group[c]}
            shapes = _shapes(weights[c])
            for _, m in sorted(near[c]):
                # Merging needs identical architectures: every tensor of the
                # child must be a mix of the same tensor of each parent.
                if group[m] not in seen_groups and _shapes(weights[m]) == shapes:
                    seen_groups.add(group[m])
                    options.append(m)
            options = options[:6]
            best = None
            for i in range(len(options)):
                for j in range(i + 1, len(options)):
                    p1, p2 = options[i], options[j]
                    try:
                        fit = merge_fit(weights[c], [weights[p1], weights[p2]])
                    except ValueError:
                        continue
                    if fit.is_merge and (best is None or fit.residual < best[0].residual):
                        best = (fit, (p1, p2))
            if best is not None:
                merges[c] = best[1]
                merge_fits[c] = best[0]
        # The merge fit is structure: the merged model is the child of its parents.
        for c, parents in merges.items():
            for p in parents:
                key = (min(p, c), max(p, c))
                if key in signals:
                    sig = dataclasses.replace(signals[key], structural_child="a" if key[0] == c else "b")
                    direction = orient(sig)
                    info[key] = (info[key][0], direction)
                    evidence = [
                        PairEvidence(e.a, e.b, e.distance, direction.log_odds, e.relation)
                        if (e.a, e.b) == key else e
                        for e in evidence
                    ]
        rank = {m: (snapshot[m][0] or datetime.max.replace(tzinfo=timezone.utc), len(snapshot[m][2]), m) for m in comp}
        order = sorted(comp, key=lambda m: (_aware(rank[m][0]), rank[m][1], rank[m][2]))
        tree = recover_family(comp, evidence, merges=merges, representative={m: i for i, m in enumerate(order)})
        edges = []
        now = _now()
        for te in tree.edges:
            key = (min(te.parent, te.child), max(te.parent, te.child))
            rel, direction = info.get(key, (None, None))
            row = row_for(*key)
            evidence_doc: dict[str, Any] = {
                "relation": rel.to_dict() if rel else None,
                "direction": direction.to_dict() if direction else None,
                "pair_method": row.method,
            }
            if te.child in merge_fits and te.relation == "merge":
                evidence_doc["merge"] = merge_fits[te.child].to_dict()
            bm = (row.details or {}).get("block_map") or None
            edges.append(Edge(
                parent_id=te.parent, child_id=te.child, relation=te.relation,
                relation_confidence=rel.confidence if rel else None,
                direction_confidence=float(te.direction_confidence), p_value_log10=float(row.p_value_log10),
                q_value_log10=row.q_value_log10, statistic=row.statistic, method=row.method,
                block_map=bm if te.relation == "pruned" else None, evidence=evidence_doc, computed_at=now,
            ))
        return edges, new_tests

    # -- queries ---------------------------------------------------------
    def _view(self, s: Session, model: str | None, ids: Iterable[int] | None, notes=()) -> LineageView:
        q = select(Edge)
        if ids is not None:
            ids = set(ids)
            q = q.where(Edge.child_id.in_(ids), Edge.parent_id.in_(ids))
        edges = list(s.scalars(q))
        q_names = select(Model.id, Model.name)
        if ids is not None:
            q_names = q_names.where(Model.id.in_(ids))
        # (a Result has .keys(), so dict(result) would treat it as a mapping)
        names = {mid: name for mid, name in s.execute(q_names)}
        mids = set(names)
        children = {e.child_id for e in edges}
        views = tuple(sorted(
            (EdgeView(
                names[e.parent_id], names[e.child_id], e.relation, e.p_value_log10, e.q_value_log10,
                e.direction_confidence, e.relation_confidence, e.method,
                tuple(tuple(x) for x in e.block_map) if e.block_map else None, e.evidence, iso(e.computed_at),
            ) for e in edges),
            key=lambda v: (v.parent, v.child),
        ))
        roots = tuple(sorted(names[m] for m in mids if m not in children))
        return LineageView(model, tuple(sorted(names.values())), views, roots, tuple(notes))

    def _model_id(self, s: Session, name: str) -> int:
        m = self.registry._get(s, name)
        return m.id

    def family(self, name: str) -> LineageView:
        """Every model in the family of ``name``, with the edges among them."""
        with self.registry.session() as s:
            mid = self._model_id(s, name)
            fam = s.scalar(select(FamilyMember.family_id).where(FamilyMember.model_id == mid))
            if fam is None:
                return self._view(s, name, [mid], ["not resolved yet: run mothertree resolve"])
            ids = list(s.scalars(select(FamilyMember.model_id).where(FamilyMember.family_id == fam)))
            notes = ["no relatives: a singleton"] if len(ids) == 1 else []
            return self._view(s, name, ids, notes)

    def _walk(self, s: Session, start: int, up: bool) -> set[int]:
        seen, frontier = {start}, [start]
        while frontier:
            col_from, col_to = (Edge.child_id, Edge.parent_id) if up else (Edge.parent_id, Edge.child_id)
            nxt = set(s.scalars(select(col_to).where(col_from.in_(frontier)))) - seen
            seen |= nxt
            frontier = list(nxt)
        return seen

    def ancestry(self, name: str) -> LineageView:
        """Parents of ``name`` up to the roots, each edge with its evidence."""
        with self.registry.session() as s:
            mid = self._model_id(s, name)
            ids = self._walk(s, mid, up=True)
            resolved = s.scalar(select(Model.resolved_at).where(Model.id == mid)) is not None
            notes = []
            if len(ids) == 1:
                has_children = s.scalar(select(Edge.id).where(Edge.parent_id == mid).limit(1)) is not None
                if not resolved:
                    notes.append("not resolved yet: run mothertree resolve")
                elif has_children:
                    notes.append("a root: no parent found")
                else:
                    notes.append("a singleton: no relatives found")
            return self._view(s, name, ids, notes)

    def descendants(self, name: str) -> LineageView:
        with self.registry.session() as s:
            mid = self._model_id(s, name)
            ids = self._walk(s, mid, up=False)
            return self._view(s, name, ids, ["no descendants"] if len(ids) == 1 else [])

    def tree(self, family: str | None = None) -> LineageView:
        """The whole forest, or one model's family."""
        if family is not None:
            return self.family(family)
        with self.registry.session() as s:
            return self._view(s, None, None)


def _nbytes(loaded: _Loaded) -> int:
    n = sum(t.numel() * t.element_size() for t in loaded.weights.values())
    for acts in ((loaded.activations or {}).get("blocks") or {}).values():
        n += sum(t.numel() * t.element_size() for t in (acts.a, acts.b))
    return n


def _shapes(w: dict) -> dict:
    return {k: tuple(t.shape) for k, t in w.items()}


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _nanmin(*xs: float | None) -> float | None:
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    return min(vals) if vals else None


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _align_blocks(wa: dict, wb: dict, block_map) -> tuple[dict, dict]:
    """Renumber the blocks of both models onto the localization map ``(block_a, block_b)``."""
    ra, rb = {}, {}
    for i, (ba, bb) in enumerate(block_map):
        for (role, blk), t in wa.items():
            if blk == ba:
                ra[(role, i)] = t
        for (role, blk), t in wb.items():
            if blk == bb:
                rb[(role, i)] = t
    return ra, rb
