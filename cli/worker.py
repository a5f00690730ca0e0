"""``worker``: run queued jobs (index + place), locally or fanned out on a Ray cluster."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..progress import ProgressEvent
from ._app import app
from ._options import JsonOpt
from ._output import state


@app.command("worker")
def worker(
    ctx: typer.Context,
    address: Annotated[Optional[str], typer.Argument(help="Ray cluster address for --ray (default: start a local Ray).")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="Run downloads, fingerprinting and pair tests as Ray tasks.")] = False,
    lease: Annotated[float, typer.Option(min=1, help="Seconds a job lease lasts (renewed while the job runs).")] = 60.0,
    max_jobs: Annotated[Optional[int], typer.Option("--max-jobs", min=1, help="Stop after this many jobs.")] = None,
    idle_exit: Annotated[bool, typer.Option("--idle-exit", help="Stop when no job is queued.")] = False,
    poll: Annotated[float, typer.Option(min=0.05, help="Seconds between polls of an empty queue.")] = 1.0,
    num_cpus: Annotated[Optional[int], typer.Option("--num-cpus", min=1, help="CPUs of a local Ray (default: all).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Claim queued jobs and index and place their models until stopped (Ctrl-C).
    In Python: registry.jobs.work(reg) or work_ray(reg, address)."""
    from ..registry import jobs

    if address is not None and not ray:
        raise typer.BadParameter("an ADDRESS needs --ray")
    with state(ctx, json_).errors() as st:
        def show(event: ProgressEvent) -> None:
            st.info(event.text)

        try:
            if ray:
                report = jobs.work_ray(st.registry(), address=address, num_cpus=num_cpus, lease_s=lease,
                                       max_jobs=max_jobs, idle_exit=idle_exit, poll_s=poll, progress=show)
            else:
                report = jobs.work(st.registry(), lease_s=lease, max_jobs=max_jobs, idle_exit=idle_exit,
                                   poll_s=poll, progress=show)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        d = report.to_dict()
        st.emit(d, lambda c: c.print(f"{report.worker}: {len(report.jobs)} job(s)"))
