"""``init``, ``index``, ``models``, ``show``, ``remove``: the model-level commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from ._app import app
from ._options import DeviceOpt, JsonOpt, ModelArg
from ._output import state


@app.command()
def init(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Create the registry (or bring it to the latest schema). In Python: Registry(url)."""
    with state(ctx, json_).errors() as st:
        reg = st.registry()
        from ..registry._db import current_revision

        payload = {"db": reg.display_url, "schema_revision": current_revision(reg.engine), "vectors": str(reg.home)}
        st.emit(payload, lambda c: c.print(f"Registry ready at {payload['db']} (schema {payload['schema_revision']})"))


@app.command()
def index(
    ctx: typer.Context,
    paths: Annotated[List[Path], typer.Argument(help="Model folders, HF cache repos or weight files.")],
    name: Annotated[Optional[str], typer.Option("--name", help="Registry name (one path only).")] = None,
    keep_going: Annotated[bool, typer.Option("--keep-going", help="Report a failing path and go on.")] = False,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
) -> None:
    """Index models: roles, statistics and digests in SQL. In Python: Registry.index(paths)."""
    with state(ctx, json_).errors() as st:
        reg = st.registry()
        with Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            console=st.stderr, disable=not st.show_progress, transient=True,
        ) as bar:
            tasks: dict[str, int] = {}

            def progress(label: str, done: int, total: int) -> None:
                if label not in tasks:
                    tasks[label] = bar.add_task(label, total=total)
                bar.update(tasks[label], completed=done)

            report = reg.index([str(p) for p in paths], name=name, progress=progress, keep_going=keep_going, device=device)
        for r in report.results:
            for w in r.warnings:
                st.warn(f"{r.name}: {w}")

        def render(c: Console) -> None:
            for r in report.results:
                c.print(f"{r.status:9} {r.name} (revision {r.revision}, {r.num_tensors} tensors)")
            for p, e in report.errors:
                st.stderr.print(f"[red]Error:[/red] {e}", highlight=False)

        st.emit(report.to_dict(), render)
        if report.errors:
            raise typer.Exit(1)


@app.command()
def models(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """List indexed models. In Python: Registry.models()."""
    with state(ctx, json_).errors() as st:
        rows = st.registry().models()

        def render(c: Console) -> None:
            if not rows:
                c.print("No models indexed yet. Run: mothertree index PATH")
                return
            t = Table("name", "family", "architecture", "blocks", "hidden", "params", "dtype", "rev")
            for m in rows:
                t.add_row(
                    m.name, m.family, m.architecture or "-", str(m.num_blocks or "-"),
                    str(m.hidden_size or "-"), f"{m.num_parameters:,}", m.dtype or "-", str(m.revision),
                )
            c.print(t)

        st.emit({"models": [m.to_dict() for m in rows]}, render)


@app.command()
def show(ctx: typer.Context, model: ModelArg, json_: JsonOpt = False) -> None:
    """One model with its tensors, roles and statistics. In Python: Registry.model(name)."""
    with state(ctx, json_).errors() as st:
        detail = st.registry().model(model)

        def render(c: Console) -> None:
            m = detail.model
            c.print(f"[bold]{m.name}[/bold]  {m.architecture or m.family}  revision {m.revision}")
            c.print(f"source {m.source}  format {m.file_format}  digest {detail.content_digest[:16]}")
            c.print(f"blocks {m.num_blocks}  hidden {m.hidden_size}  mlp {m.mlp_width}  vocab {m.vocab_size}")
            if m.file_format == "peft":
                c.print("kind adapter (PEFT): tensors are its effective update scale*B@A per target module")
            if m.dtype and m.dtype not in ("F64", "F32", "F16", "BF16"):
                c.print(f"quantization {m.dtype} (most common storage type of its weights)")
            if m.declared_base_models:
                c.print(f"declared base: {', '.join(m.declared_base_models)}")
            t = Table("name", "role", "block", "shape", "dtype", "std", "kurtosis", "distinct")
            for x in detail.tensors:
                t.add_row(
                    x.name, x.role, "" if x.block is None else str(x.block), "x".join(map(str, x.shape)),
                    x.dtype, _f(x.std), _f(x.kurtosis), str(x.distinct_values),
                )
            c.print(t)

        st.emit(detail.to_dict(), render)


@app.command()
def remove(ctx: typer.Context, model: ModelArg, json_: JsonOpt = False) -> None:
    """Remove a model with all its rows and vectors. In Python: Registry.remove(name)."""
    with state(ctx, json_).errors() as st:
        st.registry().remove(model)
        st.emit({"removed": model}, lambda c: c.print(f"removed {model}"))


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"
