"""``mothertree demo``: the first thing a new user runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from . import _render
from ._app import app
from ._options import JsonOpt
from ._output import state


@app.command()
def demo(
    ctx: typer.Context,
    workdir: Annotated[Optional[Path], typer.Option(help="Where to build (default: MOTHERTREE_HOME/demo).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Build a small model family, index it, recover its tree and check it. In Python: mothertree.bench.demo.run_demo()."""
    with state(ctx, json_).errors() as st:
        from ..bench.demo import run_demo

        result = run_demo(workdir, progress=st.info)

        def render(c: Console) -> None:
            c.print(f"Indexed {len(result.models)} models into {result.db}")
            c.print("Recovered family trees (no timestamps given; ✓ = edge in the ground truth):")
            _render.print_view(c, result.tree, mark=lambda e: "[green]✓[/green]" if result.edge_is_right(e["parent"], e["child"]) else "[red]✗[/red]")
            c.print(f"{result.correct_edges}/{result.true_edges} true edges recovered (edge accuracy {result.edge_accuracy:.0%}).")
            c.print(f"Explore: mothertree --db {result.db} tree --format mermaid")

        st.emit(result.to_dict(), render)
