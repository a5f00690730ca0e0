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


#: What the numbers on each edge mean, printed under the demo's tree.
LEGEND = """How to read an edge:
  log10 p    evidence of shared origin: the log10 p-value of the test whose null is "trained from
             independent initializations"; -2 means p = 0.01, -50 means overwhelming (more negative = stronger)
  direction  confidence (0.5 to 1) that the parent really came first: timestamps, structure and weight statistics
  exact      the test used: exact = the exact test on the weights (permutation-aligned MLP rows and residual
             dimensions), match = the activation-matching test from a forward pass; permtest = a permutation test
  merge      a merged model has several parents: it is listed under each, and says how many it has"""


@app.command()
def demo(
    ctx: typer.Context,
    workdir: Annotated[Optional[Path], typer.Option(help="Where to build (default: MOTHERTREE_HOME/demo).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Build a small model family, index it, recover its tree and check it. In Python: mothertree.bench.demo.run_demo()."""
    with state(ctx, json_).errors() as st:
        from ..bench.demo import run_demo

        with st.reporter() as rep:  # step lines on stderr as they happen, with an ETA for the tests
            result = run_demo(workdir, progress=rep)

        def render(c: Console) -> None:
            c.print(f"Indexed {len(result.models)} models into {result.db}")
            c.print("Recovered family trees (no timestamps given; ✓ = edge in the ground truth):")
            _render.print_view(c, result.tree, mark=lambda e: "[green]✓[/green]" if result.edge_is_right(e["parent"], e["child"]) else "[red]✗[/red]")
            c.print(f"{result.correct_edges}/{result.true_edges} true edges recovered (edge accuracy {result.edge_accuracy:.0%}).")
            c.print(LEGEND)
            c.print(f"Explore: mothertree --db {result.db} tree --format mermaid")

        st.emit(result.to_dict(), render)
