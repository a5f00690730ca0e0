"""The named reports, as data: plain SQL portable to SQLite and PostgreSQL.

Every report is a :class:`NamedReport` with ``:name`` parameters that always
arrive as strings (an empty string means "any"), so the same text serves
``mothertree report`` and Datasette's canned queries (``datasette/metadata.json``
is generated from :data:`REPORTS` by :func:`datasette_metadata`).

Portability notes, since they shape the SQL: ``declared_base_models`` is a
JSON list, and SQLite and PostgreSQL unnest JSON differently, so a declared
base is matched with ``LIKE '%"name"%'`` on the JSON text (``_`` and ``%`` in a
model name would over-match). Booleans are compared with ``NOT x`` / ``x``,
which both databases accept.

Running them (read-only, limited) is :mod:`._sql_runner`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..serialize import Serializable

__all__ = [
    "ReportParam",
    "NamedReport",
    "REPORTS",
    "get_report",
    "datasette_metadata",
    "datasette_queries",
    "datasette_database_name",
]


@dataclass(frozen=True)
class ReportParam(Serializable):
    """One ``:name`` parameter of a report; values are strings, ``""`` means "any"."""

    name: str
    help: str
    default: str = ""


@dataclass(frozen=True)
class NamedReport(Serializable):
    """A canned, read-only query (fields in the order ``mothertree report --json`` lists them)."""

    name: str
    title: str
    description: str
    params: tuple[ReportParam, ...]
    sql: str


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
