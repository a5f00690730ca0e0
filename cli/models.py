"""``init``, ``index``, ``models``, ``show``, ``remove``: the model-level commands."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer
from rich.console import Console

from ._app import app
from ._options import DeviceOpt, JsonOpt, ModelArg
from ._output import safe, state
from ._render import fit_table


@app.command()
def init(
    ctx: typer.Context,
    force: Annotated[
        bool, typer.Option("--force", help="Add the registry's tables even to a database that holds other tables.")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Create the registry (or bring it to the latest schema). In Python: Registry(url)."""
    with state(ctx, json_).errors() as st:
        reg = st.registry(create=True, force=force)
        payload = {"db": reg.display_url, "schema_revision": reg.schema_revision(), "vectors": str(reg.home)}
        st.emit(payload, lambda c: c.print(f"Registry ready at {payload['db']} (schema {payload['schema_revision']})"))


@app.command()
def index(
    ctx: typer.Context,
    paths: Annotated[
        List[str],
        typer.Argument(
            metavar="PATH_OR_HUB_ID...",
            help="Model folders, folders of model folders, HF cache repos, weight files, or hub ids (org/name).",
        ),
    ],
    name: Annotated[Optional[str], typer.Option("--name", help="Registry name (one path only).")] = None,
    keep_going: Annotated[bool, typer.Option("--keep-going", help="Report a failing path and go on.")] = False,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
) -> None:
    """Index models: roles, statistics and digests in SQL. In Python: Registry.index(paths).

    Each model gets a unique name (printed); see "Names and revisions" in the README."""
    from ..registry import hub_ids

    with state(ctx, json_).errors() as st:
        hub, local = hub_ids(paths)
        if hub:  # org/name that is not a local path: the hub route
            from . import hub as _hub

            if local or name is not None:
                raise ValueError(
                    f"index takes local paths or hub ids, not both (got hub id {hub[0]}); "
                    f"run: mothertree index-hub {' '.join(hub)}"
                )
            return _hub.index_hub(ctx, hub, json_=json_)
        reg = st.registry(create=True)
        with st.reporter() as rep:
            report = reg.index(local, name=name, progress=rep, keep_going=keep_going, device=device)
        for r in report.results:
            for w in r.warnings:
                st.warn(f"{r.name}: {w}")

        def render(c: Console) -> None:
            for r in report.results:
                what = {"indexed": "new model", "revised": f"revision {r.revision}", "unchanged": "same weights"}
                c.print(
                    f"{r.status:9} {safe(r.name)}  <- {safe(r.path)}  "
                    f"({what.get(r.status, r.status)}, {r.num_tensors} tensors)"
                )
            for p, e in report.errors:
                st.stderr.print(f"[red]Error:[/red] {safe(e)}", highlight=False)

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
            cols = [("name", 9), ("architecture", 6), ("blocks", 4), ("hidden", 3), ("params", 5), ("dtype", 2),
                    ("rev", 1)]
            c.print(fit_table(c, cols, [
                [m.name, m.architecture, str(m.num_blocks or "-"), str(m.hidden_size or "-"), f"{m.num_parameters:,}",
                 m.dtype or "-", str(m.revision)]
                for m in rows
            ]))

        st.emit({"models": [m.to_dict() for m in rows]}, render)


@app.command()
def show(ctx: typer.Context, model: ModelArg, json_: JsonOpt = False) -> None:
    """One model with its tensors, roles and statistics. In Python: Registry.model(name)."""
    with state(ctx, json_).errors() as st:
        detail = st.registry().model(model)

        def render(c: Console) -> None:
            m = detail.model
            c.print(f"[bold]{safe(m.name)}[/bold]  {safe(m.model_class or m.architecture)}  revision {m.revision}")
            c.print(f"source {safe(m.source)}")
            c.print(f"format {m.file_format}  digest {detail.content_digest[:16]}")
            c.print(f"blocks {m.num_blocks}  hidden {m.hidden_size}  mlp {m.mlp_width}  vocab {m.vocab_size}")
            if m.file_format == "peft":
                c.print("kind adapter (PEFT): tensors are its effective update scale*B@A per target module")
            if m.dtype and m.dtype not in ("F64", "F32", "F16", "BF16"):
                c.print(f"quantization {m.dtype} (most common storage type of its weights)")
            if m.declared_base_models:
                c.print(f"declared base: {safe(', '.join(m.declared_base_models))}")
            cols = [("tensor", 9), ("role", 8), ("block", 6), ("shape", 7), ("dtype", 5), ("std", 4),
                    ("kurtosis", 3), ("distinct", 2)]
            c.print(fit_table(c, cols, [
                [x.name, x.role, "" if x.block is None else str(x.block), "x".join(map(str, x.shape)),
                 x.dtype, _f(x.std), _f(x.kurtosis), str(x.distinct_values)]
                for x in detail.tensors
            ]))

        st.emit(detail.to_dict(), render)


@app.command()
def remove(ctx: typer.Context, model: ModelArg, json_: JsonOpt = False) -> None:
    """Remove a model with all its rows and vectors. In Python: Registry.remove(name)."""
    with state(ctx, json_).errors() as st:
        st.registry().remove(model)
        st.emit({"removed": model}, lambda c: c.print(f"removed {safe(model)}"))


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"
