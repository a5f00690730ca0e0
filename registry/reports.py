"""Named reports as data, and read-only ad-hoc SQL.

Every report is a :class:`NamedReport`: plain SQL, portable to SQLite and
PostgreSQL, with ``:name`` parameters that always arrive as strings (an
empty string means "any"), so the same text serves ``mothertree report``
and Datasette's canned queries (``datasette/metadata.json`` is generated
from :data:`REPORTS` by :func:`datasette_metadata`).

Portability notes, since they shape the SQL: ``declared_base_models`` is a
JSON list, and SQLite and PostgreSQL unnest JSON differently, so a declared
base is matched with ``LIKE '%"name"%'`` on the JSON text (``_`` and ``%`` in a
model name would over-match). Booleans are compared with ``NOT x`` / ``x``,
which both databases accept.

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

from .errors import ReadOnlyQueryError

if TYPE_CHECKING:
    from ._connection import Connection as Registry

__all__ = [
    "ReportParam",
    "NamedReport",
    "QueryResult",
    "REPORTS",
    "get_report",
    "run_report",
    "run_sql",
    "datasette_metadata",
    "datasette_queries",
    "datasette_database_name",
]


@dataclass(frozen=True)
class ReportParam:
    """One ``:name`` parameter of a report; values are strings, ``""`` means "any"."""

    name: str
    help: str
    default: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "help": self.help, "default": self.default}


@dataclass(frozen=True)
class NamedReport:
    """A canned, read-only query."""

    name: str
    title: str
    sql: str
    params: tuple[ReportParam, ...]
    description: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "params": [p.to_dict() for p in self.params],
            "sql": self.sql,
        }


@dataclass(frozen=True)
class QueryResult:
    """Rows of a query, JSON-ready (timestamps as ISO-8601 strings, bytes as base64)."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "rows": [list(r) for r in self.rows], "truncated": self.truncated}

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r)) for r in self.rows]


_DECLARES = "COALESCE(CAST({m}.declared_base_models AS TEXT), '') LIKE '%\"' || {b}.name || '\"%'"

REPORTS: tuple[NamedReport, ...] = (
    NamedReport(
        name="families",
        title="Families by size",
        sql=(
            "SELECT fm.family_id, COUNT(*) AS members,\n"
            "       MIN(CASE WHEN fm.is_root THEN m.name END) AS root\n"
            "FROM family_members fm JOIN models m ON m.id = fm.model_id\n"
            "GROUP BY fm.family_id\n"
            "ORDER BY members DESC, fm.family_id"
        ),
        params=(),
        description="Each family (connected component of proven dependence) with its member count and root.",
    ),
    NamedReport(
        name="top-roots",
        title="Roots with the most descendants",
        sql=(
            "WITH RECURSIVE reach(root_id, model_id) AS (\n"
            "  SELECT parent_id, child_id FROM edges\n"
            "  UNION\n"
            "  SELECT r.root_id, e.child_id FROM reach r JOIN edges e ON e.parent_id = r.model_id\n"
            ")\n"
            "SELECT m.name AS root, COUNT(DISTINCT r.model_id) AS descendants\n"
            "FROM reach r JOIN models m ON m.id = r.root_id\n"
            "WHERE NOT EXISTS (SELECT 1 FROM edges p WHERE p.child_id = r.root_id)\n"
            "GROUP BY m.name\n"
            "ORDER BY descendants DESC, root\n"
            "LIMIT CAST(COALESCE(NULLIF(:limit, ''), '20') AS INTEGER)"
        ),
        params=(ReportParam("limit", "How many roots to list (empty: 20).", "20"),),
        description="Models with no proven parent, ranked by how many models descend from them through edges.",
    ),
    NamedReport(
        name="undeclared-derivatives",
        title="Undeclared derivatives",
        sql=(
            "SELECT c.name AS model, p.name AS proven_parent, e.relation, e.p_value_log10,\n"
            "       e.direction_confidence, CAST(c.declared_base_models AS TEXT) AS declared_base_models\n"
            "FROM edges e\n"
            "JOIN models c ON c.id = e.child_id\n"
            "JOIN models p ON p.id = e.parent_id\n"
            "WHERE NOT (" + _DECLARES.format(m="c", b="p") + ")\n"
            "  AND (:parent = '' OR p.name = :parent)\n"
            "ORDER BY p.name, c.name"
        ),
        params=(ReportParam("parent", "Only children of this model (empty: all)."),),
        description="Models whose weights prove a parent (an edge) that their model card does not name.",
    ),
    NamedReport(
        name="misdeclared-parents",
        title="Mis-declared parents",
        sql=(
            "SELECT c.name AS model, b.name AS declared_base,\n"
            "       CASE WHEN t.id IS NOT NULL AND NOT t.dependent THEN 'independent' ELSE 'no lineage' END\n"
            "         AS evidence,\n"
            "       t.p_value_log10\n"
            "FROM models c\n"
            "JOIN models b ON b.id <> c.id AND " + _DECLARES.format(m="c", b="b") + "\n"
            "LEFT JOIN pair_tests t\n"
            "  ON (t.a_id = c.id AND t.b_id = b.id) OR (t.a_id = b.id AND t.b_id = c.id)\n"
            "WHERE (t.id IS NOT NULL AND NOT t.dependent)\n"
            "   OR (t.id IS NULL AND c.resolved_at IS NOT NULL AND b.resolved_at IS NOT NULL\n"
            "       AND NOT EXISTS (SELECT 1 FROM edges e\n"
            "                       WHERE (e.parent_id = b.id AND e.child_id = c.id)\n"
            "                          OR (e.parent_id = c.id AND e.child_id = b.id))\n"
            "       AND NOT EXISTS (SELECT 1 FROM family_members fc\n"
            "                       JOIN family_members fb ON fb.family_id = fc.family_id\n"
            "                       WHERE fc.model_id = c.id AND fb.model_id = b.id))\n"
            "ORDER BY c.name, b.name"
        ),
        params=(),
        description=(
            "Models whose card names an indexed base that the weights reject: an independence test "
            "found them independent, or, once both were resolved, no edge and no shared family links them."
        ),
    ),
    NamedReport(
        name="relations",
        title="Edges by relation type",
        sql=(
            "SELECT relation, COUNT(*) AS edges, AVG(direction_confidence) AS mean_direction_confidence\n"
            "FROM edges\n"
            "GROUP BY relation\n"
            "ORDER BY edges DESC, relation"
        ),
        params=(),
        description="How many proven edges of each relation (finetune, quantized, adapter, merge, ...).",
    ),
    NamedReport(
        name="architectures",
        title="Models per architecture",
        sql=(
            "SELECT COALESCE(model_class, architecture) AS architecture, COUNT(*) AS models,\n"
            "       SUM(num_parameters) AS parameters\n"
            "FROM models\n"
            "GROUP BY COALESCE(model_class, architecture)\n"
            "ORDER BY models DESC, architecture"
        ),
        params=(),
        description="Indexed models per architecture (the config's model class, else the role-map architecture).",
    ),
    NamedReport(
        name="hub-status",
        title="Hub repos not indexed",
        sql=(
            "SELECT repo_id, status, attempts, error, last_attempt_at\n"
            "FROM hub_repos\n"
            "WHERE status NOT IN ('indexed', 'lite') AND (:status = '' OR status = :status)\n"
            "ORDER BY last_attempt_at DESC, repo_id"
        ),
        params=(ReportParam("status", "Only this status: failed or unsupported (empty: both)."),),
        description="Hub repos whose last try failed or held no readable weights, with tries and the last error.",
    ),
    NamedReport(
        name="hub-transfers",
        title="Bytes fetched per hub repo",
        sql=(
            "SELECT repo_id, lite, bytes_transferred, file_size,\n"
            "       CAST(bytes_transferred AS FLOAT) / NULLIF(file_size, 0) AS fraction\n"
            "FROM hub_repos\n"
            "WHERE status IN ('indexed', 'lite')\n"
            "ORDER BY bytes_transferred DESC, repo_id"
        ),
        params=(),
        description="What indexing each repo cost in transfer, beside its weight size (lite reads fetch a fraction).",
    ),
)

