"""Family recovery inside one family: a DAG from pairwise evidence.

MoTHer builds a minimum-cost spanning arborescence (Chu-Liu/Edmonds) over
weight distances with a kurtosis penalty. Here the penalty is the direction
evidence of :mod:`~mothertree.lineage.direction` (``-log P(parent -> child)``),
and two extensions make it a DAG that survives the wild:

- a merge child gets every parent its merge fit names;
- duplicates are collapsed to one representative first, then hang off it as
  leaves, so three copies of one model do not form a chain.

Siblings are usually not taken for parents because each sibling is closer to
the common parent than to the other sibling, which the arborescence respects.
Long fine-tunes of one parent break that: they share a common drift and sit
closer to each other than to their parent. Given a ``containment`` function
(:func:`~mothertree.lineage.relations.containment_ratio`), every fine-tune
chain ``g -> x -> y`` the arborescence proposes is checked: in a real chain
``y`` carries all of ``x``'s change from ``g`` (ratio >= 1), a sibling only
the common part (ratio < 1). Below :data:`SIBLING_BELOW` ``y`` is re-attached
to ``g`` (an ancestor of ``y`` under either explanation); between
:data:`SIBLING_BELOW` and :data:`CHAIN_ABOVE` the ratio cannot tell (a chain
whose second fine-tune partly undid the first, or siblings with a large
common drift) and the arborescence's edge stays, flagged ``low_confidence``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Hashable, Mapping, Sequence

import networkx as nx

from ..serialize import Serializable

__all__ = ["PairEvidence", "TreeEdge", "FamilyTree", "recover_family"]

#: Weight of the direction penalty relative to the mean distance (MoTHer's lambda).
DIRECTION_WEIGHT = 0.3
#: Relations whose evidence certifies a direct parent-child derivation.
DIRECT_RELATIONS = frozenset({"adapter"})
#: Factor on the distance of such edges in the arborescence.
DIRECT_DISCOUNT = 0.1
#: Direction probability below which an edge is excluded when the family can be
#: spanned without it (structure and timestamps reach it; kurtosis never does).
STRICT_DIRECTION = 0.05
#: Containment ratio below which ``y`` is ``x``'s sibling, not its child: a
#: sibling holds only the common drift of the two changes (|s|^2 / (|s|^2 + |u|^2)).
#: Measured on the synthetic zoos (bench/RESULTS.md): siblings -0.01-0.79, except a
#: LoRA beside a full fine-tune (0.89, 0.90); chains 0.90-1.39.
SIBLING_BELOW = 0.8
#: Containment ratio from which the chain ``g -> x -> y`` stands: a child carries
#: all of its parent's change (ratio 1 plus the alignment of the next change,
#: measured 1.0-1.3 on chains). Between the two bounds the edge is flagged.
CHAIN_ABOVE = 0.97
#: Relations of ``x -> y`` whose chains the containment check examines (structure
#: or a low-rank difference certifies the others).
_CHECKED = frozenset({"finetune", "unknown"})
#: Log-odds from which a duplicate pair's direction picks the group's original.
_STRONG_LOG_ODDS = 3.0


@dataclass(frozen=True)
class PairEvidence:
    """Evidence on one dependent pair; ``parent_log_odds`` > 0 favours ``a`` as the parent."""

    a: Hashable
    b: Hashable
    distance: float
    parent_log_odds: float
    relation: str


@dataclass(frozen=True)
class TreeEdge(Serializable):
    parent: Hashable
    child: Hashable
    relation: str
    direction_confidence: float
    low_confidence: bool = False
    containment: float | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class FamilyTree(Serializable):
    nodes: tuple[Hashable, ...]
    edges: tuple[TreeEdge, ...]
    roots: tuple[Hashable, ...]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0


def recover_family(
    nodes: Sequence[Hashable],
    pairs: Sequence[PairEvidence],
    *,
    merges: Mapping[Hashable, Sequence[Hashable]] | None = None,
    representative: Mapping[Hashable, int] | None = None,
    direction_weight: float = DIRECTION_WEIGHT,
    containment: Callable[[Hashable, Hashable, Hashable], float] | None = None,
) -> FamilyTree:
    """Recover the DAG of one family.

    Parameters
    ----------
    nodes : sequence
        The family's models.
    pairs : sequence of PairEvidence
        Dependent pairs with distances and direction log-odds.
    merges : mapping, optional
        ``child -> parents`` for models a merge fit explains.
    representative : mapping, optional
        Preference rank among duplicates (lower = more likely the original),
        e.g. from creation time; defaults to node order.
    direction_weight : float
        Lambda of the direction penalty, in units of the mean distance.
    containment : callable, optional
        ``containment(g, x, y)``: the containment ratio of ``y`` along ``x``'s
        change from ``g`` (:func:`~mothertree.lineage.relations.containment_ratio`
        on the three models' weights). Without it chains are not checked.
    """
    if direction_weight < 0:
        raise ValueError(f"direction_weight: expected >= 0, got {direction_weight}")
    nodes = list(dict.fromkeys(nodes))
    known = set(nodes)
    for p in pairs:
        if p.a not in known or p.b not in known:
            raise ValueError(f"pairs: expected pairs among nodes, got ({p.a!r}, {p.b!r})")
    merges = {c: tuple(ps) for c, ps in (merges or {}).items() if c in known}
    rank = {n: (representative or {}).get(n, i) for i, n in enumerate(nodes)}
    # 1. Collapse duplicate groups onto their representative.
    rep_of, dup_edges = _collapse_duplicates(nodes, pairs, rank)
    reps = [n for n in nodes if rep_of[n] == n]
    # 2. Directed costs between representatives.
    g, info = _cost_graph(reps, _group_pairs(pairs, rep_of), rep_of, merges, direction_weight)
    # 3. Minimum spanning arborescence over everything but merge children.
    merge_reps = {rep_of[c] for c in merges}
    edges = _arborescence(g, info, reps, merge_reps)
    if containment is not None:
        edges = _check_chains(edges, g, info, containment, merge_reps)
    # 4. A merge child gets all of its parents.
    edges += _merge_edges(merges, rep_of, info)
    # 5. A model may hang below a merge child.
    edges = _hang_below_merges(edges, g, info, reps, merge_reps, containment)
    children = {e.child for e in edges}
    roots = [n for n in reps if n not in children]
    return FamilyTree(tuple(nodes), tuple(edges + dup_edges), tuple(roots))


def _collapse_duplicates(
    nodes: list[Hashable], pairs: Sequence[PairEvidence], rank: Mapping[Hashable, int],
) -> tuple[dict[Hashable, Hashable], list[TreeEdge]]:
    """Each node's group representative, and the edges that hang the copies off it.

    Three copies of one model must not form a chain, so a duplicate group is one
    node of the tree. Strong direction evidence inside a group (a cast copy is the
    child of the higher-precision original; timestamps) names the original; else the rank.
    """
    dup = nx.Graph()
    dup.add_nodes_from(nodes)
    dup.add_edges_from((p.a, p.b) for p in pairs if p.relation == "duplicate")
    rep_of: dict[Hashable, Hashable] = {}
    dup_edges: list[TreeEdge] = []
    votes = {n: 0 for n in nodes}
    for p in pairs:
        if p.relation == "duplicate" and abs(p.parent_log_odds) >= _STRONG_LOG_ODDS:
            votes[p.b if p.parent_log_odds > 0 else p.a] += 1
    for group in nx.connected_components(dup):
        rep = min(group, key=lambda n: (votes[n], rank[n], str(n)))
        for n in group:
            rep_of[n] = rep
            if n != rep:
                conf = _dup_confidence(pairs, rep, n)
                dup_edges.append(TreeEdge(rep, n, "duplicate", conf))
    return rep_of, dup_edges


def _group_pairs(
    pairs: Sequence[PairEvidence], rep_of: Mapping[Hashable, Hashable],
) -> dict[tuple[Hashable, Hashable], PairEvidence]:
    """One piece of evidence per pair of duplicate groups.

    The distance is the least over the groups' members (a bf16 copy of a float32
    original is nearer its bf16 fine-tunes); the relation and direction come from
    the representatives' own pair when it was compared: a permuted copy of a model
    is typed against its relatives on misaligned weights (its quantized copy does
    not round onto it). Positive evidence of a quantization between two groups'
    members wins over a plain fine-tune from the representatives: misaligned
    weights cannot fake a grid, and the members of a group are exact conversions
    of each other (a GGUF file that declares its block grid and its dequantized
    re-export).
    """
    best: dict[tuple[Hashable, Hashable], PairEvidence] = {}
    own: dict[tuple[Hashable, Hashable], PairEvidence] = {}
    quantized: dict[tuple[Hashable, Hashable], PairEvidence] = {}
    for p in pairs:
        a, b = rep_of[p.a], rep_of[p.b]
        if a == b:
            continue
        key = (a, b) if str(a) <= str(b) else (b, a)
        if key not in best or p.distance < best[key].distance:
            best[key] = p
        if (p.a, p.b) in (key, key[::-1]):
            own[key] = p
        if p.relation == "quantized" and (key not in quantized or p.distance < quantized[key].distance):
            quantized[key] = p
    for k, p in own.items():
        if p.relation in ("finetune", "unknown") and k in quantized:
            own[k] = quantized[k]
    return {k: dataclasses.replace(own[k], distance=p.distance) if k in own else p for k, p in best.items()}


def _cost_graph(
    reps: list[Hashable], best: Mapping[tuple[Hashable, Hashable], PairEvidence],
    rep_of: Mapping[Hashable, Hashable], merges: Mapping[Hashable, Sequence[Hashable]], direction_weight: float,
) -> tuple[nx.DiGraph, dict[tuple[Hashable, Hashable], tuple[str, float]]]:
    """The directed cost graph (distance plus direction penalty) and each edge's ``(relation, P(direction))``.

    A merge child may only have its merge parents, and never parent them, so
    those edges are left out here rather than pruned later.
    """
    finite = [p.distance for p in best.values() if math.isfinite(p.distance)]
    scale = (sum(finite) / len(finite)) if finite else 1.0
    g = nx.DiGraph()
    g.add_nodes_from(reps)
    info: dict[tuple[Hashable, Hashable], tuple[str, float]] = {}
    for p in best.values():
        a, b = rep_of[p.a], rep_of[p.b]
        d = p.distance if math.isfinite(p.distance) else 2 * scale + 1.0
        if p.relation in DIRECT_RELATIONS:
            # A low-rank difference certifies a direct derivation: a sibling or a
            # merge centroid may be nearer in distance but differs by rank 2r or
            # densely, never by rank r. (A value grid or a block subset does not
            # certify which relative is the source: every relative of a quantized
            # or pruned model shows it.)
            d *= DIRECT_DISCOUNT
        for parent, child, lo in ((a, b, p.parent_log_odds), (b, a, -p.parent_log_odds)):
            if child in merges and parent not in {rep_of[x] for x in merges[child]}:
                continue
            if parent in merges and child in {rep_of[x] for x in merges[parent]}:
                continue
            prob = _sigmoid(lo)
            penalty = -math.log(max(prob, 1e-12))
            g.add_edge(parent, child, weight=d + direction_weight * scale * penalty)
            info[(parent, child)] = (p.relation, prob)
    return g, info


def _arborescence(g: nx.DiGraph, info: Mapping, reps: list[Hashable], merge_reps: set[Hashable]) -> list[TreeEdge]:
    """The minimum spanning arborescence of each component, merge children left out.

    A merge of siblings sits close to their common parent (it is their
    centroid), so it must not compete to be that parent's parent. Edges the
    direction evidence all but rules out (a quantized or pruned model as the
    parent of its full-precision source) are dropped, unless the family cannot
    be spanned without them.
    """
    base = g.subgraph([n for n in reps if n not in merge_reps])
    edges: list[TreeEdge] = []
    for comp in nx.weakly_connected_components(base):
        if len(comp) == 1:
            continue
        sub = base.subgraph(comp)
        strict = sub.edge_subgraph(
            [(u, v) for u, v in sub.edges if info[(u, v)][1] >= STRICT_DIRECTION]
        ).copy()
        strict.add_nodes_from(comp)
        arb = None
        for graph in (strict, sub):
            try:
                arb = nx.minimum_spanning_arborescence(graph, attr="weight", preserve_attrs=True)
                break
            except nx.NetworkXException:
                continue
        if arb is None:
            arb = nx.minimum_branching(sub, attr="weight", preserve_attrs=True)
        for u, v in arb.edges():
            rel, prob = info[(u, v)]
            edges.append(TreeEdge(u, v, rel, prob))
    return edges


def _merge_edges(
    merges: Mapping[Hashable, Sequence[Hashable]], rep_of: Mapping[Hashable, Hashable], info: Mapping,
) -> list[TreeEdge]:
    """One edge from each parent a merge fit names to the merge child: a merge is a DAG node, not a tree node."""
    edges: list[TreeEdge] = []
    for child, parents in merges.items():
        c = rep_of[child]
        for parent in dict.fromkeys(rep_of[p] for p in parents):
            if parent != c:
                edges.append(TreeEdge(parent, c, "merge", info.get((parent, c), ("merge", 0.99))[1]))
    return edges


def _hang_below_merges(
    edges: list[TreeEdge], g: nx.DiGraph, info: Mapping, reps: list[Hashable], merge_reps: set[Hashable],
    containment: Callable[[Hashable, Hashable, Hashable], float] | None,
) -> list[TreeEdge]:
    """Move a model below a merge child (a fine-tune of a merge) when the merge is its cheapest parent.

    The arborescence left merge children out, so this is their only way to
    become parents; a model never moves below a merge it is an ancestor of.
    """
    dag = nx.DiGraph([(e.parent, e.child) for e in edges])
    dag.add_nodes_from(reps)
    incoming = {e.child: e for e in edges}
    for x in reps:
        if x in merge_reps:
            continue
        current = incoming.get(x)
        cost_now = g.edges[current.parent, x]["weight"] if current is not None and g.has_edge(current.parent, x) else math.inf
        best = None
        for c in merge_reps:
            if g.has_edge(c, x) and g.edges[c, x]["weight"] < cost_now and not nx.has_path(dag, x, c) \
                    and _contains(containment, current, c, x):
                if best is None or g.edges[c, x]["weight"] < g.edges[best, x]["weight"]:
                    best = c
        if best is not None:
            if current is not None:
                edges.remove(current)
                dag.remove_edge(current.parent, x)
            rel, prob = info[(best, x)]
            new_edge = TreeEdge(best, x, rel, prob)
            edges.append(new_edge)
            dag.add_edge(best, x)
            incoming[x] = new_edge
    return edges


def _contains(containment, current: TreeEdge | None, c: Hashable, x: Hashable) -> bool:
    """Whether ``x`` may move from its current parent to ``c``: it must carry ``c``'s change from there."""
    if containment is None or current is None or current.relation not in _CHECKED:
        return True
    k = containment(current.parent, c, x)
    return not math.isfinite(k) or k >= CHAIN_ABOVE


