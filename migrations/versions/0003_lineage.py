"""Lineage: tested pairs, typed directed edges with evidence, families, resolve runs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _fk(name: str) -> sa.Column:
    return sa.Column(name, sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False)


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("resolved_at", sa.DateTime(timezone=True)))
    op.create_table(
        "pair_tests",
        sa.Column("id", sa.Integer, primary_key=True),
        _fk("a_id"),
        _fk("b_id"),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("statistic", sa.Float),
        sa.Column("p_value_log10", sa.Float, nullable=False),
        sa.Column("q_value_log10", sa.Float),
        sa.Column("dependent", sa.Boolean, nullable=False),
        sa.Column("details", sa.JSON),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("a_id", "b_id"),
    )
    op.create_index("ix_pair_tests_a_id", "pair_tests", ["a_id"])
    op.create_index("ix_pair_tests_b_id", "pair_tests", ["b_id"])
    op.create_table(
        "edges",
        sa.Column("id", sa.Integer, primary_key=True),
        _fk("parent_id"),
        _fk("child_id"),
        sa.Column("relation", sa.String(32), nullable=False),
        sa.Column("relation_confidence", sa.Float),
        sa.Column("direction_confidence", sa.Float, nullable=False),
        sa.Column("p_value_log10", sa.Float, nullable=False),
        sa.Column("q_value_log10", sa.Float),
        sa.Column("statistic", sa.Float),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("block_map", sa.JSON),
        sa.Column("evidence", sa.JSON),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("parent_id", "child_id"),
    )
    op.create_index("ix_edges_parent_id", "edges", ["parent_id"])
    op.create_index("ix_edges_child_id", "edges", ["child_id"])
    op.create_table(
        "family_members",
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("family_id", sa.Integer, nullable=False),
        sa.Column("is_root", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_family_members_family_id", "family_members", ["family_id"])
    op.create_table(
        "resolution_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("full", sa.Boolean, nullable=False),
        sa.Column("alpha", sa.Float, nullable=False),
        sa.Column("pairs_tested", sa.Integer, nullable=False, server_default="0"),
        sa.Column("edges", sa.Integer, nullable=False, server_default="0"),
        sa.Column("families", sa.Integer, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("resolution_runs")
    op.drop_index("ix_family_members_family_id", table_name="family_members")
    op.drop_table("family_members")
    op.drop_index("ix_edges_child_id", table_name="edges")
    op.drop_index("ix_edges_parent_id", table_name="edges")
    op.drop_table("edges")
    op.drop_index("ix_pair_tests_b_id", table_name="pair_tests")
    op.drop_index("ix_pair_tests_a_id", table_name="pair_tests")
    op.drop_table("pair_tests")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("resolved_at")
