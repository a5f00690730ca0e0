"""One progress protocol for long work: indexing, tests, resolve, hub crawls, job workers, the demo.

Every long operation takes ``progress: Progress | None`` and calls it with one
:class:`ProgressEvent` at each step, so a caller writes one handler for all
of them. Every event carries a line for a human (``text``), which makes the
simplest handler ``lambda e: print(e.text)``. A read also carries
``label``, ``done`` and ``total`` bytes (enough for a bar with an ETA); the
end of one unit of a batch (a hub repository, a job) carries that unit's
result as ``item``, for a handler that shows failures differently.

Standard library only: every package may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["ProgressEvent", "Progress", "note_step", "note_read", "note_done"]


@dataclass(frozen=True)
class ProgressEvent:
    """One step of long work, as told to its caller.

    Examples
    --------
    >>> seen = []
    >>> note_read(seen.append, "llama", 512, 1024)
    >>> seen[0].text, seen[0].is_read
    ('llama: 512 of 1024 bytes', True)
    >>> note_step(None, "nobody listens")  # no handler: nothing happens
    """

    #: The step as one line for a human.
    text: str
    #: What is being read (``done``/``total`` are its bytes), for reads only.
    label: str | None = None
    done: int | None = None
    total: int | None = None
    #: The finished unit's result (e.g. a hub repository's or a job's), for batch steps only.
    item: Any = None

    @property
    def is_read(self) -> bool:
        """Whether this event counts bytes of a read (a bar can follow it)."""
        return self.total is not None


#: The one progress handler type.
Progress = Callable[[ProgressEvent], None]


def note_step(progress: Progress | None, text: str) -> None:
    """Tell ``progress`` (if any) that a step began or ended."""
    if progress is not None:
        progress(ProgressEvent(text))


def note_read(progress: Progress | None, label: str, done: int, total: int) -> None:
    """Tell ``progress`` (if any) that ``done`` of ``total`` bytes of ``label`` are read."""
    if progress is not None:
        progress(ProgressEvent(f"{label}: {done} of {total} bytes", label=label, done=done, total=total))


def note_done(progress: Progress | None, item: Any, text: str) -> None:
    """Tell ``progress`` (if any) that one unit of a batch finished, with its result ``item``."""
    if progress is not None:
        progress(ProgressEvent(text, item=item))
