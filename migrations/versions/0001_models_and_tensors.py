"""Models, their tensors with roles and statistics, and revision history.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(512), nullable=False, unique=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False, server_default="1"),
        sa.Column("file_format", sa.String(32), nullable=False),
        sa.Column("family", sa.String(64), nullable=False),
        sa.Column("architecture", sa.String(128)),
        sa.Column("model_type", sa.String(64)),
        sa.Column("config", sa.JSON),
        sa.Column("num_blocks", sa.Integer),
        sa.Column("hidden_size", sa.Integer),
        sa.Column("mlp_width", sa.Integer),
        sa.Column("vocab_size", sa.Integer),
        sa.Column("num_parameters", sa.BigInteger, nullable=False),
        sa.Column("dtype", sa.String(32)),
        sa.Column("content_digest", sa.String(64), nullable=False),
        sa.Column("declared_base_models", sa.JSON),
        sa.Column("created_at", sa.DateTime(timezone=True)),
        sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(32), nullable=False, server_default="indexed"),
    )
    op.create_index("ix_models_content_digest", "models", ["content_digest"])
    op.create_table(
        "tensors",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("block", sa.Integer),
        sa.Column("part", sa.String(16), nullable=False),
        sa.Column("shape", sa.JSON, nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("mean", sa.Float),
        sa.Column("std", sa.Float),
        sa.Column("kurtosis", sa.Float),
        sa.Column("distinct_values", sa.Integer),
        sa.Column("sample_size", sa.Integer),
        sa.UniqueConstraint("model_id", "name"),
    )
    op.create_index("ix_tensors_model_role", "tensors", ["model_id", "role"])
    op.create_index("ix_tensors_digest", "tensors", ["digest"])
    op.create_table(
        "model_revisions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("content_digest", sa.String(64), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("model_id", "revision"),
    )


def downgrade() -> None:
    op.drop_table("model_revisions")
    op.drop_index("ix_tensors_digest", table_name="tensors")
    op.drop_index("ix_tensors_model_role", table_name="tensors")
    op.drop_table("tensors")
    op.drop_index("ix_models_content_digest", table_name="models")
    op.drop_table("models")