_BY_NAME = {r.name: r for r in REPORTS}


def get_report(name: str) -> NamedReport:
    """The report called ``name`` (``LookupError`` naming the known ones otherwise)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
        hint = f"Did you mean '{close[0]}'? " if close else ""
        raise LookupError(
            f"No report named '{name}'. {hint}Reports: {', '.join(_BY_NAME)} (list them with: mothertree report)"
        ) from None


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
    import sqlite3
    import time
    import urllib.parse

    from sqlalchemy.engine import make_url

    database = make_url(reg.url).database
    in_memory = database in (None, "", ":memory:")
    shared = None
    if in_memory:  # one connection only: borrow it, with query_only on
        shared = reg.engine.raw_connection()
        raw = shared.driver_connection
        raw.execute("PRAGMA query_only=ON")
    else:
        uri = "file:" + urllib.parse.quote(str(database)) + "?mode=ro"
        raw = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)
    tables = _registry_tables(raw)
    refused: list[str] = []

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

    deadline = time.monotonic() + timeout_ms / 1000.0
    timed_out = []

    def progress() -> int:
        if time.monotonic() > deadline:
            timed_out.append(True)
            return 1
        return 0

    raw.set_authorizer(authorizer)
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


def datasette_queries() -> dict[str, Any]:
    """Every report as a Datasette canned query (``{name: {title, description, sql, params}}``)."""
    return {
        r.name: {
            "title": r.title,
            "description": r.description,
            "sql": r.sql,
            **({"params": [p.name for p in r.params]} if r.params else {}),
        }
        for r in REPORTS
    }


def datasette_database_name(db: str | None) -> str:
    """Datasette's name for the database ``db`` (a URL or SQLite path): an SQLite file's stem, else ``registry``."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from ._db import normalise_url
    from .settings import default_db_url

    url = make_url(normalise_url(db or default_db_url()))
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return Path(url.database).stem
    return "registry"


def datasette_metadata(database: str = "registry") -> dict[str, Any]:
    """Datasette metadata with every report as a canned query on ``database``
    (the SQLite file's stem: ``datasette registry.db -m datasette/metadata.json``)."""
    return {
        "title": "mothertree registry",
        "description": "Model lineage registry. Regenerate this file with: mothertree report --datasette",
        "databases": {database: {"queries": datasette_queries()}},
    }
