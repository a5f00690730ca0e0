"""``candidates`` and ``reindex``: nearest-neighbour retrieval over fingerprints."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from ._app import app
from ._options import DeviceOpt, JsonOpt
from ._output import safe, state
from ._render import fit_table


@app.command()
def candidates(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name, or a path fingerprinted on the fly.")],
    k: Annotated[int, typer.Option("-k", min=1, help="Number of candidates.")] = 10,
    add: Annotated[bool, typer.Option("--add", help="Index a path before querying.")] = False,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
) -> None:
    """Candidate relatives ranked by fingerprint similarity, with layer matches. In Python: Registry.candidates(x)."""
    with state(ctx, json_).errors() as st:
        result = st.registry(create=add).candidates(model, k=k, add=add, device=device)
        for n in result.notices:
            st.warn(n)

        def render(c: Console) -> None:
            if not result.candidates:
                c.print(f"{safe(result.model)}: no candidate above similarity {result.threshold:.2f}")
                return
            cols = [("candidate", 9), ("score", 8), ("aligned", 3), ("invariant", 4),
                    (f">= {result.threshold:.2f}", 6), ("closest layers", 2)]
            rows = []
            for cand in result.candidates:
                layers = ", ".join(
                    (x.role if x.block is None else f"{x.role} {x.block}->{x.other_block}") + f" ({x.score:.2f})"
                    for x in cand.layers[:3]
                )
                rows.append([cand.name, f"{cand.score:.3f}", _f(cand.aligned_score), _f(cand.invariant_score),
                             "yes" if cand.above_threshold else "no", layers])
            c.print(f"Candidates for {safe(result.model)}:")
            c.print(fit_table(c, cols, rows))

        st.emit(result.to_dict(), render)


@app.command()
def reindex(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan, change nothing.")] = False,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
) -> None:
    """Fingerprint models that lack fingerprints and rebuild every FAISS index from SQL. In Python: Registry.plan_reindex()."""
    with state(ctx, json_).errors() as st:
        plan = st.registry().plan_reindex(device=device)
        if dry_run:
            d = plan.to_dict()
            for drift in plan.drift:
                st.warn(f"FAISS file out of step with SQL: {drift}")
            st.emit(d, lambda c: c.print(
                f"would fingerprint {len(d.get('unfingerprinted', []))} model(s) and rebuild "
                f"{len(d.get('indexes', []))} index(es)"
                + (f", repairing {len(plan.drift)} stale file(s)" if plan.drift else "")
            ))
            return
        report = plan.execute()
        for w in report.warnings:
            st.warn(w)
        d = report.to_dict()
        st.emit(d, lambda c: c.print(
            f"fingerprinted {len(d.get('fingerprinted', []))} model(s); rebuilt {len(d.get('indexes', []))} index(es)"
        ))


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
