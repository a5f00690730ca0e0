"""Named reports as data, and read-only ad-hoc SQL: what callers import.

The reports (portable SQL with string parameters, also Datasette's canned
queries) are defined in :mod:`._report_defs`; running them, and any
``SELECT`` a user writes, read-only and within time and row limits on SQLite
and PostgreSQL, is :mod:`._sql_runner`.
"""

from __future__ import annotations

from ._report_defs import (
    REPORTS,
    NamedReport,
    ReportParam,
    datasette_database_name,
    datasette_metadata,
    datasette_queries,
    get_report,
)
from ._sql_runner import QueryResult, run_report, run_sql

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
