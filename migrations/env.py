"""Alembic environment: migrations run on the connection mothertree hands over,
or, from the ``alembic`` command line, on ``-x db=URL`` / ``MOTHERTREE_DB``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

config = context.config


def _run(connection) -> None:
    context.configure(connection=connection, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from mothertree.registry._db import normalise_url
    from mothertree.registry.settings import default_db_url

    url = normalise_url(context.get_x_argument(as_dictionary=True).get("db") or default_db_url())
    with create_engine(url).connect() as conn:
        _run(conn)
        conn.commit()
