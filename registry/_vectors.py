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
committed, by one process at a time (the writer lock of
:mod:`._faiss_index`). The first time an index is used, its ids are
compared with the table's; a missing, unreadable, truncated or out-of-step
file is rebuilt from SQL with a :class:`RuntimeWarning` (also kept in
:attr:`notices`), so a crash between the SQL commit and the file write is
repaired on the next open and search never silently returns nothing.
Later uses compare only ``(count, max id)`` with SQL, which detects every
change because row ids are never reused.

When faiss has GPU support and a GPU is present, searches run on a GPU copy
of each index; files are always written from the CPU index.

Building, reading and writing the files is :mod:`._faiss_index`; the
result types and the file-against-SQL comparison are :mod:`._vector_state`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from ._faiss_index import (
    FLAT_LIMIT, Key, build_index, empty_index, file_stamp, index_ids, index_keys_on_disk, index_path, index_type,
    one_writer, read_index, write_index,
)
from ._schema import Fingerprint
from ._vector_state import IndexDrift, IndexInfo, IndexPlan, ReindexPlan, ReindexReport, file_drift

if TYPE_CHECKING:
    import faiss

__all__ = [
    "VectorStore", "IndexInfo", "IndexPlan", "IndexDrift", "ReindexPlan", "ReindexReport", "FLAT_LIMIT", "Key",
]


@dataclass
class _Loaded:
    index: "faiss.Index"
    count: int
    max_id: int
    gpu: "faiss.Index | None" = None
    #: The file as this copy last saw it (:func:`._faiss_index.file_stamp`);
    #: a writer whose copy is older reads the file again.
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
        return index_path(self.home, key)

    def _write(self, key: Key, index: "faiss.Index") -> None:
        write_index(self.path(key), index)

    def _stamp(self, key: Key) -> tuple[int, int, int] | None:
        return file_stamp(self.path(key))

    def _read(self, key: Key) -> "faiss.Index | None":
        return read_index(self.path(key))

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
                index = build_index(k[2], ids, vecs, flat_limit=self.flat_limit)
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
            key[0], key[1], key[2], loaded.count, index_type(loaded.index), str(p),
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
                ids = np.sort(index_ids(index))
                if np.array_equal(ids, self._sql_ids(s, key)) and index.d == key[2]:
                    loaded = _Loaded(index, state[0], state[1], stamp=stamp)
                    self._loaded[key] = loaded
                    if index_type(index) == "flat" and state[0] > self.flat_limit:
                        self.rebuild(key)
                    return self._loaded[key]
                why = f"file holds {len(ids)} ids, SQL has {state[0]} rows (out of step)"
        if state[0] == 0 and index is None:
            loaded = _Loaded(empty_index(key[2]), 0, -1)
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
        for key in sorted(set(self.keys()) | index_keys_on_disk(self.home)):
            with self._sessions() as s:
                sql_ids = self._sql_ids(s, key)
            found = file_drift(key, self.path(key), self._read(key), sql_ids)
            if found is not None:
                out.append(found)
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
            keys |= set(self._loaded) | index_keys_on_disk(self.home)
        for key in sorted(keys):
            index, verified = self._current(key)
            if len(gone):
                index.remove_ids(faiss.IDSelectorBatch(gone))
            have = set(index_ids(index).tolist())
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
            index = empty_index(key[2])
        return index, False

    def _commit(self, key: Key, index: "faiss.Index", verified: bool) -> None:
        """Write ``index`` when its ids equal SQL's; rebuild from SQL when they do not.

        An index that was verified before this change needs only ``(count, max
        id)`` compared (ids are never reused); any other gets the full id comparison.
        """
        with self._sessions() as s:
            state = self._sql_state(s, key)
            ids = index_ids(index)
            if verified:
                in_step = (len(ids), int(ids.max()) if len(ids) else -1) == state
            else:
                in_step = np.array_equal(np.sort(ids), self._sql_ids(s, key))
        if not in_step:
            self.rebuild(key, reason="out of step with SQL after a write")
        elif index_type(index) == "flat" and state[0] > self.flat_limit:
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
