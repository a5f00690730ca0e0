"""Opening a registry without surprises: what a database URL points at before anything is created.

A mistyped ``--db`` must not create a registry (nor its folders): commands that
only read open with ``create=False`` and get a one-line error naming the URL.
A database that holds other tables is never given the registry's tables unless
the caller passes ``force`` (``mothertree init --force``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from . import _db
from .errors import RegistryError
from .settings import default_db_url

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ._registry import Registry

__all__ = ["DatabaseState", "database_state", "check_registry", "open_registry", "refuse_foreign", "connect_error"]

DatabaseState = Literal["missing", "empty", "registry", "foreign"]

def _is_ours(tables: set[str]) -> bool:
    """A mothertree registry (any schema revision, ``base`` included) or an empty database."""
    return {"models", "tensors"} <= tables or tables <= {"alembic_version"}


def _display(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def connect_error(url: str, exc: BaseException) -> RegistryError:
    """A one-line error for a database that cannot be reached or opened."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    return RegistryError(
        f"Cannot open the database at {_display(url)}: {first}. "
        "Check the URL given with --db or MOTHERTREE_DB (and that the server is running)."
    )


def _tables(engine: "Engine") -> set[str]:
    return set(inspect(engine).get_table_names())


def database_state(url: str | None) -> DatabaseState:
    """What ``url`` holds, creating nothing: no file, an empty database, a registry, or other tables."""
    url = _db.normalise_url(url or default_db_url())
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            return "empty"
        path = Path(parsed.database)
        if not path.is_file():
            return "missing"
        if path.stat().st_size == 0:
            return "empty"
    engine = create_engine(url)
    try:
        tables = _tables(engine)
    except DBAPIError as exc:
        raise connect_error(url, exc) from None
    finally:
        engine.dispose()
    if not tables:
        return "empty"
    return "registry" if _is_ours(tables) else "foreign"


def _foreign_message(url: str, tables: set[str]) -> str:
    shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
    return (
        f"The database at {_display(url)} is not a mothertree registry (it holds {len(tables)} other "
        f"table(s): {shown}). Check --db or MOTHERTREE_DB; to add the registry's tables to it anyway "
        "run: mothertree init --force"
    )


def refuse_foreign(engine: "Engine", *, force: bool = False) -> None:
    """Raise :class:`RegistryError` if ``engine``'s database holds tables but is not a registry."""
    if force:
        return
    try:
        tables = _tables(engine)
    except DBAPIError as exc:
        raise connect_error(engine.url.render_as_string(hide_password=False), exc) from None
    if not _is_ours(tables):
        raise RegistryError(_foreign_message(engine.url.render_as_string(hide_password=False), tables))


def open_registry(
    url: str | None, *, create: bool = False, force: bool = False, upgrade: bool = True,
) -> "Registry":
    """A :class:`Registry` for ``url``; with ``create=False`` only an existing registry is opened.

    ``upgrade=False`` opens the database as it is (no migration on open: the
    ``db`` commands); a database holding other tables is still refused.

    Raises
    ------
    RegistryError
        When ``url`` names no registry and ``create`` is false ("No registry at
        ..."), when it holds other tables and ``force`` is false, or when the
        database cannot be reached.
    """
    from ._registry import Registry

    url = _db.normalise_url(url or default_db_url())
    if not create or (not force and not upgrade and database_state(url) == "foreign"):
        check_registry(url)  # one line, nothing created, for a mistyped --db
    return Registry(url, upgrade=upgrade, force=force)


def check_registry(url: str | None) -> None:
    """Raise :class:`RegistryError` unless ``url`` holds a mothertree registry (creates nothing)."""
    url = _db.normalise_url(url or default_db_url())
    state = database_state(url)
    if state in ("missing", "empty"):
        raise RegistryError(
            f"No registry at {_display(url)}. Create one with: mothertree init (or mothertree index PATH); "
            "check --db or MOTHERTREE_DB for a typo"
        )
    if state == "foreign":
        engine = create_engine(url)
        try:
            raise RegistryError(_foreign_message(url, _tables(engine)))
        finally:
            engine.dispose()
