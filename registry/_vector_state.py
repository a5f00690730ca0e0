"""What the FAISS files hold, compared with SQL: index info, drift, and the reindex plan and report.

:func:`file_drift` is the consistency check of one file against the ids SQL
holds for its key; ``reindex --dry-run`` shows its findings and ``reindex``
repairs them (see :class:`._vectors.VectorStore`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..serialize import Serializable
from ._faiss_index import Key, index_ids

if TYPE_CHECKING:
    import faiss

__all__ = ["IndexInfo", "IndexPlan", "IndexDrift", "ReindexPlan", "ReindexReport", "file_drift"]


@dataclass(frozen=True)
class IndexInfo(Serializable):
    """One FAISS index as built: what it holds and where it lives."""

    kind: str
    level: str
    dim: int
    vectors: int
    index_type: str
    path: str
    size_bytes: int


@dataclass(frozen=True)
class IndexPlan(Serializable):
    """One index a reindex will rebuild: its vectors and an estimate of its file size."""

    kind: str
    level: str
    dim: int
    vectors: int
    size_bytes: int


@dataclass(frozen=True)
class IndexDrift(Serializable):
    """An index file that disagrees with SQL: ids SQL has that the file lacks, and the reverse.

    ``problem`` is ``"missing file"``, ``"unreadable file"``, ``"wrong dimension"``
    or ``"ids differ"``.
    """

    kind: str
    level: str
    dim: int
    path: str
    problem: str
    sql_rows: int
    file_ids: int
    missing_ids: int
    extra_ids: int

    def __str__(self) -> str:
        return (
            f"{Path(self.path).name}: {self.problem} (SQL has {self.sql_rows} rows, the file {self.file_ids} ids; "
            f"{self.missing_ids} missing, {self.extra_ids} extra)"
        )


@dataclass(frozen=True)
class ReindexReport(Serializable):
    """What a reindex did; ``warnings`` name the models it could not fingerprint."""

    indexes: tuple[IndexInfo, ...]
    fingerprinted: tuple[str, ...]
    warnings: tuple[str, ...]
    #: Files that disagreed with SQL before the rebuild (now repaired).
    repaired: tuple[IndexDrift, ...] = ()


@dataclass(frozen=True)
class ReindexPlan(Serializable):
    """What a reindex would do; :meth:`execute` does it (``--dry-run`` only prints it).

    Attributes
    ----------
    indexes : tuple of IndexPlan
        Indexes rebuilt from the vectors already in SQL.
    unfingerprinted : tuple of str
        Models with no fingerprint rows (indexed before fingerprints
        existed); their sources are read again. Fingerprints computed now
        join the rebuilt indexes, which the estimate above does not count.
    bytes_to_read : int
        Weight bytes of those models.
    device : str
        Where their fingerprints will be computed.
    """

    indexes: tuple[IndexPlan, ...]
    unfingerprinted: tuple[str, ...]
    bytes_to_read: int
    device: str
    _execute: Callable[["ReindexPlan"], ReindexReport] = field(repr=False, compare=False)
    #: Index files whose ids disagree with SQL now (:meth:`VectorStore.drift`); the rebuild repairs them.
    drift: tuple[IndexDrift, ...] = ()

    def execute(self) -> ReindexReport:
        return self._execute(self)


def file_drift(key: Key, path: Path, index: "faiss.Index | None", sql_ids: np.ndarray) -> IndexDrift | None:
    """How the index read from ``path`` (None: missing or unreadable) disagrees with SQL's ids; None if it agrees."""
    if index is None:
        if len(sql_ids) == 0:
            return None
        problem = "missing file" if not path.exists() else "unreadable file"
        return IndexDrift(*key, str(path), problem, len(sql_ids), 0, len(sql_ids), 0)
    ids = np.sort(index_ids(index))
    missing = int(np.setdiff1d(sql_ids, ids, assume_unique=True).size)
    extra = int(np.setdiff1d(ids, sql_ids).size)
    if index.d != key[2]:
        return IndexDrift(*key, str(path), "wrong dimension", len(sql_ids), len(ids), missing, extra)
    if missing or extra or len(ids) != len(sql_ids):
        return IndexDrift(*key, str(path), "ids differ", len(sql_ids), len(ids), missing, extra)
    return None
