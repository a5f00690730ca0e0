"""Hub provenance on models, per-repo crawl status, crawl cursors.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("repo_id", sa.String(256)))
        batch.add_column(sa.Column("hub_sha", sa.String(64)))
        batch.add_column(sa.Column("hub_last_modified", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("declared_relation", sa.String(32)))
        batch.create_index("ix_models_repo_id", ["repo_id"])
    op.create_table(
        "hub_repos",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("repo_id", sa.String(256), nullable=False, unique=True),
        sa.Column("sha", sa.String(64)),
        sa.Column("last_modified", sa.DateTime(timezone=True)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("indexed_at", sa.DateTime(timezone=True)),
        sa.Column("lite", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("bytes_transferred", sa.BigInteger),
        sa.Column("file_size", sa.BigInteger),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="SET NULL")),
    )
    op.create_index("ix_hub_repos_status", "hub_repos", ["status"])
    op.create_table(
        "crawl_cursors",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("query_key", sa.String(512), nullable=False, unique=True),
        sa.Column("query", sa.JSON, nullable=False),
        sa.Column("watermark", sa.DateTime(timezone=True)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("repos_listed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("repos_indexed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("repos_failed", sa.Integer, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("crawl_cursors")
    op.drop_index("ix_hub_repos_status", table_name="hub_repos")
    op.drop_table("hub_repos")
    with op.batch_alter_table("models") as batch:
        batch.drop_index("ix_models_repo_id")
        batch.drop_column("declared_relation")
        batch.drop_column("hub_last_modified")
        batch.drop_column("hub_sha")
        batch.drop_column("repo_id")
