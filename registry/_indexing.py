"""Indexing: scan a model into rows (one transaction per model), remove, and the reindex plan."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Callable, Iterable

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from ..progress import Progress
from ..threads import configure as configure_threads
from ._candidates import fingerprint_rows
from ._connection import Connection
from ._models import IndexReport, IndexResult, utc_now
from ._schema import Edge, FamilyMember, Fingerprint, Model, ModelRevision, PairTest, Tensor
from ._vectors import IndexPlan, ReindexPlan, ReindexReport, VectorStore
from .errors import MothertreeError
from .settings import threads

if TYPE_CHECKING:
    import numpy as np

    from ..indexer import ModelScan
    from ..indexer.fingerprints import ModelFingerprint

__all__ = ["ReadModel", "read_model", "write_model", "index_one", "index_many", "remove", "plan_reindex"]

#: Scan fields copied as they are onto the ``models`` row.
_MODEL_FIELDS = (
    "model_type", "num_blocks", "hidden_size", "mlp_width", "vocab_size", "num_parameters", "dtype",
    "content_digest", "architecture", "model_class",
)
#: Tensor record fields copied as they are onto each ``tensors`` row.
_TENSOR_FIELDS = (
    "name", "role", "block", "part", "dtype", "size_bytes", "digest", "mean", "std", "kurtosis",
    "distinct_values", "sample_size", "informative", "degenerate_reason",
)


@dataclass(frozen=True)
class ReadModel:
    """A model read and fingerprinted, nothing written yet: plain data, so a Ray task can return it to
    the process that writes it (:func:`write_model`)."""

    scan: "ModelScan"
    fingerprint: "ModelFingerprint"


def read_model(
    path: str | os.PathLike, *, label: str | None = None, progress: Progress | None = None, device: str = "auto",
) -> ReadModel:
    """Read a model's weights once: tensor statistics and fingerprints (the slow half of indexing)."""
    from ..indexer import open_source, scan_model
    from ..indexer.fingerprints import Fingerprinter
    from ..lineage import degenerate_reason

    from ._naming import absolute_path, default_name

    configure_threads(threads())
    source = open_source(absolute_path(path))
    label = label or default_name(source)
    fingerprinter = Fingerprinter(device=device, config=source.config)
    # one pass: statistics, fingerprints and the degenerate verdict of every identity matrix
    scan = scan_model(source, visit=fingerprinter.visit, judge=degenerate_reason, progress=progress, label=label)
    return ReadModel(scan, fingerprinter.finish())


def index_one(
    conn: Connection, path: str | os.PathLike, *, name: str | None = None, created_at: datetime | None = None,
    progress: Progress | None = None, device: str = "auto",
    after_write: Callable[[Session, Model], None] | None = None,
) -> IndexResult:
    """Index one model in one transaction: all its rows, or none of them (see ``Registry.index_one``)."""
    read = read_model(path, label=name, progress=progress, device=device)
    return write_model(conn, read, name=name, created_at=created_at, after_write=after_write)


def write_model(
    conn: Connection, read: ReadModel, *, name: str | None = None, created_at: datetime | None = None,
    after_write: Callable[[Session, Model], None] | None = None,
) -> IndexResult:
    """Write a read model's rows in one transaction, then add its vectors to the FAISS files."""
    from ._naming import choose_name

    scan, fingerprint, source = read.scan, read.fingerprint, read.scan.source
    warnings = scan.warnings + fingerprint.notes
    removed: list[int] = []
    with conn.session() as s:
        label = choose_name(s, source, name, scan.content_digest)
        existing = s.scalar(select(Model).where(Model.name == label))
        if existing is not None and existing.content_digest == scan.content_digest:
            model, status, added = existing, "unchanged", _refresh_unchanged(s, existing, source, created_at, fingerprint)
        else:
            model, status, removed = _write_revision(s, existing, label, source, scan, created_at)
            added = fingerprint_rows(model.id, fingerprint)
            s.add_all(added)
        if after_write is not None:
            after_write(s, model)
        result = IndexResult(
            label, str(source.root), status, model.revision, len(scan.tensors),
            tuple(sorted(scan.role_counts.items())), warnings,
        )
    # After the commit: a crash here leaves files the next open rebuilds from SQL.
    conn.vectors.update(add=_vector_rows(added), remove=removed)
    return result


def _refresh_unchanged(s: Session, model: Model, source, created_at, fingerprint) -> list[Fingerprint]:
    """Same weights, maybe moved: later tests read them from the new place. Adds missing fingerprints."""
    model.source = str(source.root)
    model.created_at = created_at or model.created_at
    added = []
    if s.scalar(select(func.count()).where(Fingerprint.model_id == model.id)) == 0:
        added = fingerprint_rows(model.id, fingerprint)
        s.add_all(added)
    return added


