"""Fingerprint vectors, the SQL source of truth of the FAISS store.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fingerprints",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("role", sa.String(32)),
        sa.Column("block", sa.Integer),
        sa.Column("shape", sa.JSON),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_fingerprints_search", "fingerprints", ["kind", "level", "dim"])
    op.create_index("ix_fingerprints_model", "fingerprints", ["model_id"])


def downgrade() -> None:
    op.drop_index("ix_fingerprints_model", table_name="fingerprints")
    op.drop_index("ix_fingerprints_search", table_name="fingerprints")
    op.drop_table("fingerprints")