def _check_chains(edges: list[TreeEdge], g: nx.DiGraph, info: Mapping, containment, merge_reps) -> list[TreeEdge]:
    """Re-attach siblings the arborescence chained, top-down; flag the chains the ratio leaves open."""
    incoming = {e.child: e for e in edges}
    kids: dict[Hashable, list[Hashable]] = {}
    for e in edges:
        kids.setdefault(e.parent, []).append(e.child)
    order, frontier = [], sorted({e.parent for e in edges if e.parent not in incoming}, key=str)
    while frontier:
        order += frontier
        frontier = [c for n in frontier for c in kids.get(n, ())]
    for y in order:
        up = incoming.get(y)
        if up is None or up.relation not in _CHECKED or up.parent in merge_reps:
            continue
        x = up.parent
        top = incoming.get(x)
        if top is None or top.relation not in _CHECKED | {"adapter"}:
            continue
        gp = top.parent
        k = containment(gp, x, y)
        if not math.isfinite(k):
            continue
        can_move = g.has_edge(gp, y) and info[(gp, y)][1] >= STRICT_DIRECTION
        if k >= SIBLING_BELOW or not can_move:
            low = k < CHAIN_ABOVE
            why = ("" if not low else "; a sibling of it by this ratio, but its parent cannot be the child's"
                   if k < SIBLING_BELOW else f"; between {SIBLING_BELOW} and {CHAIN_ABOVE}: chain or sibling")
            note = f"containment {k:.3f} along {x}'s change from {gp}{why}"
            incoming[y] = TreeEdge(x, y, up.relation, up.direction_confidence, low, k, up.notes + (note,))
            continue
        rel, prob = info[(gp, y)]
        note = f"containment {k:.3f} < {SIBLING_BELOW} along {x}'s change from {gp}: a sibling of {x}, attached to their parent"
        incoming[y] = TreeEdge(gp, y, rel, prob, False, k, (note,))
    return [incoming[e.child] for e in edges]


def _dup_confidence(pairs: Sequence[PairEvidence], rep: Hashable, n: Hashable) -> float:
    for p in pairs:
        if {p.a, p.b} == {rep, n}:
            lo = p.parent_log_odds if p.a == rep else -p.parent_log_odds
            return _sigmoid(lo)
    return 0.5
