"""The ORM and the migrations describe the same schema, on SQLite and on PostgreSQL.

A column added to ``registry/_schema.py`` without a migration (or the other way
round) makes ``compare_metadata`` report a difference, and this test fails.
"""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from mothertree.registry import Registry
from mothertree.registry._schema import Base


def _differences(registry: Registry) -> list:
    with registry.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
        diffs = compare_metadata(ctx, Base.metadata)
    # alembic's own bookkeeping table is not part of the ORM
    return [d for d in diffs if not (d[0] == "remove_table" and d[1].name == "alembic_version")]


def test_orm_matches_migrations(registry):
    assert _differences(registry) == []


def test_a_drifted_column_is_seen(registry):
    """The check can fail: a column the migrations never created is reported."""
    from sqlalchemy import Column, Integer, MetaData, Table

    meta = MetaData()
    for t in Base.metadata.sorted_tables:
        t.to_metadata(meta)
    Table("models", meta, Column("not_migrated", Integer), extend_existing=True)
    with registry.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), meta)
    assert any(d[0] == "add_column" and d[3].name == "not_migrated" for d in diffs)
