"""Solve one lineage family: type, orient and arrange its dependent pairs into a DAG.

Pure: weights and stored test statistics in, frozen dataclasses out. No SQL,
no files. The caller (``registry``) supplies

- ``weights``: a mapping ``model -> WeightMap``; it may load lazily (the
  registry's is a bounded cache, so a large family is never held at once);
- ``stats``: the independence tests already stored for pairs of the family;
- ``test_pair``: a callback that runs the test for a pair that has none
  (needed for a pruned pair's block map, a distance fallback, or an edge the
  candidate search never paired). :class:`FamilySolution` lists the pairs it
  tested, so the caller can store them.

The steps, each a short function:

1. :func:`pair_evidence`: relation, distance and direction of every pair
   (every pair of the family up to :data:`ALL_PAIRS_MAX` models, else the
   tested ones); pairs tested and found independent are never edges.
2. :func:`copy_groups`: duplicates and quantized copies form one group.
3. :func:`merge_parents`: a model that a least-squares mix of two of its
   nearest relatives explains far better than any single one is a merge.
4. :func:`recover_family` (in :mod:`~mothertree.lineage.tree`) builds the DAG.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Hashable, Mapping, Sequence

import networkx as nx

from ._views import Renumbered, shape_of, typing_view
from .direction import Direction, DirectionSignals, float_grid_parent, norm_growth_fraction, orient
from .relations import (
    MergeFit, RelationEvidence, classify_relation, containment_ratio, invariant_distance, merge_fit, relative_distance,
    WeightFacts, weight_facts,
)
from .tree import PairEvidence, recover_family

__all__ = [
    "ALL_PAIRS_MAX",
    "MERGE_PARENT_OPTIONS",
    "PairStat",
    "ModelFacts",
    "FamilyEdge",
    "FamilySolution",
    "solve_family",
    "pair_evidence",
    "copy_groups",
    "merge_parents",
]

#: Largest family whose every pair is compared on weights when building its tree.
ALL_PAIRS_MAX = 64

#: Nearest relatives (one per copy group) considered as parents of a merge.
#: A merge fit is a least-squares solve over every tensor of the child, and
#: each unordered pair of options is tried: 6 options cost 15 fits per model,
#: and the true parents of a merge are its nearest relatives in practice.
MERGE_PARENT_OPTIONS = 6

Key = Hashable
WeightMap = Mapping


@dataclass(frozen=True)
class PairStat:
    """The stored result of one independence test (what the family solver needs of it)."""

    dependent: bool
    p_value_log10: float
    block_map: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class ModelFacts:
    """What is known about one model besides its weights.

    ``attn_kurtosis`` is the summed excess kurtosis of its attention
    matrices (a direction signal); ``dtypes`` the storage dtypes of its
    weight tensors (``"I8"`` marks quantized storage).
    """

    name: str
    created_at: datetime | None = None
    declared_base_models: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    attn_kurtosis: float = 0.0


@dataclass(frozen=True)
class FamilyEdge:
    """One recovered edge; ``pair`` is the ``(a, b)`` key of the test behind it (a < b)."""

    parent: Key
    child: Key
    relation: str
    direction_confidence: float
    pair: tuple[Key, Key]
    relation_evidence: RelationEvidence | None
    direction: Direction | None
    merge: MergeFit | None
    low_confidence: bool = False
    containment: float | None = None
    notes: tuple[str, ...] = ()

    def tree_dict(self) -> dict:
        """The tree's checks on this edge (stored as ``evidence.tree``)."""
        return {"low_confidence": self.low_confidence, "containment": self.containment, "notes": list(self.notes)}


@dataclass(frozen=True)
class FamilySolution:
    """The edges of one family and the pairs tested on the way (to be stored by the caller)."""

    edges: tuple[FamilyEdge, ...]
    tested: tuple[tuple[Key, Key], ...]


