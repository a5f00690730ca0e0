"""``db upgrade`` / ``db downgrade`` / ``db current``: schema migrations by hand."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ._app import app
from ._options import JsonOpt
from ._output import state

db_app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _open(ctx: typer.Context, json_: bool):
    return state(ctx, json_)


def _reg(st, *, create: bool = False):
    """The registry without migrating it; only ``db upgrade`` may create one."""
    if st._registry is None:
        from ..registry import Registry
        from ..registry._open import check_registry, database_state

        if not create or database_state(st.db) == "foreign":  # one line, nothing created, for a mistyped --db
            check_registry(st.db)
        st._registry = Registry(st.db, upgrade=False)
    return st._registry


@db_app.command("upgrade")
def upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    json_: JsonOpt = False,
) -> None:
    """Apply migrations up to REVISION. In Python: Registry(url).upgrade(revision)."""
    st = _open(ctx, json_)
    with st.errors():
        rev = _reg(st, create=True).upgrade(revision)
        st.emit({"schema_revision": rev}, lambda c: c.print(f"schema at revision {rev}"))


@db_app.command("downgrade")
def downgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision ('base' drops every table).")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before dropping every table ('base').")] = False,
    json_: JsonOpt = False,
) -> None:
    """Revert migrations down to REVISION. In Python: Registry(url).downgrade(revision)."""
    st = _open(ctx, json_)
    with st.errors():
        if revision == "base" and not yes:
            where = _reg(st).display_url
            if st.json or not sys.stdin.isatty():
                raise ValueError(
                    f"db downgrade base drops every table of the registry at {where}, with all its models; "
                    "add --yes to do it"
                )
            if not typer.confirm(f"Drop every table of the registry at {where}, with all its models?"):
                raise typer.Exit(1)
        rev = _reg(st).downgrade(revision)
        st.emit({"schema_revision": rev}, lambda c: c.print(f"schema at revision {rev or 'base'}"))


@db_app.command("current")
def current(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Print the schema revision the database is at."""
    st = _open(ctx, json_)
    with st.errors():
        from ..registry._db import current_revision, head_revision

        rev = current_revision(_reg(st).engine)
        payload = {"schema_revision": rev, "head": head_revision()}
        st.emit(payload, lambda c: c.print(f"schema at {rev or 'base'} (head {payload['head']})"))
