"""FAISS indexes over the ``fingerprints`` table, kept in step with SQL.

SQL is the source of truth: every vector is a row of ``fingerprints`` and
its row id is its FAISS id. There is one index per ``(kind, level, dim)``
(e.g. aligned model vectors of 1,024 floats), stored as
``{level}-{kind}-{dim}.faiss`` in :attr:`Registry.home`. Vectors are unit
length, so inner product is cosine similarity.

Index type, chosen from the number of vectors ``N`` each time an index is
built:

- ``N <= flat_limit`` (100,000): ``IndexIDMap2(IndexFlatIP)``, exact search
  (about 10 ms per query at 100k x 1,024 on two CPU cores);
- beyond: ``IndexIVFFlat`` with ``nlist = 4·sqrt(N)`` lists, trained on a
  seeded sample of at most ``64·nlist`` stored vectors, ids added with
  ``add_with_ids``, and ``nprobe = max(8, nlist // 16)`` lists probed per
  query (about 6% of the vectors), which keeps the recall of near
  duplicates (cosine > 0.5) at 1 in our tests. A flat index that grows past
  the limit is rebuilt as IVF on the next write.

Consistency: files are written to a temporary file and renamed
(``os.replace``) only after the SQL transaction that changed the rows has
committed, by one process at a time (:mod:`._faiss_lock`). The first time an index is used, its ids are compared with the
table's; a missing, unreadable, truncated or out-of-step file is rebuilt
from SQL with a :class:`RuntimeWarning` (also kept in :attr:`notices`), so
a crash between the SQL commit and the file write is repaired on the next
open and search never silently returns nothing. Later uses compare only
``(count, max id)`` with SQL, which detects every change because row ids
are never reused.

When faiss has GPU support and a GPU is present, searches run on a GPU copy
of each index; files are always written from the CPU index.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from ._faiss_lock import one_writer
from ._schema import Fingerprint

if TYPE_CHECKING:
    import faiss

__all__ = [
    "VectorStore", "IndexInfo", "IndexPlan", "IndexDrift", "ReindexPlan", "ReindexReport", "FLAT_LIMIT", "Key",
]

#: Largest index searched exactly; beyond it, IVF.
FLAT_LIMIT = 100_000

Key = tuple[str, str, int]  # (kind, level, dim)


@dataclass(frozen=True)
class IndexInfo:
    """One FAISS index as built: what it holds and where it lives."""

    kind: str
    level: str
    dim: int
    vectors: int
    index_type: str
    path: str
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "level": self.level,
            "dim": self.dim,
            "vectors": self.vectors,
            "index_type": self.index_type,
            "path": self.path,
            "size_bytes": self.size_bytes,
        }


@dataclass(frozen=True)
class IndexPlan:
    """One index a reindex will rebuild: its vectors and an estimate of its file size."""

    kind: str
    level: str
    dim: int
    vectors: int
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "level": self.level,
            "dim": self.dim,
            "vectors": self.vectors,
            "size_bytes": self.size_bytes,
        }


@dataclass(frozen=True)
class IndexDrift:
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "level": self.level, "dim": self.dim, "path": self.path, "problem": self.problem,
            "sql_rows": self.sql_rows, "file_ids": self.file_ids, "missing_ids": self.missing_ids,
            "extra_ids": self.extra_ids,
        }


@dataclass(frozen=True)
class ReindexReport:
    """What a reindex did; ``warnings`` name the models it could not fingerprint."""

    indexes: tuple[IndexInfo, ...]
    fingerprinted: tuple[str, ...]
    warnings: tuple[str, ...]
    #: Files that disagreed with SQL before the rebuild (now repaired).
    repaired: tuple[IndexDrift, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "indexes": [i.to_dict() for i in self.indexes],
            "fingerprinted": list(self.fingerprinted),
            "warnings": list(self.warnings),
            "repaired": [d.to_dict() for d in self.repaired],
        }


@dataclass(frozen=True)
class ReindexPlan:
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "indexes": [i.to_dict() for i in self.indexes],
            "unfingerprinted": list(self.unfingerprinted),
            "bytes_to_read": self.bytes_to_read,
            "device": self.device,
            "drift": [d.to_dict() for d in self.drift],
        }


@dataclass
class _Loaded:
    index: "faiss.Index"
    count: int
    max_id: int
    gpu: "faiss.Index | None" = None
    #: The file as this copy last saw it (:func:`_stamp`); a writer whose copy is older reads the file again.
    stamp: tuple[int, int, int] | None = None


class VectorStore:
    """FAISS indexes beside the database, rebuilt from SQL whenever they disagree.

    Parameters
    ----------
    sessions : sessionmaker
        Sessions on the registry's database.
    home : Path
        Folder of the index files (created on first write).
    flat_limit : int
        Largest index searched exactly (see the module docstring).
    """

    def __init__(self, sessions: sessionmaker, home: Path, *, flat_limit: int = FLAT_LIMIT) -> None:
        self._sessions = sessions
        self.home = Path(home)
        self.flat_limit = flat_limit
        self._loaded: dict[Key, _Loaded] = {}
        self.notices: list[str] = []

    # -- files -----------------------------------------------------------
    def path(self, key: Key) -> Path:
        kind, level, dim = key
        return self.home / f"{level}-{kind}-{dim}.faiss"

    def _write(self, key: Key, index: "faiss.Index") -> None:
        import faiss

        self.home.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path(key).name + ".", suffix=".tmp", dir=self.home)
        os.close(fd)
        try:
            faiss.write_index(index, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _stamp(self, key: Key) -> tuple[int, int, int] | None:
        """``(inode, size, mtime)`` of an index file, ``None`` when absent: every write renames a new file in."""
        try:
            st = self.path(key).stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _read(self, key: Key) -> "faiss.Index | None":
        import faiss

        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return faiss.read_index(str(p))
        except RuntimeError:  # truncated or not a FAISS file
            return None

    # -- SQL -------------------------------------------------------------
    def keys(self) -> tuple[Key, ...]:
        """Every ``(kind, level, dim)`` that has rows in SQL."""
        with self._sessions() as s:
            rows = s.execute(select(Fingerprint.kind, Fingerprint.level, Fingerprint.dim).distinct())
            return tuple(sorted((k, lv, int(d)) for k, lv, d in rows))

    @staticmethod
    def _where(key: Key):
        kind, level, dim = key
        return (Fingerprint.kind == kind, Fingerprint.level == level, Fingerprint.dim == dim)

    def _sql_state(self, s: Session, key: Key) -> tuple[int, int]:
        n, mx = s.execute(select(func.count(), func.max(Fingerprint.id)).where(*self._where(key))).one()
        return int(n), int(mx or -1)

    def _sql_ids(self, s: Session, key: Key) -> np.ndarray:
        ids = s.scalars(select(Fingerprint.id).where(*self._where(key)).order_by(Fingerprint.id))
        return np.fromiter(ids, dtype=np.int64)

    def _sql_vectors(self, s: Session, key: Key) -> tuple[np.ndarray, np.ndarray]:
        rows = s.execute(
            select(Fingerprint.id, Fingerprint.vector).where(*self._where(key)).order_by(Fingerprint.id)
        ).all()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.empty((len(rows), key[2]), dtype=np.float32)
        for i, (_, blob) in enumerate(rows):
            vecs[i] = np.frombuffer(blob, dtype=np.float32)
        return ids, vecs

    # -- building --------------------------------------------------------
    def _build(self, key: Key, ids: np.ndarray, vecs: np.ndarray) -> "faiss.Index":
        import faiss

        dim = key[2]
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        faiss.normalize_L2(vecs)
        n = len(ids)
        if n <= self.flat_limit:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        else:
            nlist = int(4 * math.sqrt(n))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(0)
            sample = vecs[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))]
            index.train(sample)
            index.nprobe = max(8, nlist // 16)
        if n:
            index.add_with_ids(vecs, ids)
        return index

    @one_writer
    def rebuild(self, key: Key | None = None, *, reason: str | None = None) -> tuple[IndexInfo, ...]:
        """Rebuild one index (or every one) from SQL and write it; stale files go.

        Parameters
        ----------
        key : (kind, level, dim), optional
            Default: every key with rows, and files of keys without rows are deleted.
        reason : str, optional
            When given, a :class:`RuntimeWarning` says why (a repair, not a request).
        """
        keys = (key,) if key is not None else self.keys()
        if key is None:
            for stale in self.home.glob("*.faiss") if self.home.is_dir() else ():
                if stale not in {self.path(k) for k in keys}:
                    stale.unlink()
            self._loaded.clear()
        infos = []
        for k in keys:
            with self._sessions() as s:
                ids, vecs = self._sql_vectors(s, k)
                index = self._build(k, ids, vecs)
            self._write(k, index)
            self._loaded[k] = _Loaded(index, len(ids), int(ids.max()) if len(ids) else -1, stamp=self._stamp(k))
            if reason:
                self._notice(f"FAISS index {self.path(k).name} rebuilt from SQL ({len(ids)} vectors): {reason}")
            infos.append(self.info(k))
        return tuple(infos)

    def info(self, key: Key) -> IndexInfo:
        loaded = self._ensure(key)
        p = self.path(key)
        return IndexInfo(
            key[0], key[1], key[2], loaded.count, _index_type(loaded.index), str(p),
            p.stat().st_size if p.is_file() else 0,
        )

    def _notice(self, message: str) -> None:
        self.notices.append(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    # -- consistency -----------------------------------------------------
    def _ensure(self, key: Key) -> _Loaded:
        """The index for ``key``, verified against SQL (see the module docstring)."""
        with self._sessions() as s:
            state = self._sql_state(s, key)
            loaded = self._loaded.get(key)
            if loaded is not None and (loaded.count, loaded.max_id) == state:
                return loaded
            stamp = self._stamp(key)
            index = self._read(key)
            if index is None:
                why = "missing file" if not self.path(key).exists() else "unreadable or truncated file"
            else:
                ids = np.sort(_index_ids(index))
                if np.array_equal(ids, self._sql_ids(s, key)) and index.d == key[2]:
                    loaded = _Loaded(index, state[0], state[1], stamp=stamp)
                    self._loaded[key] = loaded
                    if _index_type(index) == "flat" and state[0] > self.flat_limit:
                        self.rebuild(key)
                    return self._loaded[key]
                why = f"file holds {len(ids)} ids, SQL has {state[0]} rows (out of step)"
        if state[0] == 0 and index is None:
            loaded = _Loaded(self._build(key, np.empty(0, np.int64), np.empty((0, key[2]), np.float32)), 0, -1)
            self._loaded[key] = loaded
            return loaded
        self.rebuild(key, reason=why)
        return self._loaded[key]

    def drift(self) -> tuple[IndexDrift, ...]:
        """Compare every index file's ids with SQL's, repairing nothing (``reindex --dry-run``).

        Reads the files as they are on disk, not the in-memory copies, so a
        file left behind by a crash between the SQL commit and the file write
        shows up here. Files of keys SQL no longer has count as drift too.
        """
        out = []
        keys = set(self.keys())
        on_disk = {_key_of(p) for p in (self.home.glob("*.faiss") if self.home.is_dir() else ()) if _is_index_name(p)}
        for key in sorted(keys | on_disk):
            with self._sessions() as s:
                sql_ids = self._sql_ids(s, key)
            path = self.path(key)
            index = self._read(key)
            if index is None:
                if len(sql_ids) == 0:
                    continue
                problem = "missing file" if not path.exists() else "unreadable file"
                out.append(IndexDrift(*key, str(path), problem, len(sql_ids), 0, len(sql_ids), 0))
                continue
            ids = np.sort(_index_ids(index))
            missing = int(np.setdiff1d(sql_ids, ids, assume_unique=True).size)
            extra = int(np.setdiff1d(ids, sql_ids).size)
            if index.d != key[2]:
                out.append(IndexDrift(*key, str(path), "wrong dimension", len(sql_ids), len(ids), missing, extra))
            elif missing or extra or len(ids) != len(sql_ids):
                out.append(IndexDrift(*key, str(path), "ids differ", len(sql_ids), len(ids), missing, extra))
        return tuple(out)

    def check(self) -> tuple[IndexInfo, ...]:
        """Verify every index against SQL now (repairing as needed)."""
        return tuple(self.info(k) for k in self.keys())

    # -- writes (call after the SQL commit) -------------------------------
    @one_writer
    def update(
        self,
        *,
        add: Iterable[tuple[int, str, str, np.ndarray]] = (),
        remove: Iterable[int] = (),
    ) -> None:
        """Apply one committed SQL change: drop ``remove`` ids, add ``add`` rows, rewrite files.

        ``add`` holds ``(id, kind, level, vector)``. Call it after the commit,
        with everything the transaction changed, so that each touched index
        is checked against SQL once. Rows already in an index are skipped
        (a retry is harmless); an index that still disagrees with SQL is
        rebuilt from it, with a warning.
        """
        import faiss

        gone = np.fromiter(remove, dtype=np.int64)
        by_key: dict[Key, list[tuple[int, np.ndarray]]] = {}
        for fid, kind, level, vec in add:
            by_key.setdefault((kind, level, int(vec.shape[0])), []).append((fid, vec))
        keys = set(by_key)
        if len(gone):
            keys |= set(self._loaded) | {
                _key_of(p) for p in (self.home.glob("*.faiss") if self.home.is_dir() else ())
            }
        for key in sorted(keys):
            index, verified = self._current(key)
            if len(gone):
                index.remove_ids(faiss.IDSelectorBatch(gone))
            have = set(_index_ids(index).tolist())
            new = [(i, v) for i, v in by_key.get(key, ()) if i not in have]
            if new:
                vecs = np.stack([v for _, v in new]).astype(np.float32)
                faiss.normalize_L2(vecs)
                index.add_with_ids(vecs, np.array([i for i, _ in new], dtype=np.int64))
            self._commit(key, index, verified)

    def _current(self, key: Key) -> tuple["faiss.Index", bool]:
        """The in-memory index (verified) while the file is the one it was read from or written to,
        else the file or an empty index (not yet verified): another process wrote the file since."""
        loaded = self._loaded.get(key)
        if loaded is not None and loaded.stamp == self._stamp(key):
            return loaded.index, True
        index = self._read(key)
        if index is None:
            index = self._build(key, np.empty(0, np.int64), np.empty((0, key[2]), np.float32))
        return index, False

    def _commit(self, key: Key, index: "faiss.Index", verified: bool) -> None:
        """Write ``index`` when its ids equal SQL's; rebuild from SQL when they do not.

        An index that was verified before this change needs only ``(count, max
        id)`` compared (ids are never reused); any other gets the full id comparison.
        """
        with self._sessions() as s:
            state = self._sql_state(s, key)
            ids = _index_ids(index)
            if verified:
                in_step = (len(ids), int(ids.max()) if len(ids) else -1) == state
            else:
                in_step = np.array_equal(np.sort(ids), self._sql_ids(s, key))
        if not in_step:
            self.rebuild(key, reason="out of step with SQL after a write")
        elif _index_type(index) == "flat" and state[0] > self.flat_limit:
            self.rebuild(key)
        else:
            self._write(key, index)
            self._loaded[key] = _Loaded(index, state[0], state[1], stamp=self._stamp(key))

    # -- reading ---------------------------------------------------------
    def search(self, key: Key, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine neighbours of each query row.

        Returns
        -------
        scores, ids : ndarray of shape (n_queries, k)
            Missing neighbours (fewer than ``k`` vectors) have id ``-1``.
        """
        import faiss

        loaded = self._ensure(key)
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        faiss.normalize_L2(q)
        if loaded.count == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        index = self._search_index(loaded)
        return index.search(q, min(k, loaded.count))

    def _search_index(self, loaded: _Loaded) -> "faiss.Index":
        import faiss

        if loaded.gpu is None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            try:
                loaded.gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, loaded.index)
            except RuntimeError:  # an index type the GPU build cannot clone: search on the CPU
                loaded.gpu = loaded.index
        return loaded.gpu or loaded.index

    def vectors(self, s: Session, model_ids: Iterable[int]) -> list[Fingerprint]:
        """Fingerprint rows of some models (exact vectors for layer-level comparisons)."""
        return list(s.scalars(select(Fingerprint).where(Fingerprint.model_id.in_(list(model_ids)))))

    @staticmethod
    def delete_rows(s: Session, model_id: int) -> list[int]:
        """Delete a model's fingerprint rows inside ``s``'s transaction; returns their ids."""
        ids = list(s.scalars(select(Fingerprint.id).where(Fingerprint.model_id == model_id)))
        if ids:
            s.execute(delete(Fingerprint).where(Fingerprint.model_id == model_id))
        return ids


def _is_index_name(path: Path) -> bool:
    parts = path.stem.split("-")
    return len(parts) == 3 and parts[2].isdigit()


def _key_of(path: Path) -> Key:
    level, kind, dim = path.stem.split("-")
    return kind, level, int(dim)


def _index_type(index: "faiss.Index") -> str:
    import faiss

    return "ivf" if isinstance(faiss.downcast_index(index), faiss.IndexIVF) else "flat"


def _index_ids(index: "faiss.Index") -> np.ndarray:
    """Every id an index holds (IDMap2 keeps them in ``id_map``; IVF in its lists)."""
    import faiss

    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    invlists = index.invlists
    parts = [
        faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
        for i in range(invlists.nlist)
        if invlists.list_size(i)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)
