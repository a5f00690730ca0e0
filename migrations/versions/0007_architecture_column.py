"""``models.family`` becomes ``models.architecture``; the config's class moves to ``model_class``.

"Family" in mothertree means a lineage family (``family_members``), but the
``models.family`` column held the role-map architecture (``llama``, ``gpt2``,
``unknown``). It is renamed ``architecture``; the column that held that name
until now (``config.json``'s ``architectures[0]``, e.g. ``LlamaForCausalLM``)
is renamed ``model_class`` first, so the two never collide.

Both are plain column renames, with every row and index kept. On SQLite the
batch is told never to recreate the table: a recreate copies ``models`` and
drops the original, and with foreign keys enforced that drop would cascade
into ``tensors`` and every table that references a model. SQLite's own
``ALTER TABLE ... RENAME COLUMN`` (3.25 and later) needs no copy.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: (old name, new name), in the order the upgrade applies them.
_RENAMES = (("architecture", "model_class"), ("family", "architecture"))


def _rename(pairs: tuple[tuple[str, str], ...]) -> None:
    with op.batch_alter_table("models", recreate="never") as batch:
        for old, new in pairs:
            batch.alter_column(old, new_column_name=new)


def upgrade() -> None:
    _rename(_RENAMES)


def downgrade() -> None:
    _rename(tuple((new, old) for old, new in reversed(_RENAMES)))
