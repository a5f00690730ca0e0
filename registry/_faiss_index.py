"""FAISS indexes as files: build one from vectors, write it atomically, read it back, list its ids.

Nothing here knows SQL; :class:`._vectors.VectorStore` decides when an index
is built, written or trusted. The index type follows the number of vectors
``N`` (see :func:`build_index`); vectors are normalised to unit length, so
inner product is cosine similarity.

One writer at a time, across processes. Every process that writes a model
(a local worker, a Ray driver, ``index`` in a shell, an API replica
repairing a file) brings the FAISS files up to date after its SQL commit by
a read-modify-write of the file: read, add or drop ids, check against SQL,
write. Two processes doing that at once can each write a file that lacks
the other's rows, and the last rename wins. The lock file beside the FAISS
files (:data:`LOCK_NAME`, taken by :func:`one_writer`) makes the
read-modify-write one at a time; the writer that holds it starts from the
file as it is on disk (not from a copy it read before: :func:`file_stamp`
tells them apart), and checks it against SQL after every commit that came
before it, so the last writer's file holds every committed row.

A file lock is the right scope: the FAISS files are a per-machine cache of
SQL (each machine's ``MOTHERTREE_HOME`` has its own), so the writers that can
collide are the processes on one machine. ``flock`` locks are released by
the kernel when their process dies, so a ``kill -9`` never leaves the lock
held.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import numpy as np

from .errors import RegistryError

if TYPE_CHECKING:
    import faiss

__all__ = [
    "FLAT_LIMIT", "Key", "index_path", "index_keys_on_disk", "build_index", "empty_index", "write_index",
    "read_index", "file_stamp", "index_type", "index_ids", "LOCK_NAME", "writer_lock", "one_writer",
]

#: Largest index searched exactly; beyond it, IVF.
FLAT_LIMIT = 100_000

Key = tuple[str, str, int]  # (kind, level, dim)

#: The writers' lock file, in the folder of the FAISS files.
LOCK_NAME = ".faiss-writer.lock"

#: Seconds a writer waits for the lock before giving up with an error.
WAIT_S = 600.0

F = TypeVar("F", bound=Callable[..., Any])


def index_path(home: Path, key: Key) -> Path:
    """``{level}-{kind}-{dim}.faiss`` in ``home``."""
    kind, level, dim = key
    return home / f"{level}-{kind}-{dim}.faiss"


def index_keys_on_disk(home: Path) -> set[Key]:
    """The key of every index file in ``home`` (other ``.faiss`` names are not ours)."""
    keys = set()
    for path in home.glob("*.faiss") if home.is_dir() else ():
        parts = path.stem.split("-")
        if len(parts) == 3 and parts[2].isdigit():
            level, kind, dim = parts
            keys.add((kind, level, int(dim)))
    return keys


def build_index(dim: int, ids: np.ndarray, vecs: np.ndarray, *, flat_limit: int = FLAT_LIMIT) -> "faiss.Index":
    """An index of ``vecs`` (normalised here) under ``ids``.

    ``N <= flat_limit``: ``IndexIDMap2(IndexFlatIP)``, exact. Beyond:
    ``IndexIVFFlat`` with ``nlist = 4·sqrt(N)``, trained on a seeded sample of
    at most ``64·nlist`` vectors, probing ``max(8, nlist // 16)`` lists.
    """
    import faiss

    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    faiss.normalize_L2(vecs)
    n = len(ids)
    if n <= flat_limit:
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


def empty_index(dim: int) -> "faiss.Index":
    return build_index(dim, np.empty(0, np.int64), np.empty((0, dim), np.float32))


def write_index(path: Path, index: "faiss.Index") -> None:
    """Write ``index`` to a temporary file, fsync it and rename it over ``path``: never half a file."""
    import faiss

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_index(path: Path) -> "faiss.Index | None":
    """The index in ``path``; None when the file is missing, truncated or not a FAISS file."""
    import faiss

    if not path.is_file():
        return None
    try:
        return faiss.read_index(str(path))
    except RuntimeError:
        return None


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """``(inode, size, mtime)`` of an index file, ``None`` when absent: every write renames a new file in."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def index_type(index: "faiss.Index") -> str:
    """``"ivf"`` or ``"flat"``."""
    import faiss

    return "ivf" if isinstance(faiss.downcast_index(index), faiss.IndexIVF) else "flat"


def index_ids(index: "faiss.Index") -> np.ndarray:
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


def writer_lock(home: Path):
    """The inter-process lock of the FAISS files in ``home`` (re-entrant within a thread).

    One :class:`filelock.FileLock` instance per path and process
    (``is_singleton``), so a writer that calls another writing method while
    holding the lock takes it again instead of waiting for itself; other
    threads and processes wait.
    """
    from filelock import FileLock

    home.mkdir(parents=True, exist_ok=True)
    return FileLock(home / LOCK_NAME, timeout=WAIT_S, is_singleton=True)


def one_writer(method: F) -> F:
    """Run a ``VectorStore`` method that writes FAISS files under :func:`writer_lock` of its ``home``."""

    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        from filelock import Timeout

        lock = writer_lock(self.home)
        try:
            lock.acquire()
        except Timeout:
            raise RegistryError(
                f"another process has held the FAISS writer lock {lock.lock_file} for {WAIT_S:.0f} s; "
                "the SQL rows are committed, and the next write or open brings the FAISS files up to date"
            ) from None
        try:
            return method(self, *args, **kwargs)
        finally:
            lock.release()

    return locked  # type: ignore[return-value]
