"""SQL glue of one family's solve: rows in, :func:`lineage.family.solve_family`, edge rows out."""

from __future__ import annotations

from typing import Any, Mapping

from sqlalchemy import delete, or_, select

from ..vocabulary import ATTENTION_ROLES
from ._connection import Connection
from ._models import utc_now
from ._pairs import PairTester
from ._schema import Edge, FamilyMember, PairTest, Tensor

__all__ = ["solve_and_store"]



def solve_and_store(
    conn: Connection, tester: PairTester, comp: tuple[int, ...], rows: dict[tuple[int, int], PairTest],
    info: Mapping[int, Any], sources: Mapping[int, tuple[str, str]], alpha: float,
) -> int:
    """Re-solve the family ``comp`` and replace its edges and memberships; the number of edges."""
    edges, new_tests = _solve(conn, tester, comp, rows, info, sources, alpha) if len(comp) > 1 else ([], [])
    with conn.session() as s:
        s.add_all(new_tests)
        s.execute(delete(Edge).where(or_(Edge.child_id.in_(comp), Edge.parent_id.in_(comp))))
        s.execute(delete(FamilyMember).where(FamilyMember.model_id.in_(comp)))
        s.add_all(edges)
        children = {e.child_id for e in edges}
        s.add_all(FamilyMember(model_id=m, family_id=comp[0], is_root=m not in children) for m in comp)
    return len(edges)


def _solve(conn, tester, comp, rows, info, sources, alpha) -> tuple[list[Edge], list[PairTest]]:
    """The family's edges and the pair tests run on the way (unsaved rows)."""
    from ..lineage.family import solve_family

    rows = dict(rows)
    new_tests: list[PairTest] = []

    def test_pair(a: int, b: int):
        row = tester.row(a, b, sources, (info[a].name, info[b].name), alpha)
        rows[(a, b)] = row
        new_tests.append(row)
        return _stat(row)

    class _Weights:
        """Each model's weights through the bounded cache, never all at once."""

        def __getitem__(_, m: int) -> dict:
            return tester.cache.load(*sources[m], activations=False).weights

    solution = solve_family(
        list(comp), _Weights(), _facts(conn, comp, info), {k: _stat(r) for k, r in rows.items()}, test_pair=test_pair,
    )
    now = utc_now()
    return [_edge_row(fe, rows[fe.pair], now) for fe in solution.edges], new_tests


def _stat(row: PairTest):
    from ..lineage.family import PairStat

    bm = (row.details or {}).get("block_map") or []
    return PairStat(bool(row.dependent), float(row.p_value_log10), tuple(tuple(x) for x in bm))


def _facts(conn: Connection, comp, info) -> dict:
    """Names, times, declared bases, storage dtypes and attention kurtosis of the family's models."""
    from ..lineage.family import ModelFacts

    dtypes: dict[int, list[str]] = {m: [] for m in comp}
    kurt: dict[int, float] = {m: 0.0 for m in comp}
    with conn.session() as s:
        for t in s.scalars(select(Tensor).where(Tensor.model_id.in_(comp), Tensor.part == "weight")):
            dtypes[t.model_id].append(t.dtype)
            if t.role in ATTENTION_ROLES and t.kurtosis is not None:
                kurt[t.model_id] += t.kurtosis
    return {
        m: ModelFacts(info[m].name, info[m].created_at, info[m].declared, tuple(dtypes[m]), kurt[m]) for m in comp
    }


def _edge_row(fe, row: PairTest, now) -> Edge:
    """The stored edge: the tree's relation and direction, the pair test's p-value and block map."""
    rel, direction = fe.relation_evidence, fe.direction
    evidence_doc: dict[str, Any] = {
        "relation": rel.to_dict() if rel else None,
        "direction": direction.to_dict() if direction else None,
        "pair_method": row.method,
    }
    if fe.merge is not None:
        evidence_doc["merge"] = fe.merge.to_dict()
    bm = (row.details or {}).get("block_map") or None
    return Edge(
        parent_id=fe.parent, child_id=fe.child, relation=fe.relation,
        relation_confidence=rel.confidence if rel else None,
        direction_confidence=fe.direction_confidence, p_value_log10=float(row.p_value_log10),
        q_value_log10=row.q_value_log10, statistic=row.statistic, method=row.method,
        block_map=bm if fe.relation == "pruned" else None, evidence=evidence_doc, computed_at=now,
    )
