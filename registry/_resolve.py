"""Resolve as a plan, then its execution: test candidate pairs, control the family-wise error, re-solve families.

:func:`plan_resolve` only reads: which models are resolved, which pairs are
tested, which families may be re-solved and (for ``full``) what is deleted.
:meth:`ResolvePlan.execute` does it, one short step at a time. The statistics
of a family live in :mod:`mothertree.lineage.family`; this module is the SQL
glue around them (see :mod:`._families`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import networkx as nx
from sqlalchemy import delete, func, select, update

from ..progress import Progress, note_step
from ..serialize import Serializable
from ._adapters import ADAPTER_FORMAT, place_adapters
from ._connection import Connection
from ._families import solve_and_store
from ._lookup import stored_candidates
from ._models import utc_now
from ._pairs import PairJob, PairTester
from ._schema import Edge, FamilyMember, Model, PairTest, ResolutionRun
from .errors import ModelNotFoundError, MothertreeError, RegistryError

__all__ = ["PairRunner", "ResolvePlan", "ResolveReport", "plan_resolve"]

#: Runs a resolve's candidate pair tests elsewhere (Ray tasks: :class:`._ray.RayPairRunner`) and returns
#: each job's row columns (:meth:`PairJob.run`), in the jobs' order; the resolving process writes them.
PairRunner = Callable[[Sequence[PairJob], Progress | None], list[dict[str, Any]]]

#: Ids per ``IN (...)`` list, well under SQLite's and PostgreSQL's parameter limits.
_IN_CHUNK = 1000


@dataclass(frozen=True)
class ResolveReport(Serializable):
    models_resolved: int
    pairs_tested: int
    dependent_pairs: int
    edges: int
    families: int
    alpha: float
    full: bool
    warnings: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class ResolvePlan:
    """What :meth:`execute` will do; building it writes nothing.

    ``models`` are tested against their candidates and marked resolved;
    ``pairs`` are the candidate pairs to test; ``families`` the families that
    may be re-solved (their final membership depends on the test outcomes:
    here every candidate pair is assumed dependent); ``deletes`` counts the
    rows a ``full`` resolve forgets first. ``adapters`` are the PEFT adapters
    (re)placed as ``adapter`` children of their bases after the families are
    solved: an adapter is never pair-tested (its update is not a model's weights).
    """

    full: bool
    k: int
    alpha: float
    models: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    families: tuple[tuple[str, ...], ...]
    deletes: tuple[tuple[str, int], ...]
    warnings: tuple[str, ...]
    model_ids: tuple[int, ...] = field(repr=False)
    pair_ids: tuple[tuple[int, int], ...] = field(repr=False)
    registry_models: frozenset[int] = field(repr=False, compare=False)
    _execute: Callable[["ResolvePlan", Progress | None], ResolveReport] = field(repr=False, compare=False)
    adapters: tuple[str, ...] = ()

    def execute(self, progress: Progress | None = None) -> ResolveReport:
        """Run the tests, control the family-wise error rate and re-solve the families."""
        return self._execute(self, progress)

    def to_dict(self) -> dict[str, Any]:
        return {
            "full": self.full,
            "k": self.k,
            "alpha": self.alpha,
            "models": list(self.models),
            "pairs": [{"a": a, "b": b} for a, b in self.pairs],
            "families": [list(f) for f in self.families],
            "deletes": dict(self.deletes),
            "adapters": list(self.adapters),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class _ModelInfo:
    name: str
    source: str
    digest: str
    created_at: Any
    declared: tuple[str, ...]
    resolved: bool
    adapter: bool = False


def _snapshot(conn: Connection) -> dict[int, _ModelInfo]:
    with conn.session() as s:
        return {
            m.id: _ModelInfo(
                m.name, m.source, m.content_digest, m.created_at, tuple(m.declared_base_models or ()),
                m.resolved_at is not None, m.file_format == ADAPTER_FORMAT,
            )
            for m in s.scalars(select(Model))
        }


# -- plan --------------------------------------------------------------------
def plan_resolve(
    conn: Connection, tester: PairTester, *, full: bool = False, k: int = 10, alpha: float = 0.01,
    models: Iterable[str] | None = None, runner: PairRunner | None = None,
) -> ResolvePlan:
    """What a resolve would test, re-solve and (``full``) delete. Reads only.

    ``runner`` runs the candidate pair tests when the plan is executed (default:
    one after another in this process).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a level in (0, 1), got {alpha}")
    if k < 1:
        raise ValueError(f"k: expected at least 1 candidate per model, got {k}")
    only = None if models is None else list(models)
    if full and only is not None:
        raise ValueError("full: a full resolve re-solves every model; it cannot be limited to some")
    info = _snapshot(conn)
    pending = _pending(conn, info, full, only)
    with conn.session() as s:
        tested = set() if full else {(t.a_id, t.b_id) for t in s.scalars(select(PairTest))}
        dependent = [] if full else list(s.execute(select(PairTest.a_id, PairTest.b_id).where(PairTest.dependent)))
        deletes = _deletion_counts(s) if full else ()
    pair_ids, warnings = _candidate_pairs(conn, info, pending, tested, k)
    families = _families_to_solve(info, pending, pair_ids, dependent)
    return ResolvePlan(
        full=full, k=k, alpha=alpha,
        models=tuple(info[m].name for m in pending),
        pairs=tuple((info[a].name, info[b].name) for a, b in pair_ids),
        families=families, deletes=deletes, warnings=tuple(warnings),
        model_ids=tuple(pending), pair_ids=tuple(pair_ids), registry_models=frozenset(info),
        _execute=lambda plan, progress: execute_resolve(conn, tester, plan, progress, runner),
        adapters=tuple(sorted(m.name for m in info.values() if m.adapter)),
    )


def _pending(conn: Connection, info: dict[int, _ModelInfo], full: bool, only: list[str] | None) -> list[int]:
    """Models to resolve: every model (full), else the unresolved ones (among ``only``, if given)."""
    if only is not None:
        known = {m.name for m in info.values()}
        for name in only:
            if name not in known:
                raise ModelNotFoundError(name, conn.display_url)
    return [
        mid for mid, m in info.items()
        if (full or not m.resolved) and (only is None or m.name in only)
    ]


def _deletion_counts(s) -> tuple[tuple[str, int], ...]:
    return tuple(
        (name, int(s.scalar(select(func.count()).select_from(table))))
        for name, table in (("edges", Edge), ("pair_tests", PairTest), ("family_members", FamilyMember))
    )


def _candidate_pairs(
    conn: Connection, info: dict[int, _ModelInfo], pending: list[int], tested: set, k: int,
) -> tuple[list[tuple[int, int]], list[str]]:
    """Untested pairs of each pending model with its copies and its top-``k`` candidates.

    Adapters are left out on both sides: they are placed, not pair-tested.
    """
    adapters = {mid for mid, m in info.items() if m.adapter}
    by_name = {m.name: mid for mid, m in info.items() if mid not in adapters}
    by_digest: dict[str, list[int]] = {}
    for mid, m in info.items():
        if mid not in adapters:
            by_digest.setdefault(m.digest, []).append(mid)
    todo: dict[tuple[int, int], None] = {}
    warnings = []
    for mid in pending:
        if mid in adapters:
            continue
        m = info[mid]
        partners: set[int] = set(by_digest[m.digest]) - {mid}
        try:
            cands = stored_candidates(conn, m.name, k=k)
            partners |= {by_name[c.name] for c in cands.candidates if c.name in by_name}
        except MothertreeError as exc:
            warnings.append(f"{m.name}: no candidates ({exc})")
        for p in partners:
            pair = (min(mid, p), max(mid, p))
            if pair not in tested:
                todo.setdefault(pair)
    return list(todo), warnings


def _families_to_solve(info, pending, pair_ids, dependent) -> tuple[tuple[str, ...], ...]:
    """Families (two or more models) a pending model may join, every candidate assumed dependent."""
    g = nx.Graph()
    g.add_nodes_from(info)
    g.add_edges_from(dependent)
    g.add_edges_from(pair_ids)
    pend = set(pending)
    comps = [c for c in nx.connected_components(g) if len(c) > 1 and c & pend]
    return tuple(sorted(tuple(sorted(info[m].name for m in c)) for c in comps))


# -- execute -------------------------------------------------------------------
def execute_resolve(
    conn: Connection, tester: PairTester, plan: ResolvePlan, progress: Progress | None,
    runner: PairRunner | None = None,
) -> ResolveReport:
    """Apply ``plan``: forget (full), test, control the family-wise error, re-solve the touched families."""
    started = utc_now()
    _check_fresh(conn, plan)
    if plan.full:
        _forget_all(conn)
    info = _snapshot(conn)
    _run_tests(conn, tester, plan, info, progress, runner)
    dep, families = _dependent_and_families(conn, plan)
    warnings, failed, names = list(plan.warnings), set(), {m: i.name for m, i in info.items()}
    sources = {m: (i.source, i.digest) for m, i in info.items()}
    for comp, rows in families.items():
        note_step(progress, f"family of {names[comp[0]]}: {len(comp)} model(s)")
        try:
            solve_and_store(conn, tester, comp, rows, info, sources, plan.alpha)
        except (MothertreeError, OSError, ValueError) as exc:
            # One unreadable model must not stop the others; its family stays
            # pending and is tried again by the next resolve.
            warnings.append(f"family of {names[comp[0]]} not resolved: {exc}")
            failed |= set(comp)
    if plan.adapters:
        note_step(progress, f"placing {len(plan.adapters)} adapter(s)")
        warnings.extend(place_adapters(conn))
    done = [m for m in plan.model_ids if m not in failed]
    edges, fams = _finish(conn, plan, started, done)
    return ResolveReport(len(done), len(plan.pair_ids), len(dep), edges, fams, plan.alpha, plan.full, tuple(warnings))


def _check_fresh(conn: Connection, plan: ResolvePlan) -> None:
    """Refuse a plan made before models were added, removed or re-indexed."""
    info = _snapshot(conn)
    unresolved = {m for m, i in info.items() if not i.resolved}
    if frozenset(info) != plan.registry_models or (not plan.full and not set(plan.model_ids) <= unresolved):
        raise RegistryError(
            f"The registry at {conn.display_url} changed since this resolve plan was made. "
            "Plan again: mothertree resolve --dry-run"
        )


def _forget_all(conn: Connection) -> None:
    with conn.session() as s:
        s.execute(delete(Edge))
        s.execute(delete(PairTest))
        s.execute(delete(FamilyMember))
        s.execute(update(Model).values(resolved_at=None))


def _run_tests(
    conn: Connection, tester: PairTester, plan: ResolvePlan, info, progress: Progress | None,
    runner: PairRunner | None,
) -> None:
    """Test each planned pair and store its row (a failed test is stored as method ``none``).

    In this process each row commits as soon as its test ends (a resolve
    killed half-way keeps them, and its next plan skips them); with a
    ``runner`` the tests run at once elsewhere and their rows commit together
    in one transaction here.
    """
    jobs = [
        PairJob(a, b, (info[a].source, info[a].digest), (info[b].source, info[b].digest),
                (info[a].name, info[b].name), plan.alpha)
        for a, b in plan.pair_ids
    ]
    if runner is not None:
        if jobs:
            rows = runner(jobs, progress)
            with conn.session() as s:
                s.add_all(PairTest(**r) for r in rows)
        return
    for i, job in enumerate(jobs, 1):
        note_step(progress, f"testing {job.names[0]} ~ {job.names[1]} ({i}/{len(jobs)})")
        row = job.run(tester.cache)
        with conn.session() as s:
            s.add(PairTest(**row))


def _dependent_and_families(conn: Connection, plan: ResolvePlan):
    """Holm over every stored test; the families a planned model touches, with their tests.

    Family-wise, not false-discovery-rate, control: one false dependency
    joins two unrelated families, and the tree solver then hangs one below
    the other. Benjamini-Hochberg lets false dependencies grow with the true
    ones (measured: 1 cross-family edge at p = 10^-2.65 in a registry of 100
    models, 201 dependent pairs of 627); Holm keeps the chance of any at
    ``alpha``. Derived pairs sit at log10 p of -100 to -10^6, far below
    Holm's thresholds (``log10(alpha / m)``: -7 for 10^5 tests).
    """
    from ..lineage.multiple import holm

    with conn.session() as s:
        rows = list(s.scalars(select(PairTest)))
        if rows:
            rejected, q = holm([r.p_value_log10 for r in rows], alpha=plan.alpha)
            for r, rej, qv in zip(rows, rejected, q):
                r.q_value_log10 = float(qv)
                r.dependent = bool(rej) and r.method != "none"
        model_ids = list(s.scalars(select(Model.id).where(Model.file_format != ADAPTER_FORMAT)))
    dep = [(r.a_id, r.b_id) for r in rows if r.dependent]
    g = nx.Graph()
    g.add_nodes_from(model_ids)
    g.add_edges_from(dep)
    pending = set(plan.model_ids)
    families = {}
    for comp in (sorted(c) for c in nx.connected_components(g)):
        if plan.full or pending & set(comp):
            members = set(comp)
            families[tuple(comp)] = {(r.a_id, r.b_id): r for r in rows if r.a_id in members and r.b_id in members}
    return dep, families


def _finish(conn: Connection, plan: ResolvePlan, started, done: list[int]) -> tuple[int, int]:
    """Mark the resolved models and record the run; the registry's edge and family counts."""
    with conn.session() as s:
        now = utc_now()
        for i in range(0, len(done), _IN_CHUNK):
            s.execute(update(Model).where(Model.id.in_(done[i : i + _IN_CHUNK])).values(resolved_at=now))
        n_fam = len({f for f in s.scalars(select(FamilyMember.family_id))})
        total_edges = len(list(s.scalars(select(Edge.id))))
        s.add(ResolutionRun(
            started_at=started, finished_at=now, full=plan.full, alpha=plan.alpha, pairs_tested=len(plan.pair_ids),
            edges=total_edges, families=n_fam,
        ))
    return total_edges, n_fam