@dataclass(frozen=True)
class _Pair:
    """Evidence on one pair while solving: tree evidence, relation, direction signals."""

    evidence: PairEvidence
    relation: RelationEvidence
    signals: DirectionSignals
    direction: Direction


class _Stats:
    """Stored statistics, with a test run (once) for a pair that has none."""

    def __init__(self, stats: Mapping[tuple[Key, Key], PairStat], test_pair: Callable[[Key, Key], PairStat]) -> None:
        self.known = dict(stats)
        self.test_pair = test_pair
        self.tested: list[tuple[Key, Key]] = []

    def get(self, a: Key, b: Key) -> PairStat | None:
        return self.known.get((a, b))

    def require(self, a: Key, b: Key) -> PairStat:
        if (a, b) not in self.known:
            self.known[(a, b)] = self.test_pair(a, b)
            self.tested.append((a, b))
        return self.known[(a, b)]


def solve_family(
    members: Sequence[Key],
    weights: Mapping[Key, WeightMap],
    facts: Mapping[Key, ModelFacts],
    stats: Mapping[tuple[Key, Key], PairStat],
    *,
    test_pair: Callable[[Key, Key], PairStat],
) -> FamilySolution:
    """Type, orient and arrange one family into edges.

    Parameters
    ----------
    members : sequence of hashable, sortable keys
        The family (a connected component of dependent pairs).
    weights : mapping key -> WeightMap
        Canonical weights of each member; read one or two at a time.
    facts : mapping key -> ModelFacts
    stats : mapping (a, b) -> PairStat, with a < b
        Tests already run between members.
    test_pair : callable (a, b) -> PairStat
        Runs the test for a pair without a stored one.
    """
    members = list(members)
    st = _Stats(stats, test_pair)
    own: dict[Key, WeightFacts] = {}
    pairs = pair_evidence(members, weights, facts, st, own)
    group = copy_groups(members, pairs)
    fits = merge_parents(members, weights, pairs, group, {m: f.degenerate for m, f in own.items()})
    pairs = _merges_are_structure(pairs, fits)
    order = sorted(members, key=lambda m: _rank(facts[m], m))
    tree = recover_family(
        members, [p.evidence for p in pairs.values()],
        merges={c: ps for c, (ps, _) in fits.items()},
        representative={m: i for i, m in enumerate(order)},
        # Chains the arborescence proposes are checked against the containment
        # ratio of the three models' weights (siblings are never chained).
        containment=lambda g, x, y: containment_ratio(weights[g], weights[x], weights[y]),
    )
    edges = []
    for te in tree.edges:
        key = (min(te.parent, te.child), max(te.parent, te.child))
        p = pairs.get(key)
        st.require(*key)  # every stored edge carries the test behind it
        merge = fits[te.child][1] if te.child in fits and te.relation == "merge" else None
        edges.append(FamilyEdge(
            te.parent, te.child, te.relation, float(te.direction_confidence), key,
            p.relation if p else None, p.direction if p else None, merge,
            te.low_confidence, te.containment, tuple(te.notes),
        ))
    return FamilySolution(tuple(edges), tuple(st.tested))