def _write_revision(s: Session, existing: Model | None, label: str, source, scan, created_at):
    """A new model, or the next revision of ``existing``: ``(model, status, removed vector ids)``."""
    now = utc_now()
    removed: list[int] = []
    if existing is None:
        model = Model(name=label, revision=1)
        s.add(model)
        status = "indexed"
    else:
        model = existing
        model.revision += 1
        removed = _forget_weights(s, model)
        status = "revised"
    model.source = str(source.root)
    model.file_format = source.format + ("-sharded" if source.sharded else "")
    for f in _MODEL_FIELDS:
        setattr(model, f, getattr(scan, f))
    model.config = source.config
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
        Tensor(model_id=model.id, shape=list(t.shape), **{f: getattr(t, f) for f in _TENSOR_FIELDS})
        for t in scan.tensors
    )
    return model, status, removed


def _forget_weights(s: Session, model: Model) -> list[int]:
    """Drop what described the old weights of ``model``; the vector ids to remove from FAISS."""
    s.execute(delete(Tensor).where(Tensor.model_id == model.id))
    removed = VectorStore.delete_rows(s, model.id)
    # New weights: the old tests and edges no longer describe this
    # model, and its old family must be re-solved without it.
    unresolve_family(s, model.id)
    s.execute(delete(PairTest).where(or_(PairTest.a_id == model.id, PairTest.b_id == model.id)))
    s.execute(delete(Edge).where(or_(Edge.parent_id == model.id, Edge.child_id == model.id)))
    s.execute(delete(FamilyMember).where(FamilyMember.model_id == model.id))
    model.resolved_at = None
    return removed


def index_many(
    conn: Connection, paths: Iterable[str | os.PathLike], *, name: str | None = None,
    progress: Progress | None = None, keep_going: bool = False, device: str = "auto",
) -> IndexReport:
    """Index several paths, each in its own transaction (see ``Registry.index``)."""
    from ._naming import expand_model_folders

    paths = expand_model_folders(list(paths))  # a folder of model folders: each model in it
    if name is not None and len(paths) != 1:
        raise ValueError(f"--name applies to one path, got {len(paths)} paths")
    results, errors = [], []
    for p in paths:
        try:
            results.append(index_one(conn, p, name=name, progress=progress, device=device))
        except (MothertreeError, OSError, ValueError) as exc:
            if not keep_going:
                raise
            errors.append((str(p), str(exc)))
    return IndexReport(tuple(results), tuple(errors))


def remove(conn: Connection, name: str) -> None:
    """Delete a model and everything that hangs off it, in one transaction; its vectors after the commit."""
    with conn.session() as s:
        model = conn.model_row(s, name)
        unresolve_family(s, model.id)
        removed = VectorStore.delete_rows(s, model.id)
        s.delete(model)
    conn.vectors.update(remove=removed)


def plan_reindex(conn: Connection, *, device: str = "auto") -> ReindexPlan:
    """What a reindex would do: models to fingerprint and indexes to rebuild."""
    with conn.session() as s:
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
        _execute=lambda plan: _execute_reindex(conn, plan),
        drift=conn.vectors.drift(),
    )


def _execute_reindex(conn: Connection, plan: ReindexPlan) -> ReindexReport:
    from ..indexer import open_source, scan_model
    from ..indexer.fingerprints import Fingerprinter

    done, problems = [], []
    for name in plan.unfingerprinted:
        with conn.session() as s:
            model = conn.model_row(s, name)
            model_id, source = model.id, model.source
        try:
            src = open_source(source)
            fingerprinter = Fingerprinter(device=plan.device, config=src.config)
            scan_model(src, visit=fingerprinter.visit)
        except (MothertreeError, OSError, ValueError) as exc:
            problems.append(f"{name}: not fingerprinted, its source {source} cannot be read ({exc})")
            continue
        with conn.session() as s:
            s.add_all(fingerprint_rows(model_id, fingerprinter.finish()))
        done.append(name)
    indexes = conn.vectors.rebuild()
    return ReindexReport(indexes=indexes, fingerprinted=tuple(done), warnings=tuple(problems), repaired=plan.drift)


def _vector_rows(rows: Iterable[Fingerprint]) -> list[tuple[int, str, str, "np.ndarray"]]:
    import numpy as np

    return [(r.id, r.kind, r.level, np.frombuffer(r.vector, dtype=np.float32)) for r in rows]


def unresolve_family(s: Session, model_id: int) -> None:
    """Mark every member of ``model_id``'s family for re-resolution (its tree is about to change)."""
    family = s.scalar(select(FamilyMember.family_id).where(FamilyMember.model_id == model_id))
    if family is not None:
        members = select(FamilyMember.model_id).where(FamilyMember.family_id == family)
        s.execute(update(Model).where(Model.id.in_(members)).values(resolved_at=None))
