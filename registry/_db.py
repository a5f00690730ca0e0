"""Engines, sessions and migrations for SQLite and PostgreSQL."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url

from .errors import RegistryError

__all__ = ["normalise_url", "make_engine", "upgrade", "downgrade", "current_revision", "head_revision"]

_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def normalise_url(url_or_path: str) -> str:
    """Accept a SQLAlchemy URL or a plain SQLite file path; prefer psycopg 3 for PostgreSQL."""
    if "://" not in url_or_path:
        return f"sqlite:///{Path(url_or_path).expanduser().resolve()}"
    url = make_url(url_or_path)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL mode, enforced foreign keys and a busy timeout."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def _alembic_config(connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


#: Key of the PostgreSQL advisory lock that serialises migrations ("mothertr").
_MIGRATION_LOCK = 0x6D6F746865727472


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrations between processes opening the same database.

    SQLite: an exclusive ``flock`` on ``<database>.migrate.lock`` beside the
    file. PostgreSQL: the caller takes ``pg_advisory_xact_lock`` inside the
    migration's own transaction (see :func:`upgrade`). Losers wait, then find
    the schema migrated and have nothing to do.
    """
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        yield
        return
    lock_path = Path(url.database).with_name(Path(url.database).name + ".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as fh:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; SQLite's own locking is all there is
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def upgrade(engine: Engine, revision: str = "head", *, check: Callable[[], None] | None = None) -> str | None:
    """Apply migrations up to ``revision``; returns the revision now current.

    Safe when several processes open a fresh database at once: migrations
    are serialised (a file lock on SQLite, an advisory lock on PostgreSQL).
    ``check`` runs inside that lock before anything is applied (e.g. "is this
    someone else's database?"), so it never sees another process's half-done
    migration; an exception it raises is passed through unchanged.
    """
    from alembic import command

    try:
        with _migration_lock(engine), engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            if check is not None:
                check()
            command.upgrade(_alembic_config(conn), revision)
    except RegistryError:
        raise
    except Exception as exc:  # connection refused, permission, corrupt file
        raise RegistryError(
            f"Could not migrate the database at {engine.url.render_as_string()}: {exc}. "
            "Check the URL given with --db or MOTHERTREE_DB."
        ) from exc
    return current_revision(engine)


def downgrade(engine: Engine, revision: str) -> str | None:
    """Revert migrations down to ``revision`` (``"base"`` drops every table)."""
    from alembic import command
    from alembic.util import CommandError

    try:
        with _migration_lock(engine), engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            command.downgrade(_alembic_config(conn), revision)
    except CommandError as exc:  # unknown revision, or one above the current one
        raise RegistryError(
            f"Cannot downgrade the database at {engine.url.render_as_string()} to '{revision}': {exc}. "
            f"Revisions: base, {', '.join(_revisions())}; see the current one with: mothertree db current"
        ) from None
    return current_revision(engine)


def _revisions() -> list[str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return [s.revision for s in reversed(list(ScriptDirectory.from_config(cfg).walk_revisions()))]


def current_revision(engine: Engine) -> str | None:
    from alembic.migration import MigrationContext

    from sqlalchemy.exc import DBAPIError

    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except DBAPIError as exc:  # unreachable server, missing database, not a database file
        from ._open import connect_error

        raise connect_error(engine.url.render_as_string(hide_password=False), exc) from None


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    if head is None:
        raise RegistryError(f"No Alembic migrations found in {_MIGRATIONS}; the installation is incomplete.")
    return head


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())
