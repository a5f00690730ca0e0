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
    st = state(ctx, json_)
    st.upgrade_on_open = False  # the database as it is; only ``db upgrade`` may create one
    return st


@db_app.command("upgrade")
def upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    json_: JsonOpt = False,
) -> None:
    """Apply migrations up to REVISION. In Python: Registry(url).upgrade(revision)."""
    st = _open(ctx, json_)
    with st.errors():
        rev = st.registry(create=True).upgrade(revision)
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
            where = st.registry().display_url
            if st.json or not sys.stdin.isatty():
                raise ValueError(
                    f"db downgrade base drops every table of the registry at {where}, with all its models; "
                    "add --yes to do it"
                )
            if not typer.confirm(f"Drop every table of the registry at {where}, with all its models?"):
                raise typer.Exit(1)
        rev = st.registry().downgrade(revision)
        st.emit({"schema_revision": rev}, lambda c: c.print(f"schema at revision {rev or 'base'}"))


@db_app.command("current")
def current(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Print the schema revision the database is at."""
    st = _open(ctx, json_)
    with st.errors():
        from ..registry import schema_head

        rev = st.registry().schema_revision()
        payload = {"schema_revision": rev, "head": schema_head()}
        st.emit(payload, lambda c: c.print(f"schema at {rev or 'base'} (head {payload['head']})"))
