"""``test``, ``resolve``, ``ancestry``, ``descendants``, ``family``, ``tree``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from . import _render
from ._app import app
from ._options import JsonOpt, ModelArg
from ._output import state


@app.command("test")
def test_cmd(
    ctx: typer.Context,
    a: Annotated[str, typer.Argument(help="First model (name or path).")],
    b: Annotated[str, typer.Argument(help="Second model (name or path).")],
    method: Annotated[str, typer.Option(help="auto, exact, match or permtest.")] = "auto",
    alpha: Annotated[float, typer.Option(help="Significance level for 'dependent'.")] = 0.01,
    json_: JsonOpt = False,
) -> None:
    """Independence test between two models: log10 p under 'trained independently'. In Python: Registry.test(a, b)."""
    with state(ctx, json_).errors() as st:
        reg = st.registry(create=Path(a).exists() and Path(b).exists())
        with st.reporter() as rep, rep.heartbeat():
            report = reg.test(a, b, method=method, alpha=alpha, progress=rep)
        d = report.to_dict()

        def render(c: Console) -> None:
            if d["method"] == "identical":
                c.print(f"{_render._safe(d['a'])} vs {_render._safe(d['b'])}: {_render._safe(d['notes'][0])}")
                return
            verdict = "DEPENDENT" if d["dependent"] else "no evidence of dependence"
            c.print(f"{_render._safe(d['a'])} vs {_render._safe(d['b'])}: {verdict}  "
                    f"(log10 p = {d['p_value_log10']:.2f}, method {d['method']}, alpha {alpha})")
            for n in d.get("notes", []):
                c.print(f"  [dim]note: {_render._safe(n)}[/dim]")
            for blk in d.get("blocks", [])[:64]:
                c.print(f"  block {blk['block_a']} ~ {blk['block_b']}: log10 p {blk['p_value_log10']:.2f}  ({blk.get('test', '')})")
            if d.get("block_map"):
                c.print("block map: " + ", ".join(f"{x}->{y}" for x, y in d["block_map"]))

        st.emit(d, render)


@app.command()
def resolve(
    ctx: typer.Context,
    full: Annotated[bool, typer.Option("--full", help="Forget every test and edge and re-solve everything.")] = False,
    k: Annotated[int, typer.Option("-k", min=1, help="Candidates tested per model.")] = 10,
    alpha: Annotated[float, typer.Option(help="Family-wise error rate (Holm) over all tested pairs: the chance of any false dependency.")] = 0.01,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (pairs to test, families, deletions) and write nothing.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Test candidate pairs of unresolved models and refresh their families. In Python: Registry.resolve(); the plan: Registry.plan_resolve()."""
    with state(ctx, json_).errors() as st:
        plan = st.registry().plan_resolve(full=full, k=k, alpha=alpha)
        for w in plan.warnings:
            st.warn(w)
        if dry_run:
            d = plan.to_dict()
            st.emit(d, lambda c: _render.print_plan(c, d))
            return
        with st.reporter() as rep:
            report = plan.execute(progress=rep)
        for w in report.warnings[len(plan.warnings):]:
            st.warn(w)
        d = report.to_dict()
        st.emit(d, lambda c: c.print(
            f"resolved {d['models_resolved']} model(s): {d['pairs_tested']} pair(s) tested, "
            f"{d['edges']} edge(s), {d['families']} famil(ies) (Holm alpha {alpha})"
        ))


def _show(ctx: typer.Context, json_: bool, call) -> None:
    with state(ctx, json_).errors() as st:
        view = call(st.registry()).to_dict()
        st.emit(view, lambda c: _render.print_view(c, view))


@app.command()
def ancestry(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name or indexed path; with --add, a new path.")],
    add: Annotated[bool, typer.Option("--add", help="Index a new path and resolve only what it touches (its candidates and family).")] = False,
    json_: JsonOpt = False,
) -> None:
    """Parents of a model up to the roots, each edge with its evidence; reads only unless --add. In Python: Registry.ancestry(x, add=False)."""
    with state(ctx, json_).errors() as st:
        with st.reporter() as rep:
            view = st.registry(create=add).ancestry(model, add=add, progress=rep).to_dict()

        def render(c: Console) -> None:
            if not view["edges"]:
                c.print(f"{view['model']}: {'; '.join(view['notes']) or 'no parents'}")
                return
            for e in view["edges"]:
                c.print(_render.edge_line(e))

        st.emit(view, render)


@app.command()
def descendants(ctx: typer.Context, model: ModelArg, json_: JsonOpt = False) -> None:
    """Every model derived from MODEL. In Python: Registry.descendants(name)."""
    _show(ctx, json_, lambda reg: reg.descendants(model))


@app.command()
def family(ctx: typer.Context, model: ModelArg, json_: JsonOpt = False) -> None:
    """The family (confirmed dependence component) of MODEL. In Python: Registry.family(name)."""
    _show(ctx, json_, lambda reg: reg.family(model))


class TreeFormat(str, Enum):
    text = "text"
    json = "json"
    mermaid = "mermaid"
    dot = "dot"
    svg = "svg"
    png = "png"


@app.command()
def tree(
    ctx: typer.Context,
    of: Annotated[Optional[str], typer.Option("--of", help="Only the lineage family of this model.")] = None,
    family_of: Annotated[Optional[str], typer.Option("--family", hidden=True, help="Deprecated: use --of.")] = None,
    fmt: Annotated[TreeFormat, typer.Option("--format", help="text, json, mermaid, dot, svg or png.")] = TreeFormat.text,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="File for svg/png (default: lineage.svg / lineage.png).")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """The recovered family trees (a DAG: merges have several parents). In Python: Registry.tree(of=None).

    --format svg or png draws a picture without Graphviz."""
    st = state(ctx, json_ or fmt == TreeFormat.json)
    with st.errors():
        view = st.registry().tree(of or family_of).to_dict()
        if fmt in (TreeFormat.svg, TreeFormat.png):
            from . import _picture

            out = output or Path(f"lineage.{fmt.value}")
            if fmt == TreeFormat.svg:
                out.write_text(_picture.svg(view), encoding="utf-8")
            else:
                out.write_bytes(_picture.png(view))
            st.emit({"path": str(out), "format": fmt.value, "models": len(view["models"]), "edges": len(view["edges"])},
                    lambda c: c.print(f"wrote {_render._safe(out)} ({len(view['models'])} model(s), "
                                      f"{len(view['edges'])} edge(s))"))
            return

        def render(c: Console) -> None:
            if fmt == TreeFormat.mermaid:
                print(_render.mermaid(view))
            elif fmt == TreeFormat.dot:
                print(_render.dot(view))
            else:
                _render.print_view(c, view)

        st.emit(view, render)