def pair_evidence(
    members: Sequence[Key], weights: Mapping[Key, WeightMap], facts: Mapping[Key, ModelFacts], stats: _Stats,
    own: dict[Key, WeightFacts] | None = None,
) -> dict[tuple[Key, Key], _Pair]:
    """Relation, distance and direction of each comparable pair, keyed ``(a, b)`` with a < b.

    ``own`` collects each model's :class:`WeightFacts` (computed once per
    model), for the merge search that follows to reuse.
    """
    ordered = sorted(members)
    candidates = (
        [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1:]]
        if len(ordered) <= ALL_PAIRS_MAX else list(stats.known)
    )
    out: dict[tuple[Key, Key], _Pair] = {}
    # Per-model scans (degenerate tensors, quantization grid) once per model, not once per pair.
    own = {} if own is None else own

    def facts_of(m: Key) -> WeightFacts:
        if m not in own:
            own[m] = weight_facts(weights[m], facts[m].dtypes)
        return own[m]

    for a, b in candidates:
        stored = stats.get(a, b)
        if stored is not None and not stored.dependent:
            continue  # tested and found independent: never an edge
        wa, wb = weights[a], weights[b]
        fa, fb = facts[a], facts[b]
        rel = classify_relation(wa, wb, dtypes_a=fa.dtypes, dtypes_b=fb.dtypes, facts_a=facts_of(a), facts_b=facts_of(b))
        d = _pair_distance(a, b, wa, wb, rel, stats)
        va, vb = typing_view(wa, wb)  # the direction votes read a spread of blocks of a streamed model
        declared = 1 if fa.name in fb.declared_base_models else -1 if fb.name in fa.declared_base_models else 0
        sig = DirectionSignals(
            created_a=fa.created_at, created_b=fb.created_at, declared=declared, structural_child=rel.child_side,
            kurtosis_a=fa.attn_kurtosis, kurtosis_b=fb.attn_kurtosis, norm_growth=norm_growth_fraction(va, vb),
            grid_parent=float_grid_parent(va, vb) if rel.child_side is None else None,
        )
        direction = orient(sig)
        out[(a, b)] = _Pair(PairEvidence(a, b, d, direction.log_odds, rel.relation), rel, sig, direction)
    return out


def _pair_distance(a: Key, b: Key, wa: WeightMap, wb: WeightMap, rel: RelationEvidence, stats: _Stats) -> float:
    """Weight distance of a pair: aligned on the block map when pruned, else the relation's.

    When no tensor compares (``None`` both ways) the distance falls back to
    ``1 + 1 / max(1, -log10 p)``: above every weight distance, and closer for
    stronger dependence.
    """
    stored = stats.get(a, b)
    if stored is None and rel.relation == "pruned":
        stored = stats.require(a, b)  # the block map comes from localization
    block_map = stored.block_map if stored is not None else ()
    if rel.relation == "pruned" and block_map:
        wa_aligned, wb_aligned = align_blocks(wa, wb, block_map)
        d = _nanmin(relative_distance(wa_aligned, wb_aligned), invariant_distance(wa_aligned, wb_aligned))
    else:
        d = _nanmin(rel.distance, rel.invariant_distance)
    if d is None:
        d = 1.0 + 1.0 / max(1.0, -(stats.require(a, b).p_value_log10))
    return d


def copy_groups(members: Sequence[Key], pairs: Mapping[tuple[Key, Key], _Pair]) -> dict[Key, int]:
    """Group id of each member: duplicates, and each quantized copy with the nearest model it quantizes."""
    dup_graph = nx.Graph()
    dup_graph.add_nodes_from(members)
    dup_graph.add_edges_from((p.evidence.a, p.evidence.b) for p in pairs.values() if p.evidence.relation == "duplicate")
    nearest_source: dict[Key, tuple[float, Key]] = {}
    for p in pairs.values():
        e = p.evidence
        if e.relation == "quantized":
            q, src = (e.a, e.b) if p.relation.child_side == "a" else (e.b, e.a)
            if q not in nearest_source or e.distance < nearest_source[q][0]:
                nearest_source[q] = (e.distance, src)
    dup_graph.add_edges_from((q, src) for q, (_, src) in nearest_source.items())
    return {m: i for i, g in enumerate(nx.connected_components(dup_graph)) for m in g}


