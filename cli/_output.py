"""One output sink: JSON or rich text on stdout, progress and warnings on stderr."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import typer
from rich.console import Console

from ..registry import Registry
from ..serialize import to_jsonable
from ..registry.errors import MothertreeError
from ..registry.settings import debug

__all__ = ["State", "clean_json"]


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

    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry(self.db, upgrade=self.upgrade_on_open)
        return self._registry

    @property
    def show_progress(self) -> bool:
        return not self.json and sys.stderr.isatty()

    def emit(self, payload: dict[str, Any], render: Callable[[Console], None]) -> None:
        """Print ``payload`` as one JSON document, or call ``render`` for humans."""
        if self.json:
            sys.stdout.write(json.dumps(clean_json(payload), allow_nan=False, indent=2) + "\n")
        else:
            render(self.stdout)

    def warn(self, message: str) -> None:
        self.stderr.print(f"[yellow]warning:[/yellow] {message}", highlight=False)

    def info(self, message: str) -> None:
        if not self.json:
            self.stderr.print(message, highlight=False)

    @contextmanager
    def errors(self) -> Iterator["State"]:
        """Turn expected failures into one line (or a JSON error object) and exit 1."""
        try:
            yield self
        except typer.Exit:
            raise
        except (MothertreeError, ValueError, OSError) as exc:
            if debug():
                raise
            msg = str(exc) or type(exc).__name__
            if self.json:
                doc = {"ok": False, "error": msg, "errors": [msg], "type": type(exc).__name__}
                sys.stdout.write(json.dumps(doc) + "\n")
            else:
                self.stderr.print(f"[red]Error:[/red] {msg}", highlight=False, soft_wrap=True)
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
