"""Degenerate verdicts per tensor, judged once while indexing.

``index`` judges every identity weight matrix in its single pass over the
files (``lineage.degenerate_reason``: constant, tied-value, tied-row,
rank-deficient or non-finite) and stores the verdict on the tensor's row, so
a test or ``resolve`` that streams a model too large for memory leaves the
degenerate tensors out without reading the whole model first.
``informative`` is NULL for a tensor that was not judged (not an identity
matrix, or indexed before this revision: such a model is judged when it is
next loaded for a test).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tensors") as batch:
        batch.add_column(sa.Column("informative", sa.Boolean))
        batch.add_column(sa.Column("degenerate_reason", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("tensors") as batch:
        batch.drop_column("degenerate_reason")
        batch.drop_column("informative")