def merge_parents(
    members: Sequence[Key],
    weights: Mapping[Key, WeightMap],
    pairs: Mapping[tuple[Key, Key], _Pair],
    group: Mapping[Key, int],
    degenerate: Mapping[Key, tuple[tuple[Any, str], ...]] | None = None,
) -> dict[Key, tuple[tuple[Key, Key], MergeFit]]:
    """``child -> ((parent1, parent2), fit)`` for each member that is a merge of two relatives.

    ``degenerate``: each model's degenerate entries, when already known (a
    model read again through a bounded cache is a new set of tensors, and
    judging them again for every candidate triple dominated a resolve).
    """
    near: dict[Key, list[tuple[float, Key]]] = {m: [] for m in members}
    for p in pairs.values():
        e = p.evidence
        near[e.a].append((e.distance, e.b))
        near[e.b].append((e.distance, e.a))
    merges = {}
    for c in members:
        options = _merge_options(c, near[c], weights, group)
        best = None
        for i in range(len(options)):
            for j in range(i + 1, len(options)):
                p1, p2 = options[i], options[j]
                known = [(degenerate or {}).get(m) for m in (c, p1, p2)]
                try:
                    fit = merge_fit(weights[c], [weights[p1], weights[p2]],
                                    degenerate=None if None in known else known)
                except ValueError:
                    continue
                if fit.is_merge and (best is None or fit.residual < best[1].residual):
                    best = ((p1, p2), fit)
        if best is not None:
            merges[c] = best
    return merges


def _merge_options(c: Key, near: list[tuple[float, Key]], weights: Mapping[Key, WeightMap], group: Mapping[Key, int]) -> list[Key]:
    """The nearest relatives of ``c``, one per copy group, with ``c``'s exact architecture.

    Merging needs identical architectures: every tensor of the child must be
    a mix of the same tensor of each parent. Duplicates and quantized copies
    are one parent candidate, not several.
    """
    options, seen_groups = [], {group[c]}
    shapes = _shapes(weights[c])
    for _, m in sorted(near):
        if group[m] not in seen_groups and _shapes(weights[m]) == shapes:
            seen_groups.add(group[m])
            options.append(m)
    return options[:MERGE_PARENT_OPTIONS]


def _merges_are_structure(
    pairs: dict[tuple[Key, Key], _Pair], fits: Mapping[Key, tuple[tuple[Key, Key], MergeFit]],
) -> dict[tuple[Key, Key], _Pair]:
    """Re-orient each merge's parent pairs: the merged model is the structural child."""
    pairs = dict(pairs)
    for c, (parents, _) in fits.items():
        for p in parents:
            key = (min(p, c), max(p, c))
            if key in pairs:
                old = pairs[key]
                sig = dataclasses.replace(old.signals, structural_child="a" if key[0] == c else "b")
                direction = orient(sig)
                e = old.evidence
                pairs[key] = _Pair(PairEvidence(e.a, e.b, e.distance, direction.log_odds, e.relation), old.relation, sig, direction)
    return pairs


def _rank(f: ModelFacts, key: Key) -> tuple:
    """Preference among duplicates: created first, then the shorter name, then the key."""
    created = f.created_at or datetime.max.replace(tzinfo=timezone.utc)
    return (created if created.tzinfo else created.replace(tzinfo=timezone.utc), len(f.name), key)


def align_blocks(wa: WeightMap, wb: WeightMap, block_map: Sequence[tuple[int, int]]) -> tuple[Mapping, Mapping]:
    """Renumber the blocks of both models onto the localization map ``(block_a, block_b)``.

    Lazy views: nothing is read until a statistic asks for a tensor.

    Examples
    --------
    >>> a = {("mlp.up", 0): "a0", ("mlp.up", 1): "a1"}
    >>> b = {("mlp.up", 0): "b0", ("mlp.up", 2): "b2"}
    >>> ra, rb = align_blocks(a, b, [(1, 2)])
    >>> dict(ra), dict(rb)
    ({('mlp.up', 0): 'a1'}, {('mlp.up', 0): 'b2'})
    """
    return Renumbered(wa, [ba for ba, _ in block_map]), Renumbered(wb, [bb for _, bb in block_map])


def _shapes(w: WeightMap) -> dict:
    return {k: shape_of(w, k) for k in w}


def _nanmin(*xs: float | None) -> float | None:
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    return min(vals) if vals else None
