"""One writer of a registry's FAISS files at a time, across processes.

Every process that writes a model (a local worker, a Ray driver, ``index`` in
a shell, an API replica repairing a file) brings the FAISS files up to date
after its SQL commit by a read-modify-write of the file: read, add or drop
ids, check against SQL, write. Two processes doing that at once can each
write a file that lacks the other's rows, and the last rename wins. The lock
file beside the FAISS files (``.faiss-writer.lock``) makes the
read-modify-write one at a time; the writer that holds it starts from the file
as it is on disk (not from a copy it read before), and checks it against SQL
after every commit that came before it, so the last writer's file holds every
committed row.

A file lock is the right scope: the FAISS files are a per-machine cache of
SQL (each machine's ``MOTHERTREE_HOME`` has its own), so the writers that can
collide are the processes on one machine. ``flock`` locks are released by
the kernel when their process dies, so a ``kill -9`` never leaves the lock
held.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, TypeVar

from .errors import RegistryError

__all__ = ["LOCK_NAME", "one_writer", "writer_lock"]

#: The lock file, in the folder of the FAISS files.
LOCK_NAME = ".faiss-writer.lock"

#: Seconds a writer waits for the lock before giving up with an error.
WAIT_S = 600.0

F = TypeVar("F", bound=Callable[..., Any])


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
