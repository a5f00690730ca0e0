"""The :class:`Registry`: one database (and, beside it, the FAISS files)."""

from __future__ import annotations

import os
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from . import _db
from ._candidates import CandidatesResult, find_candidates, fingerprint_from_rows, fingerprint_rows
from ._models import IndexReport, IndexResult, ModelDetail, ModelSummary, TensorSummary
from ._schema import Edge, FamilyMember, Fingerprint, Model, ModelRevision, PairTest, Tensor
from ._vectors import IndexPlan, ReindexPlan, ReindexReport, VectorStore
from .errors import ModelNotFoundError, MothertreeError, RegistryError
from .settings import default_db_url, registry_home

if TYPE_CHECKING:
    from ._lineage import Lineage, LineageView, PairReport, ResolveReport

if TYPE_CHECKING:
    import numpy as np

    from ..indexer.fingerprints import ModelFingerprint

__all__ = ["Registry"]

Progress = Callable[[str, int, int], None]


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Registry:
    """A lineage registry: SQL rows for models and tensors, FAISS files beside them.

    Parameters
    ----------
    url : str, optional
        SQLAlchemy URL or SQLite file path. Default: ``MOTHERTREE_DB``, else
        ``registry.db`` in the registry home.
    upgrade : bool
        Run pending migrations on open (the default: migrations run on first use).

    Examples
    --------
    >>> reg = Registry("sqlite:///:memory:")   # doctest: +SKIP
    >>> reg.index(["./my-model"])              # doctest: +SKIP
    """

    def __init__(self, url: str | None = None, *, upgrade: bool = True) -> None:
        self.url = _db.normalise_url(url or default_db_url())
        self.engine = _db.make_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if upgrade and _db.current_revision(self.engine) != _db.head_revision():
            _db.upgrade(self.engine)
        #: FAISS indexes over the ``fingerprints`` table (checked against SQL on first use).
        self.vectors = VectorStore(self._sessions, self.home)

    # -- plumbing --------------------------------------------------------
    @property
    def display_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    @property
    def home(self) -> Path:
        """Folder for files that live beside the database (the FAISS store).

        An SQLite registry keeps them next to its file (``x.db`` -> ``x.db.vectors/``);
        a server database keeps them in the registry home, one folder per database.
        """
        url = make_url(self.url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            p = Path(url.database)
            return p.with_name(p.name + ".vectors")
        key = f"{url.get_backend_name()}-{url.host or 'local'}-{url.port or ''}-{url.database or 'memory'}"
        return registry_home() / "vectors" / key.replace("/", "_")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any error."""
        with self._sessions() as s, s.begin():
            yield s

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def upgrade(self, revision: str = "head") -> str | None:
        return _db.upgrade(self.engine, revision)

    def downgrade(self, revision: str) -> str | None:
        return _db.downgrade(self.engine, revision)

    def _get(self, s: Session, name: str) -> Model:
        m = s.scalar(select(Model).where(Model.name == name))
        if m is None:
            raise ModelNotFoundError(name, self.display_url)
        return m

    # -- indexing --------------------------------------------------------
    def index_one(
        self,
        path: str | os.PathLike,
        *,
        name: str | None = None,
        created_at: datetime | None = None,
        progress: Progress | None = None,
        device: str = "auto",
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
        from ..indexer import open_source, scan_model
        from ..indexer.fingerprints import Fingerprinter

        source = open_source(path)
        label = name or source.default_name
        cb = (lambda done, total: progress(label, done, total)) if progress else None
        fingerprinter = Fingerprinter(device=device, config=source.config)
        scan = scan_model(source, visit=fingerprinter.visit, progress=cb)
        fingerprint = fingerprinter.finish()
        warnings = scan.warnings + fingerprint.notes
        removed: list[int] = []
        with self.session() as s:
            existing = s.scalar(select(Model).where(Model.name == label))
            if existing is not None and existing.content_digest == scan.content_digest:
                # Same weights, maybe moved: later tests read them from the new place.
                existing.source = str(source.root)
                existing.created_at = created_at or existing.created_at
                added = []
                if s.scalar(select(func.count()).where(Fingerprint.model_id == existing.id)) == 0:
                    added = fingerprint_rows(existing.id, fingerprint)
                    s.add_all(added)
                result = IndexResult(
                    label, str(source.root), "unchanged", existing.revision,
                    len(scan.tensors), tuple(sorted(scan.role_counts.items())), warnings,
                )
                if after_write is not None:
                    after_write(s, existing)
            else:
                now = _now()
                if existing is None:
                    model = Model(name=label, revision=1)
                    s.add(model)
                    status = "indexed"
                else:
                    model = existing
                    model.revision += 1
                    s.execute(delete(Tensor).where(Tensor.model_id == model.id))
                    removed = VectorStore.delete_rows(s, model.id)
                    # New weights: the old tests and edges no longer describe this
                    # model, and its old family must be re-solved without it.
                    _unresolve_family(s, model.id)
                    s.execute(delete(PairTest).where(or_(PairTest.a_id == model.id, PairTest.b_id == model.id)))
                    s.execute(delete(Edge).where(or_(Edge.parent_id == model.id, Edge.child_id == model.id)))
                    s.execute(delete(FamilyMember).where(FamilyMember.model_id == model.id))
                    model.resolved_at = None
                    status = "revised"
                model.source = str(source.root)
                model.file_format = source.format + ("-sharded" if source.sharded else "")
                model.family = scan.family
                model.architecture = scan.architecture
                model.model_type = scan.model_type
                model.config = source.config
                model.num_blocks = scan.num_blocks
                model.hidden_size = scan.hidden_size
                model.mlp_width = scan.mlp_width
                model.vocab_size = scan.vocab_size
                model.num_parameters = scan.num_parameters
                model.dtype = scan.dtype
                model.content_digest = scan.content_digest
                model.declared_base_models = list(scan.declared_base_models) or None
                model.created_at = created_at or model.created_at
                model.indexed_at = now
                model.status = "indexed"
                s.flush()
                s.add(ModelRevision(
                    model_id=model.id, revision=model.revision, content_digest=scan.content_digest,
                    source=str(source.root), indexed_at=now,
                ))
                s.add_all(
                    Tensor(
                        model_id=model.id, name=t.name, role=t.role, block=t.block, part=t.part,
                        shape=list(t.shape), dtype=t.dtype, size_bytes=t.size_bytes, digest=t.digest,
                        mean=t.mean, std=t.std, kurtosis=t.kurtosis,
                        distinct_values=t.distinct_values, sample_size=t.sample_size,
                    )
                    for t in scan.tensors
                )
                added = fingerprint_rows(model.id, fingerprint)
                s.add_all(added)
                if after_write is not None:
                    after_write(s, model)
                result = IndexResult(
                    label, str(source.root), status, model.revision, len(scan.tensors),
                    tuple(sorted(scan.role_counts.items())), warnings,
                )
        # After the commit: a crash here leaves files the next open rebuilds from SQL.
        self.vectors.update(add=_vector_rows(added), remove=removed)
        return result

    def index(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        name: str | None = None,
        progress: Progress | None = None,
        keep_going: bool = False,
        device: str = "auto",
    ) -> IndexReport:
        """Index several paths. ``name`` applies only when a single path is given.

        With ``keep_going`` a path that fails is recorded in ``errors`` and the
        rest are indexed; otherwise the first failure raises (models indexed
        before it stay, each in its own committed transaction).
        """
        paths = list(paths)
        if name is not None and len(paths) != 1:
            raise ValueError(f"--name applies to one path, got {len(paths)} paths")
        results, errors = [], []
        for p in paths:
            try:
                results.append(self.index_one(p, name=name, progress=progress, device=device))
            except (MothertreeError, OSError, ValueError) as exc:
                if not keep_going:
                    raise
                errors.append((str(p), str(exc)))
        return IndexReport(tuple(results), tuple(errors))

    # -- reading ---------------------------------------------------------
    def _role_counts(self, s: Session, model_ids: list[int] | None) -> dict[int, dict[str, int]]:
        """Learned tensors per role, for ``model_ids`` or (``None``) every model."""
        q = select(Tensor.model_id, Tensor.role, func.count()).where(Tensor.part != "buffer")
        if model_ids is not None:
            q = q.where(Tensor.model_id.in_(model_ids))
        counts: dict[int, dict[str, int]] = {}
        rows = s.execute(q.group_by(Tensor.model_id, Tensor.role))
        for mid, role, n in rows:
            counts.setdefault(mid, {})[role] = n
        return counts

    def models(self) -> tuple[ModelSummary, ...]:
        """Every indexed model, by name."""
        with self.session() as s:
            rows = list(s.scalars(select(Model).order_by(Model.name)))
            counts = self._role_counts(s, None) if rows else {}
            return tuple(ModelSummary.from_row(m, counts.get(m.id, {})) for m in rows)

    def model(self, name: str) -> ModelDetail:
        """One model with its tensors (raises :class:`ModelNotFoundError`)."""
        with self.session() as s:
            m = self._get(s, name)
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

    def remove(self, name: str) -> None:
        """Delete a model and everything that hangs off it, in one transaction.

        Its fingerprint rows go in the same transaction; its FAISS vectors
        right after the commit (a crash in between is repaired on next open).
        """
        with self.session() as s:
            model = self._get(s, name)
            _unresolve_family(s, model.id)
            removed = VectorStore.delete_rows(s, model.id)
            s.delete(model)
        self.vectors.update(remove=removed)

    # -- fingerprints and candidates ---------------------------------------
    def fingerprint_path(self, path: str | os.PathLike, *, device: str = "auto") -> ModelFingerprint:
        """Fingerprint a model folder or file without storing anything."""
        from ..indexer.fingerprints import fingerprint_model

        return fingerprint_model(path, device=device)

    def candidates(
        self,
        model_or_path: str | os.PathLike,
        *,
        k: int = 10,
        add: bool = False,
        device: str = "auto",
    ) -> CandidatesResult:
        """Relatives of a model, ranked by fingerprint similarity, with block-level matches.

        Parameters
        ----------
        model_or_path : str or path
            A registry name, else a model folder or weight file. A path that
            is not indexed is fingerprinted on the fly and not stored, unless
            ``add`` (then it is indexed first, as ``mothertree index`` would).
        k : int
            Number of candidates.
        add : bool
            Index a path before querying.
        device : {"auto", "cpu", "cuda"}
            Where an on-the-fly fingerprint is computed.

        Raises
        ------
        ModelNotFoundError
            When ``model_or_path`` is neither a registry name nor an existing path.
        RegistryError
            When the model was indexed before fingerprints existed (run ``mothertree reindex``).
        """
        label = str(model_or_path)
        with self.session() as s:
            known = s.scalar(select(Model).where(Model.name == label))
        if known is None and Path(model_or_path).expanduser().exists():
            try:
                indexed = self._name_for(model_or_path)
            except RegistryError:
                if add:
                    raise
                indexed = None  # its name belongs to other weights: query it on the fly
            if indexed is not None:
                label = indexed
            elif add:
                label = self.index_one(model_or_path, device=device).name
            else:
                from ..indexer import open_source

                source = open_source(model_or_path)
                query = self.fingerprint_path(source.root, device=device)
                with self.session() as s:
                    return find_candidates(
                        s, self.vectors, query, name=source.default_name, exclude_model_id=None,
                        k=k, stored=False,
                    )
        with self.session() as s:
            model = self._get(s, label)
            rows = list(s.scalars(select(Fingerprint).where(Fingerprint.model_id == model.id)))
            if not rows:
                shapes = list(s.scalars(select(Tensor.shape).where(Tensor.model_id == model.id, Tensor.part != "buffer")))
                if not any(isinstance(sh, list) and len(sh) == 2 and 0 not in sh for sh in shapes):
                    raise RegistryError(
                        f"Model '{label}' has no fingerprints: none of its {len(shapes)} learned tensor(s) is a "
                        "non-empty 2-D weight matrix, so there is nothing to compare it by"
                    )
                raise RegistryError(
                    f"Model '{label}' has no fingerprints (indexed before they existed). "
                    "Compute them with: mothertree reindex"
                )
            return find_candidates(
                s, self.vectors, fingerprint_from_rows(rows), name=label, exclude_model_id=model.id,
                k=k, stored=True,
            )

    def plan_reindex(self, *, device: str = "auto") -> ReindexPlan:
        """What :meth:`reindex` would do: models to fingerprint and indexes to rebuild."""
        with self.session() as s:
            has = select(Fingerprint.model_id).distinct()
            missing = list(s.execute(
                select(Model.name, func.coalesce(func.sum(Tensor.size_bytes), 0))
                .outerjoin(Tensor, Tensor.model_id == Model.id)
                .where(Model.id.not_in(has))
                .group_by(Model.name)
                .order_by(Model.name)
            ))
            counts = s.execute(
                select(Fingerprint.kind, Fingerprint.level, Fingerprint.dim, func.count())
                .group_by(Fingerprint.kind, Fingerprint.level, Fingerprint.dim)
            ).all()
        return ReindexPlan(
            indexes=tuple(
                IndexPlan(kind, level, int(dim), int(n), int(n) * (int(dim) * 4 + 8))
                for kind, level, dim, n in sorted(counts)
            ),
            unfingerprinted=tuple(name for name, _ in missing),
            bytes_to_read=sum(int(b) for _, b in missing),
            device=device,
            _execute=self._execute_reindex,
            drift=self.vectors.drift(),
        )

    def reindex(self, *, device: str = "auto") -> ReindexReport:
        """Fingerprint models that lack fingerprints, then rebuild every FAISS index from SQL."""
        return self.plan_reindex(device=device).execute()

    def _execute_reindex(self, plan: ReindexPlan) -> ReindexReport:
        from ..indexer import open_source, scan_model
        from ..indexer.fingerprints import Fingerprinter

        done, problems = [], []
        for name in plan.unfingerprinted:
            with self.session() as s:
                model = self._get(s, name)
                model_id, source = model.id, model.source
            try:
                src = open_source(source)
                fingerprinter = Fingerprinter(device=plan.device, config=src.config)
                scan_model(src, visit=fingerprinter.visit)
            except (MothertreeError, OSError, ValueError) as exc:
                problems.append(f"{name}: not fingerprinted, its source {source} cannot be read ({exc})")
                continue
            with self.session() as s:
                s.add_all(fingerprint_rows(model_id, fingerprinter.finish()))
            done.append(name)
        indexes = self.vectors.rebuild()
        return ReindexReport(indexes=indexes, fingerprinted=tuple(done), warnings=tuple(problems), repaired=plan.drift)

    # -- lineage ---------------------------------------------------------
    @property
    def lineage(self) -> "Lineage":
        """Independence tests, resolution and lineage queries (:class:`~._lineage.Lineage`)."""
        from ._lineage import Lineage

        if getattr(self, "_lineage", None) is None:
            self._lineage = Lineage(self)
        return self._lineage

    def test(self, a: str, b: str, *, method: str = "auto", alpha: float = 0.01) -> "PairReport":
        """Independence test between two models (names or paths). See :func:`lineage.independence_test`."""
        return self.lineage.test_pair(a, b, method=method, alpha=alpha)

    def resolve(self, *, full: bool = False, k: int = 10, alpha: float = 0.01, progress=None) -> "ResolveReport":
        """Place every unresolved model in the lineage graph (``full``: re-solve everything)."""
        return self.lineage.resolve(full=full, k=k, alpha=alpha, progress=progress)

    def ancestry(self, name_or_path: str, *, progress=None) -> "LineageView":
        """Parents up to the roots. A path not yet indexed is indexed and resolved first."""
        name = self._name_for(name_or_path)
        if name is None:
            name = self.index_one(name_or_path).name
            self.resolve(progress=progress)
        return self.lineage.ancestry(name)

    def _name_for(self, name_or_path: str | os.PathLike) -> str | None:
        """The registry name of a model name or an indexed path; ``None`` for a new path.

        A new path whose default name is already taken by other weights is an
        error rather than a silent new revision of that model.
        """
        with self.session() as s:
            if s.scalar(select(Model.id).where(Model.name == str(name_or_path))) is not None:
                return str(name_or_path)
            if not Path(name_or_path).expanduser().exists():
                raise ModelNotFoundError(str(name_or_path), self.display_url)
            from ..indexer import open_source

            source = open_source(name_or_path)
            by_source = s.scalar(select(Model).where(Model.source == str(source.root)))
            if by_source is not None:
                return by_source.name
            taken = s.scalar(select(Model).where(Model.name == source.default_name))
            if taken is not None:
                raise RegistryError(
                    f"'{source.default_name}' is already in the registry at {self.display_url} with other "
                    f"weights (from {taken.source}). Index this path under another name: "
                    f"mothertree index {source.root} --name NEW-NAME"
                )
        return None

    def descendants(self, name: str) -> "LineageView":
        return self.lineage.descendants(name)

    def family(self, name: str) -> "LineageView":
        return self.lineage.family(name)

    def tree(self, family: str | None = None) -> "LineageView":
        return self.lineage.tree(family)


def _vector_rows(rows: Iterable[Fingerprint]) -> list[tuple[int, str, str, "np.ndarray"]]:
    import numpy as np

    return [(r.id, r.kind, r.level, np.frombuffer(r.vector, dtype=np.float32)) for r in rows]


def _unresolve_family(s: Session, model_id: int) -> None:
    """Mark every member of ``model_id``'s family for re-resolution (its tree is about to change)."""
    family = s.scalar(select(FamilyMember.family_id).where(FamilyMember.model_id == model_id))
    if family is not None:
        members = select(FamilyMember.model_id).where(FamilyMember.family_id == family)
        s.execute(update(Model).where(Model.id.in_(members)).values(resolved_at=None))
