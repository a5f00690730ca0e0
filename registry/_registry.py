"""The :class:`Registry` facade: one object, one calling style (methods), jobs in their own modules.

- connection, sessions, home: :mod:`._connection`
- indexing, remove, reindex plan: :mod:`._indexing`
- names, paths and candidates: :mod:`._lookup`
- weights cache and pair tests: :mod:`._weights_cache`, :mod:`._pairs`
- resolve (plan, then execute): :mod:`._resolve` (family glue in :mod:`._families`)
- read-only lineage queries: :mod:`._queries`
- hub crawling: :mod:`._hub` (one repo: :mod:`._hub_repo`); named reports and SQL: :mod:`.reports`
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..progress import Progress
from . import _indexing, _lookup, _queries, _resolve
from ._candidates import CandidatesResult
from ._connection import Connection
from ._models import IndexReport, IndexResult, ModelDetail, ModelSummary, TensorSummary
from ._pairs import PairReport, PairTester
from ._queries import LineageView
from ._resolve import PairRunner, ResolvePlan, ResolveReport
from ._schema import Model, Tensor
from ._vectors import ReindexPlan, ReindexReport
from ._weights_cache import WeightsCache, stored_verdicts
from .errors import ModelNotFoundError

if TYPE_CHECKING:
    from ..indexer.fingerprints import ModelFingerprint
    from .reports import QueryResult

__all__ = ["Registry"]


class Registry(Connection):
    """A lineage registry: SQL rows for models and tensors, FAISS files beside them.

    Parameters
    ----------
    url : str, optional
        SQLAlchemy URL or SQLite file path. Default: ``MOTHERTREE_DB``, else
        ``registry.db`` in the registry home.
    upgrade : bool
        Run pending migrations on open (the default: migrations run on first use).
    force : bool
        Add the registry's tables even to a database that holds other tables.

    Examples
    --------
    >>> reg = Registry("sqlite:///:memory:")   # doctest: +SKIP
    >>> reg.index(["./my-model"])              # doctest: +SKIP
    """

    def __init__(
        self, url: str | None = None, *, upgrade: bool = True, force: bool = False, cache_bytes: int = 4 << 30,
    ) -> None:
        super().__init__(url, upgrade=upgrade, force=force)
        self._pairs = PairTester(self, WeightsCache(
            cache_bytes, home=self.home, verdicts=lambda digest: stored_verdicts(self.session, digest),
        ))

    def __enter__(self) -> "Registry":
        return self

    # -- indexing --------------------------------------------------------
    def index_one(
        self, path: str | os.PathLike, *, name: str | None = None, created_at: datetime | None = None,
        progress: Progress | None = None, device: str = "auto",
        after_write: Callable[[Session, Model], None] | None = None,
    ) -> IndexResult:
        """Index one model in one transaction: all its rows, or none of them.

        ``after_write(session, model)`` runs inside that transaction, so a
        caller's extra fields (hub provenance) commit with the rows or not at all.

        Re-indexing unchanged weights (same content digest) is a no-op (except
        that a model indexed before fingerprints existed gets them); changed
        weights under a known name become the next revision. Fingerprints are
        computed during the same single read of the weights (on ``device``),
        stored in SQL in the same transaction, and added to the FAISS files
        after the commit.
        """
        return _indexing.index_one(
            self, path, name=name, created_at=created_at, progress=progress, device=device, after_write=after_write,
        )

    def index(
        self, paths: Iterable[str | os.PathLike], *, name: str | None = None, progress: Progress | None = None,
        keep_going: bool = False, device: str = "auto",
    ) -> IndexReport:
        """Index several paths. ``name`` applies only when a single path is given.

        With ``keep_going`` a path that fails is recorded in ``errors`` and the
        rest are indexed; otherwise the first failure raises (models indexed
        before it stay, each in its own committed transaction).
        """
        return _indexing.index_many(self, paths, name=name, progress=progress, keep_going=keep_going, device=device)

    def remove(self, name: str) -> None:
        """Delete a model and everything that hangs off it, in one transaction.

        Its fingerprint rows go in the same transaction; its FAISS vectors
        right after the commit (a crash in between is repaired on next open).
        """
        _indexing.remove(self, name)

    def plan_reindex(self, *, device: str = "auto") -> ReindexPlan:
        """What :meth:`reindex` would do: models to fingerprint and indexes to rebuild."""
        return _indexing.plan_reindex(self, device=device)

    def reindex(self, *, device: str = "auto") -> ReindexReport:
        """Fingerprint models that lack fingerprints, then rebuild every FAISS index from SQL."""
        return self.plan_reindex(device=device).execute()

    # -- reading ---------------------------------------------------------
    def models(self) -> tuple[ModelSummary, ...]:
        """Every indexed model, by name."""
        with self.session() as s:
            rows = list(s.scalars(select(Model).order_by(Model.name)))
            counts = _role_counts(s) if rows else {}
            return tuple(ModelSummary.from_row(m, counts.get(m.id, {})) for m in rows)

    def model(self, name: str) -> ModelDetail:
        """One model with its tensors (raises :class:`ModelNotFoundError`)."""
        with self.session() as s:
            m = self.model_row(s, name)
            tensors = list(s.scalars(select(Tensor).where(Tensor.model_id == m.id).order_by(Tensor.id)))
            counts = Counter(t.role for t in tensors if t.part != "buffer")
            return ModelDetail(
                model=ModelSummary.from_row(m, dict(counts)),
                content_digest=m.content_digest,
                config=m.config,
                tensors=tuple(
                    TensorSummary(
                        t.name, t.role, t.block, t.part, tuple(t.shape), t.dtype, t.size_bytes,
                        t.digest, t.mean, t.std, t.kurtosis, t.distinct_values,
                    )
                    for t in tensors
                ),
            )

    # -- fingerprints and candidates ---------------------------------------
    def fingerprint_path(self, path: str | os.PathLike, *, device: str = "auto") -> "ModelFingerprint":
        """Fingerprint a model folder or file without storing anything."""
        from ..indexer.fingerprints import fingerprint_model

        return fingerprint_model(path, device=device)

    def candidates(
        self, model_or_path: str | os.PathLike, *, k: int = 10, add: bool = False, device: str = "auto",
    ) -> CandidatesResult:
        """Relatives of a model, ranked by fingerprint similarity, with block-level matches.

        Parameters
        ----------
        model_or_path : str or path
            A registry name or an indexed path; else a model folder or weight
            file, fingerprinted in memory and not stored, unless ``add``.
        k : int
            Number of candidates.
        add : bool
            Index a path that is not indexed before querying (as ``mothertree index`` would).
        device : {"auto", "cpu", "cuda"}
            Where a fingerprint is computed.

        Raises
        ------
        ModelNotFoundError
            When ``model_or_path`` is neither a registry name nor an existing path.
        RegistryError
            When the model was indexed before fingerprints existed (run ``mothertree reindex``).
        """
        name = _lookup.name_for(self, model_or_path)
        if name is None and add:
            name = self.index_one(model_or_path, device=device).name
        if name is None:
            return _lookup.path_candidates(self, model_or_path, k=k, device=device)
        return _lookup.stored_candidates(self, name, k=k)

    # -- lineage ---------------------------------------------------------
    def test(
        self, a: str, b: str, *, method: str = "auto", alpha: float = 0.01,
        progress: Progress | None = None,
    ) -> PairReport:
        """Independence test between two models (names or paths). See :func:`lineage.independence_test`.

        The same model twice, or a pair whose stored ``auto`` test still describes
        both models' weights, is answered without a recomputation.
        """
        return self._pairs.test(a, b, method=method, alpha=alpha, progress=progress)

    def plan_resolve(
        self, *, full: bool = False, k: int = 10, alpha: float = 0.01, models: Iterable[str] | None = None,
        pair_runner: PairRunner | None = None,
    ) -> ResolvePlan:
        """What :meth:`resolve` would do (reads only); ``plan.execute()`` does it.

        ``models`` limits the resolve to those models (their candidates and
        the families they join); by default every unresolved model, and with
        ``full`` every model after forgetting every test and edge.
        ``pair_runner`` runs the candidate pair tests elsewhere (Ray tasks:
        ``mothertree.registry.RayPairRunner(reg.home)``); their rows are
        written here, in one transaction.
        """
        return _resolve.plan_resolve(self, self._pairs, full=full, k=k, alpha=alpha, models=models,
                                     runner=pair_runner)

    def resolve(
        self, *, full: bool = False, k: int = 10, alpha: float = 0.01, models: Iterable[str] | None = None,
        progress: Progress | None = None, pair_runner: PairRunner | None = None,
    ) -> ResolveReport:
        """Place unresolved models in the lineage graph: :meth:`plan_resolve`, then execute.

        Incremental by default: only models never resolved are tested against
        their retrieval candidates, and only the families they join are
        re-solved. ``full`` forgets every test and edge and starts over.
        False discoveries are controlled over *all* pairs the registry has
        tested (Holm at ``alpha``: the chance of any false dependency).
        """
        return self.plan_resolve(full=full, k=k, alpha=alpha, models=models, pair_runner=pair_runner).execute(progress)

    def add(
        self, path: str | os.PathLike, *, name: str | None = None, k: int = 10, alpha: float = 0.01,
        device: str = "auto", progress: Progress | None = None,
    ) -> str:
        """Index ``path`` (if new) and resolve only what it touches: its candidates and its family.

        Returns the model's registry name. An indexed path is not indexed again.
        """
        known = None if name is not None else _lookup.name_for(self, path)
        label = known or self.index_one(path, name=name, device=device, progress=progress).name
        plan = self.plan_resolve(k=k, alpha=alpha, models=[label])
        if plan.models:  # a model already placed is only read
            plan.execute(progress)
        return label

    def ancestry(
        self, name_or_path: str, *, add: bool = False, progress: Progress | None = None,
    ) -> LineageView:
        """Parents up to the roots. Reads only, unless ``add`` (see :meth:`add`) places a new path first."""
        if add:
            return _queries.ancestry(self, self.add(name_or_path, progress=progress))
        name = _lookup.name_for(self, name_or_path)
        if name is None:
            raise ModelNotFoundError(
                str(name_or_path), self.display_url,
                hint=f"Index and place it with: mothertree ancestry {name_or_path} --add",
            )
        return _queries.ancestry(self, name)

    def descendants(self, name: str) -> LineageView:
        """Every model derived from ``name``."""
        return _queries.descendants(self, name)

    def family(self, name: str) -> LineageView:
        """The lineage family (confirmed dependence component) of ``name``."""
        return _queries.family(self, name)

    def tree(self, of: str | None = None) -> LineageView:
        """The whole forest, or the family of the model ``of``."""
        return _queries.tree(self, of)

    # -- reports ---------------------------------------------------------
    def report(self, name: str, params: Mapping[str, str] | None = None, /, **kw: str) -> "QueryResult":
        """Run a named report (``mothertree report NAME -p key=value``); parameters by mapping or keyword."""
        from .reports import run_report

        return run_report(self, name, {**(params or {}), **kw})

    def query(self, sql: str, params: Mapping[str, str] | None = None, *, max_rows: int | None = None) -> "QueryResult":
        """Run one read-only SQL statement (``mothertree sql``); writes are refused by the database."""
        from .reports import run_sql

        return run_sql(self, sql, params, max_rows=max_rows)


def _role_counts(s: Session) -> dict[int, dict[str, int]]:
    """Learned tensors per role, for every model."""
    q = select(Tensor.model_id, Tensor.role, func.count()).where(Tensor.part != "buffer")
    counts: dict[int, dict[str, int]] = {}
    for mid, role, n in s.execute(q.group_by(Tensor.model_id, Tensor.role)):
        counts.setdefault(mid, {})[role] = n
    return counts
