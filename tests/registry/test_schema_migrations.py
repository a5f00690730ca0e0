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


def test_architecture_rename_keeps_every_row(registry, tiny_models):
    """0007 renames ``family`` to ``architecture`` (and the config class to ``model_class``)
    in place: down and up again, on both databases, with no row lost (on SQLite a table
    recreate would have cascaded the drop of ``models`` into ``tensors``)."""
    from sqlalchemy import inspect, text

    registry.index_one(tiny_models["llama"], name="m")

    def columns() -> set[str]:
        return {c["name"] for c in inspect(registry.engine).get_columns("models")}

    def read(sql: str) -> tuple:
        with registry.engine.connect() as conn:
            return tuple(conn.execute(text(sql)).one())

    tensors = read("SELECT COUNT(*) FROM tensors")[0]
    assert tensors > 0
    assert read("SELECT architecture, model_class FROM models") == ("llama", "LlamaForCausalLM")
    assert registry.downgrade("0006") == "0006"
    assert {"family", "architecture"} <= columns() and "model_class" not in columns()
    assert read("SELECT family, architecture FROM models") == ("llama", "LlamaForCausalLM")
    assert read("SELECT COUNT(*) FROM tensors")[0] == tensors
    assert registry.upgrade() == "0008"  # the head: 0007, then the degenerate verdicts
    assert "family" not in columns()
    assert read("SELECT architecture, model_class FROM models") == ("llama", "LlamaForCausalLM")
    assert read("SELECT COUNT(*) FROM tensors")[0] == tensors
    assert _differences(registry) == []
