"""Running SQL read-only: named reports with their parameters, and ad-hoc statements.

:func:`run_sql` is read-only on both databases: one statement only, and it
must start with ``SELECT``, ``WITH``, ``VALUES`` or ``EXPLAIN``; then the
database itself refuses everything but reads. On PostgreSQL the query runs
in a read-only transaction as the ``mothertree_reader`` role (migration
0005: SELECT on the registry's tables, no advisory locks, notifications,
transaction ids or ``set_config``) with ``statement_timeout``, and is
rolled back. On SQLite it runs on a separate ``mode=ro`` connection whose
authorizer allows only reads of the registry's tables (no ``ATTACH``, no
``PRAGMA``) and whose progress handler stops it at the time limit. Both
stop after ``MOTHERTREE_SQL_MAX_ROWS`` rows (``truncated`` is then set) and
``MOTHERTREE_SQL_TIMEOUT_MS`` milliseconds.
"""

from __future__ import annotations

import base64
import datetime as _dt
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Mapping

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from ..serialize import Serializable
from ._report_defs import get_report
from .errors import ReadOnlyQueryError

if TYPE_CHECKING:
    from ._connection import Connection as Registry

__all__ = ["QueryResult", "run_report", "run_sql"]


@dataclass(frozen=True)
class QueryResult(Serializable):
    """Rows of a query, JSON-ready (timestamps as ISO-8601 strings, bytes as base64)."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    truncated: bool = False

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r)) for r in self.rows]


def run_report(reg: "Registry", name: str, params: Mapping[str, str] | None = None) -> QueryResult:
    """Run a named report with ``params`` over its defaults (unknown names are refused)."""
    report = get_report(name)
    given = dict(params or {})
    known = {p.name for p in report.params}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(
            f"Report '{name}' has no parameter {', '.join(unknown)}; "
            f"it takes: {', '.join(sorted(known)) or 'none'}"
        )
    values = {p.name: given.get(p.name, p.default) for p in report.params}
    return _execute(reg, report.sql, values, max_rows=None)


_LEADING = re.compile(r"^\s*(?:(?:--[^\n]*\n)|(?:/\*.*?\*/)|\s)*(\w+)", re.S)
_READ_VERBS = {"select", "with", "values", "explain"}


def _single_statement(sql: str) -> str:
    """``sql`` without a trailing ``;``; refuses a second statement (quotes and comments honoured)."""
    i, n, end = 0, len(sql), None
    while i < n:
        ch = sql[i]
        if ch in ("'", '"'):
            j = sql.find(ch, i + 1)
            while j != -1 and j + 1 < n and sql[j + 1] == ch:  # doubled quote escapes itself
                j = sql.find(ch, j + 2)
            i = n if j == -1 else j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j == -1 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j == -1 else j + 2
        elif ch == ";":
            if end is None:
                end = i
            i += 1
        else:
            if end is not None and not ch.isspace():
                raise ReadOnlyQueryError("mothertree sql runs one statement at a time; remove the second one")
            i += 1
    return sql if end is None else sql[:end]


def run_sql(
    reg: "Registry", sql: str, params: Mapping[str, str] | None = None, *, max_rows: int | None = None
) -> QueryResult:
    """Run one read-only statement; writes are refused by the database itself.

    Raises
    ------
    ReadOnlyQueryError
        For a statement that is not a query, several statements, or one the
        database refuses as a write.
    ValueError
        For SQL the database rejects otherwise (syntax, unknown table).
    """
    statement = _single_statement(sql)
    m = _LEADING.match(statement)
    verb = m.group(1).lower() if m else ""
    if verb not in _READ_VERBS:
        raise ReadOnlyQueryError(
            f"mothertree sql only reads: expected SELECT, WITH, VALUES or EXPLAIN, got {verb.upper() or 'nothing'}"
        )
    missing = sorted(set(text(statement).compile().params) - set(params or {}))
    if missing:
        raise ValueError(
            f"The SQL uses parameter(s) {', '.join(':' + p for p in missing)} with no value; "
            f"pass each with -p, e.g. -p {missing[0]}=VALUE"
        )
    return _execute(reg, statement, dict(params or {}), max_rows=max_rows)


def _execute(reg: "Registry", sql: str, params: dict[str, str], *, max_rows: int | None) -> QueryResult:
    """Run user SQL with the database's own guards, a time limit and a row limit.

    PostgreSQL: a read-only transaction, ``SET LOCAL statement_timeout`` and
    ``SET LOCAL ROLE`` to a role that may only SELECT the registry's tables
    (migration 0005), always rolled back. SQLite: a separate ``mode=ro``
    connection (``query_only`` for an in-memory database) with an authorizer
    that allows only reads of the registry's tables and a progress handler
    that stops the query at the time limit.
    """
    from . import settings

    limit = min(max_rows, settings.sql_max_rows()) if max_rows is not None else settings.sql_max_rows()
    timeout_ms = settings.sql_timeout_ms()
    if reg.engine.dialect.name == "sqlite":
        columns, fetched = _execute_sqlite(reg, sql, params, limit=limit, timeout_ms=timeout_ms)
    else:
        columns, fetched = _execute_postgres(reg, sql, params, limit=limit, timeout_ms=timeout_ms)
    truncated = len(fetched) > limit
    rows = fetched[:limit] if truncated else fetched
    return QueryResult(columns, tuple(tuple(_jsonable(v) for v in r) for r in rows), truncated)


def _first_line(exc: BaseException) -> str:
    text_ = str(exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__


def _timeout_error(timeout_ms: int) -> ValueError:
    return ValueError(
        f"SQL stopped: it ran past the {timeout_ms} ms limit. Narrow the query, or raise MOTHERTREE_SQL_TIMEOUT_MS"
    )


def _execute_postgres(reg, sql, params, *, limit, timeout_ms):
    from . import settings

    role = settings.sql_role()
    with reg.engine.connect() as conn:
        try:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
            try:
                conn.exec_driver_sql(f'SET LOCAL ROLE "{role}"')
            except DBAPIError as exc:
                raise ReadOnlyQueryError(
                    f"mothertree sql runs as the read-only role '{role}', which this connection cannot use "
                    f"({_first_line(exc.orig or exc)}). An operator runs: GRANT {role} TO "
                    f"{reg.engine.url.username or 'the_registry_user'}; (the role comes with migration 0005)"
                ) from None
            result = conn.execute(text(sql), params)
            if not result.returns_rows:
                raise ReadOnlyQueryError("mothertree sql only reads: the statement returned no rows")
            return tuple(result.keys()), result.fetchmany(limit + 1)
        except DBAPIError as exc:
            orig = exc.orig
            message = _first_line(orig) if orig is not None else _first_line(exc)
            state_ = getattr(orig, "sqlstate", None)
            if state_ == "57014":  # query_canceled: statement_timeout
                raise _timeout_error(timeout_ms) from None
            if state_ in ("25006", "42501") or "read-only" in message.lower() or "permission denied" in message:
                raise ReadOnlyQueryError(f"mothertree sql only reads; the database refused: {message}") from None
            raise ValueError(f"SQL error: {message}") from None
        finally:
            conn.rollback()


def _registry_tables(raw) -> frozenset[str]:
    cur = raw.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
    return frozenset(r[0] for r in cur.fetchall()) | {"sqlite_master", "sqlite_schema"}


def _execute_sqlite(reg, sql, params, *, limit, timeout_ms):
    """Run ``sql`` on a read-only connection guarded by an authorizer and a deadline."""
    import sqlite3
    import time

    raw, shared = _sqlite_read_connection(reg)
    refused: list[str] = []
    deadline = time.monotonic() + timeout_ms / 1000.0
    timed_out = []

    def progress() -> int:
        if time.monotonic() > deadline:
            timed_out.append(True)
            return 1
        return 0

    raw.set_authorizer(_sqlite_authorizer(_registry_tables(raw), refused))
    raw.set_progress_handler(progress, 1000)
    try:
        cur = raw.execute(sql, params) if params else raw.execute(sql)
        if cur.description is None:
            raise ReadOnlyQueryError("mothertree sql only reads: the statement returned no rows")
        columns = tuple(d[0] for d in cur.description)
        return columns, cur.fetchmany(limit + 1)
    except sqlite3.DatabaseError as exc:
        message = _first_line(exc)
        if timed_out:
            raise _timeout_error(timeout_ms) from None
        if refused or "not authorized" in message or "readonly" in message.replace(" ", "").lower():
            what = refused[0] if refused else message
            raise ReadOnlyQueryError(
                f"mothertree sql only reads the registry's tables; the database refused {what}"
            ) from None
        raise ValueError(f"SQL error: {message}") from None
    finally:
        raw.set_authorizer(None)
        raw.set_progress_handler(None, 0)
        if shared is not None:
            raw.rollback()
            raw.execute("PRAGMA query_only=OFF")
            shared.close()
        else:
            raw.close()


def _sqlite_read_connection(reg: "Registry"):
    """``(raw sqlite3 connection, pooled connection to give back or None)``.

    A file is opened again with ``mode=ro``; an in-memory database has one
    connection only, so it is borrowed with ``query_only`` on.
    """
    import sqlite3
    import urllib.parse

    from sqlalchemy.engine import make_url

    database = make_url(reg.url).database
    if database in (None, "", ":memory:"):
        shared = reg.engine.raw_connection()
        raw = shared.driver_connection
        raw.execute("PRAGMA query_only=ON")
        return raw, shared
    uri = "file:" + urllib.parse.quote(str(database)) + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False), None


def _sqlite_authorizer(tables: frozenset[str], refused: list[str]):
    """An authorizer that allows reads of ``tables`` (and CTEs) only; each refusal is appended to ``refused``."""
    import sqlite3

    def authorizer(action, arg1, arg2, db_name, _trigger):
        if action == sqlite3.SQLITE_SELECT or action == sqlite3.SQLITE_RECURSIVE:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_READ:
            # db_name is None for CTE names (and for some reads of main tables, e.g. count(*))
            if (db_name == "main" and arg1 in tables) or (db_name is None and arg1 not in ("sqlite_temp_master",
                                                                                         "sqlite_temp_schema")):
                return sqlite3.SQLITE_OK
            refused.append(f"reading {arg1!r}")
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_FUNCTION:
            if (arg2 or "").lower() in ("load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"):
                refused.append(f"calling {arg2}()")
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK
        refused.append(_SQLITE_ACTIONS.get(action, f"action {action}"))
        return sqlite3.SQLITE_DENY

    return authorizer


_SQLITE_ACTIONS = {
    2: "create index", 3: "create table", 5: "create temp table", 8: "create trigger", 9: "delete",
    10: "drop index", 11: "drop table", 16: "drop trigger", 17: "drop view", 18: "insert", 19: "pragma",
    22: "transaction", 23: "update", 24: "attach", 25: "detach", 26: "alter table", 27: "reindex",
    28: "analyze", 29: "create virtual table", 30: "drop virtual table", 32: "savepoint",
}


def _jsonable(v: Any) -> Any:
    if isinstance(v, _dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=_dt.timezone.utc)
        return v.astimezone(_dt.timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(v, (_dt.date, _dt.time)):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, (bytes, memoryview)):
        return {"$base64": True, "encoded": base64.b64encode(bytes(v)).decode()}
    return v


