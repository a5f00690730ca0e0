"""The :class:`Registry`: one database (and, beside it, the FAISS files)."""

from __future__ import annotations

import os
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

from sqlalchemy import delete, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from . import _db
from ._models import IndexReport, IndexResult, ModelDetail, ModelSummary, TensorSummary
from ._schema import Model, ModelRevision, Tensor
from .errors import ModelNotFoundError, MothertreeError
from .settings import default_db_url, registry_home

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
    ) -> IndexResult:
        """Index one model in one transaction: all its rows, or none of them.

        Re-indexing unchanged weights (same content digest) is a no-op; changed
        weights under a known name become the next revision.
        """
        from ..indexer import open_source, scan_model

        source = open_source(path)
        label = name or source.default_name
        cb = (lambda done, total: progress(label, done, total)) if progress else None
        scan = scan_model(source, progress=cb)
        with self.session() as s:
            existing = s.scalar(select(Model).where(Model.name == label))
            if existing is not None and existing.content_digest == scan.content_digest:
                return IndexResult(
                    label, str(source.root), "unchanged", existing.revision,
                    len(scan.tensors), tuple(sorted(scan.role_counts.items())), scan.warnings,
                )
            now = _now()
            if existing is None:
                model = Model(name=label, revision=1)
                s.add(model)
                status = "indexed"
            else:
                model = existing
                model.revision += 1
                s.execute(delete(Tensor).where(Tensor.model_id == model.id))
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
            return IndexResult(
                label, str(source.root), status, model.revision, len(scan.tensors),
                tuple(sorted(scan.role_counts.items())), scan.warnings,
            )

    def index(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        name: str | None = None,
        progress: Progress | None = None,
        keep_going: bool = False,
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
                results.append(self.index_one(p, name=name, progress=progress))
            except (MothertreeError, OSError, ValueError) as exc:
                if not keep_going:
                    raise
                errors.append((str(p), str(exc)))
        return IndexReport(tuple(results), tuple(errors))

    # -- reading ---------------------------------------------------------
    def _role_counts(self, s: Session, model_ids: list[int]) -> dict[int, dict[str, int]]:
        counts: dict[int, dict[str, int]] = {i: {} for i in model_ids}
        rows = s.execute(
            select(Tensor.model_id, Tensor.role, func.count())
            .where(Tensor.model_id.in_(model_ids), Tensor.part != "buffer")
            .group_by(Tensor.model_id, Tensor.role)
        )
        for mid, role, n in rows:
            counts[mid][role] = n
        return counts

    def models(self) -> tuple[ModelSummary, ...]:
        """Every indexed model, by name."""
        with self.session() as s:
            rows = list(s.scalars(select(Model).order_by(Model.name)))
            counts = self._role_counts(s, [m.id for m in rows]) if rows else {}
            return tuple(ModelSummary.from_row(m, counts[m.id]) for m in rows)

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
        """Delete a model and everything that hangs off it, in one transaction."""
        with self.session() as s:
            s.delete(self._get(s, name))
