"""The typer application and its global options."""

from __future__ import annotations

import typer

from ._options import DbOpt, JsonOpt
from ._output import State

app = typer.Typer(
    name="mothertree",
    help="Model provenance registry: index weights, find relatives, prove lineage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _global(ctx: typer.Context, db: DbOpt = None, json_: JsonOpt = False) -> None:
    """Model provenance registry: index weights, find relatives, prove lineage."""
    ctx.obj = State(db=db, json=json_)
