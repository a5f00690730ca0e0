"""The typer application and its global options.

``--db`` and ``--json`` are global: they are accepted anywhere on the command
line (``mothertree models --db x.db`` is ``mothertree --db x.db models``).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from ._options import DbOpt, JsonOpt
from ._output import State

#: Global options with a value, hoisted to the front wherever they are written.
_GLOBAL_VALUED = ("--db",)


def hoist_global_options(args: list[str]) -> list[str]:
    """Move ``--db VALUE`` / ``--db=VALUE`` to the front so the root command parses them.

    Everything after a ``--`` is left alone (it is an argument, not an option).

    >>> hoist_global_options(["models", "--db", "x.db", "--json"])
    ['--db', 'x.db', 'models', '--json']
    """
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest.extend(args[i:])
            break
        if a in _GLOBAL_VALUED and i + 1 < len(args):
            front.extend(args[i : i + 2])
            i += 2
            continue
        if any(a.startswith(opt + "=") for opt in _GLOBAL_VALUED):
            front.append(a)
        else:
            rest.append(a)
        i += 1
    return front + rest


class _Root(TyperGroup):
    """The root group: global options may follow the subcommand."""

    def parse_args(self, ctx, args):  # noqa: D102  (click API)
        return super().parse_args(ctx, hoist_global_options(list(args)))


app = typer.Typer(
    name="mothertree",
    cls=_Root,
    help="Model provenance registry: index weights, find relatives, prove lineage.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _quiet_transformers() -> None:
    """transformers' config and generation warnings are not ours to show; its errors still are."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:  # already imported (an embedding program, the test runner)
        sys.modules["transformers"].logging.set_verbosity_error()


def _version(value: bool) -> None:
    if value:
        import mothertree

        typer.echo(f"mothertree {mothertree.__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    db: DbOpt = None,
    json_: JsonOpt = False,
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """Model provenance registry: index weights, find relatives, prove lineage."""
    _quiet_transformers()
    ctx.obj = State(db=db, json=json_)
