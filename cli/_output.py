"""One output sink: JSON or rich text on stdout, progress and warnings on stderr."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import typer
from rich.console import Console

from ..registry import Registry
from ..progress import ProgressEvent
from ..serialize import to_jsonable
from ..registry.errors import MothertreeError
from ..registry.settings import debug

__all__ = ["State", "clean_json", "safe", "Reporter"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def safe(text: object) -> str:
    """``text`` fit for a terminal: control characters escaped (``\\x1b``), rich markup escaped."""
    from rich.markup import escape

    s = _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), str(text))
    return escape(s)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class Reporter:
    """Progress of long work on stderr: a live bar on a terminal, plain throttled lines otherwise.

    A reporter is a :data:`mothertree.progress.Progress` handler: pass it as
    ``progress=`` to any long registry operation. A read event goes to
    ``bytes(label, done, total)`` (a bar, or lines with an ETA); any other event
    to ``message(text)``, where a step written ``... (i/n)`` gets an ETA from the
    steps done so far. ``heartbeat(text)`` says "still working" every
    ``every_s`` seconds while a step without a known length runs.
    """

    def __init__(self, console: Console, *, enabled: bool = True, every_s: float = 10.0, first_s: float = 5.0) -> None:
        self.console = console
        self.enabled = enabled
        self.tty = console.is_terminal
        self.every_s, self.first_s = every_s, first_s
        self._start = time.monotonic()
        self._labels: dict[str, tuple[float, float]] = {}  # label -> (started, last printed)
        self._steps: tuple[float, int] | None = None  # (time of step 1, total)
        self._bar = None
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _line(self, text: str) -> None:
        self.console.print(safe(text), highlight=False, soft_wrap=True)

    def __call__(self, event: ProgressEvent) -> None:
        if event.is_read:
            self.bytes(event.label or "", event.done or 0, event.total or 0)
        else:
            self.message(event.text)

    def bytes(self, label: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if self._bar is None:
                from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                           TransferSpeedColumn)

                self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                     TransferSpeedColumn(), TimeRemainingColumn(), console=self.console, transient=True)
                self._bar.start()
            if label not in self._tasks:
                self._tasks[label] = self._bar.add_task(safe(label), total=total)
            self._bar.update(self._tasks[label], completed=done)
            return
        started, last = self._labels.setdefault(label, (now, 0.0))
        elapsed = now - started
        if done >= total > 0:
            if last:  # it was slow enough to be reported: say it finished
                self._line(f"{label}: read {_size(total)} in {_duration(elapsed)}")
            self._labels.pop(label, None)
            return
        if elapsed < self.first_s or now - last < self.every_s:
            return
        eta = f", about {_duration(elapsed * (total - done) / done)} left" if done > 0 else ""
        pct = f"{done / total:.0%}" if total else "?"
        self._line(f"{label}: {pct} ({_size(done)} of {_size(total)}){eta}")
        self._labels[label] = (started, now)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        m = re.search(r"\((\d+)/(\d+)\)\s*$", text)
        if m:
            i, n = int(m.group(1)), int(m.group(2))
            now = time.monotonic()
            if i == 1 or self._steps is None:
                self._steps = (now, n)
            elif i > 1:
                t0 = self._steps[0]
                left = (now - t0) / (i - 1) * (n - i + 1)
                text = f"{text}, about {_duration(left)} left"
        self._line(text)

    @contextmanager
    def heartbeat(self, text: str | None = None) -> Iterator[None]:
        """Print ``text`` now, then an elapsed-time line every ``every_s`` seconds until the block ends."""
        if not self.enabled:
            yield
            return
        if text:
            self._line(text)
        stop = threading.Event()
        t0 = time.monotonic()

        def beat() -> None:
            while not stop.wait(self.every_s):
                self._line(f"  ... still working ({_duration(time.monotonic() - t0)} elapsed)")

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def clean_json(obj: Any) -> Any:
    """Make a ``to_dict()`` result strict-JSON safe (the one rule of :func:`mothertree.serialize.to_jsonable`)."""
    return to_jsonable(obj)


@dataclass
class State:
    """What the global options chose; commands get it from ``ctx.obj``."""

    db: str | None = None
    json: bool = False
    stdout: Console = field(default_factory=lambda: Console(soft_wrap=True))
    stderr: Console = field(default_factory=lambda: Console(stderr=True))
    #: ``db`` commands open the database as it is (no migration on open).
    upgrade_on_open: bool = True
    _registry: Registry | None = None

    def registry(self, *, create: bool = False, force: bool = False) -> Registry:
        """The registry at ``--db``; only commands that may create one pass ``create=True``."""
        if self._registry is None:
            from ..registry import open_registry

            self._registry = open_registry(self.db, create=create, force=force, upgrade=self.upgrade_on_open)
        return self._registry

    @property
    def show_progress(self) -> bool:
        """Progress goes to stderr for humans, and also under --json when stderr is a terminal."""
        return not self.json or sys.stderr.isatty()

    def reporter(self) -> Reporter:
        return Reporter(self.stderr, enabled=self.show_progress)

    def emit(self, payload: dict[str, Any], render: Callable[[Console], None]) -> None:
        """Print ``payload`` as one JSON document, or call ``render`` for humans."""
        if self.json:
            sys.stdout.write(json.dumps(clean_json(payload), allow_nan=False, indent=2) + "\n")
        else:
            render(self.stdout)

    def warn(self, message: str) -> None:
        self.stderr.print(f"[yellow]warning:[/yellow] {safe(message)}", highlight=False, soft_wrap=True)

    def info(self, message: str) -> None:
        if not self.json:
            self.stderr.print(safe(message), highlight=False, soft_wrap=True)

    @contextmanager
    def errors(self) -> Iterator["State"]:
        """Turn expected failures into one line (or a JSON error object) and exit 1."""
        try:
            yield self
        except typer.Exit:
            raise
        except (MothertreeError, ValueError, OSError, LookupError) as exc:
            if debug():
                raise
            msg = str(exc) or type(exc).__name__
            if isinstance(exc, KeyError) and exc.args:
                msg = str(exc.args[0])
            msg = " ".join(line.strip() for line in msg.splitlines() if line.strip())  # one line
            if self.json:
                doc = {"ok": False, "error": msg, "errors": [msg], "type": type(exc).__name__}
                sys.stdout.write(json.dumps(doc) + "\n")
            else:
                self.stderr.print(f"[red]Error:[/red] {safe(msg)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        finally:
            if self._registry is not None:
                self._registry.close()
                self._registry = None


def state(ctx: typer.Context, json_flag: bool) -> State:
    """The global state, with a per-command ``--json`` folded in."""
    st: State = ctx.find_root().obj or State()
    if json_flag:
        st.json = True
    return st
