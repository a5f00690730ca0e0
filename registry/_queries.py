"""Read-only lineage queries: family, ancestry, descendants, the forest. Nothing here writes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..serialize import Serializable
from ._connection import Connection
from ._models import iso
from ._schema import Edge, FamilyMember, Model

__all__ = ["EdgeView", "LineageView", "family", "ancestry", "descendants", "tree"]

_NOT_RESOLVED = "not resolved yet: run mothertree resolve"


@dataclass(frozen=True)
class EdgeView(Serializable):
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


def _edge_view(e: Edge, names: dict[int, str]) -> EdgeView:
    return EdgeView(
        names[e.parent_id], names[e.child_id], e.relation, e.p_value_log10, e.q_value_log10,
        e.direction_confidence, e.relation_confidence, e.method,
        tuple(tuple(x) for x in e.block_map) if e.block_map else None, e.evidence, iso(e.computed_at),
    )


def _view(s: Session, model: str | None, ids: Iterable[int] | None, notes=()) -> LineageView:
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
    children = {e.child_id for e in edges}
    views = tuple(sorted((_edge_view(e, names) for e in edges), key=lambda v: (v.parent, v.child)))
    roots = tuple(sorted(names[m] for m in names if m not in children))
    return LineageView(model, tuple(sorted(names.values())), views, roots, tuple(notes))


def _walk(s: Session, start: int, up: bool) -> set[int]:
    seen, frontier = {start}, [start]
    col_from, col_to = (Edge.child_id, Edge.parent_id) if up else (Edge.parent_id, Edge.child_id)
    while frontier:
        nxt = set(s.scalars(select(col_to).where(col_from.in_(frontier)))) - seen
        seen |= nxt
        frontier = list(nxt)
    return seen


def family(conn: Connection, name: str) -> LineageView:
    """Every model in the lineage family of ``name``, with the edges among them."""
    with conn.session() as s:
        mid = conn.model_row(s, name).id
        fam = s.scalar(select(FamilyMember.family_id).where(FamilyMember.model_id == mid))
        if fam is None:
            return _view(s, name, [mid], [_NOT_RESOLVED])
        ids = list(s.scalars(select(FamilyMember.model_id).where(FamilyMember.family_id == fam)))
        notes = ["no relatives: a singleton"] if len(ids) == 1 else []
        return _view(s, name, ids, notes)


def ancestry(conn: Connection, name: str) -> LineageView:
    """Parents of ``name`` up to the roots, each edge with its evidence."""
    with conn.session() as s:
        m = conn.model_row(s, name)
        ids = _walk(s, m.id, up=True)
        notes = []
        if len(ids) == 1:
            has_children = s.scalar(select(Edge.id).where(Edge.parent_id == m.id).limit(1)) is not None
            if m.resolved_at is None:
                notes.append(_NOT_RESOLVED)
            elif has_children:
                notes.append("a root: no parent found")
            else:
                notes.append("a singleton: no relatives found")
        return _view(s, name, ids, notes)


def descendants(conn: Connection, name: str) -> LineageView:
    """Every model derived from ``name``."""
    with conn.session() as s:
        mid = conn.model_row(s, name).id
        ids = _walk(s, mid, up=False)
        return _view(s, name, ids, ["no descendants"] if len(ids) == 1 else [])


def tree(conn: Connection, of: str | None = None) -> LineageView:
    """The whole forest, or the family of the model ``of``."""
    if of is not None:
        return family(conn, of)
    with conn.session() as s:
        return _view(s, None, None)
