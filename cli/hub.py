"""``index-hub``, ``crawl-hub``, ``index-cache``: models from the Hugging Face Hub and its cache."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..progress import Progress, ProgressEvent
from ._app import app
from ._options import JsonOpt
from ._output import State, safe, state

LiteOpt = Annotated[
    bool,
    typer.Option("--lite", help="Read safetensors headers and a few blocks by byte range instead of whole files."),
]
BlocksOpt = Annotated[int, typer.Option("--blocks", min=1, help="Blocks a --lite index reads (evenly spaced).")]
RetriesOpt = Annotated[int, typer.Option("--retries", min=1, help="Tries per repo for HTTP 429/5xx and dropped connections.")]


def _progress(st: State) -> Progress:
    """Each repo as it finishes: a failure as an error line (also under --json), the rest as info."""
    def show(event: ProgressEvent) -> None:
        r = event.item
        if r is not None and r.status == "failed":
            st.stderr.print(f"[red]Error:[/red] {safe(event.text)}", highlight=False, soft_wrap=True)
        else:
            st.info(event.text)

    return show


def _render(report, st: State):
    def render(c: Console) -> None:
        if report.results and all(r.status == "failed" for r in report.results):
            return  # each failure was one "Error:" line on stderr
        t = Table("repo", "status", "sha", "tries", "bytes", "weights")
        for r in report.results:
            t.add_row(
                r.repo_id, r.status, (r.sha or "-")[:12], str(r.attempts), f"{r.bytes_transferred:,}",
                "-" if r.file_size is None else f"{r.file_size:,}",
            )
        if report.results:
            c.print(t)
        counts = ", ".join(f"{n} {k}" for k, n in report.counts.items()) or "nothing to do"
        c.print(counts + ("" if report.complete else " (listing cut by --limit; the watermark stays)"))

    return render


@app.command("index-hub")
def index_hub(
    ctx: typer.Context,
    repos: Annotated[List[str], typer.Argument(help="REPO_ID or REPO_ID@REVISION (branch, tag or sha).")],
    lite: LiteOpt = False,
    blocks: BlocksOpt = 3,
    retries: RetriesOpt = 5,
    json_: JsonOpt = False,
) -> None:
    """Fetch only what indexing needs from the hub and index it. In Python: index_hub(reg, repos)."""
    from ..registry import RetryPolicy
    from ..registry import index_hub as run

    with state(ctx, json_).errors() as st:
        report = run(st.registry(create=True), repos, lite=lite, blocks=blocks, retry=RetryPolicy(max_attempts=retries),
                     progress=_progress(st))
        st.emit(report.to_dict(), _render(report, st))
        if report.failed:
            raise typer.Exit(1)


def _since(value: Optional[str]) -> Optional[datetime]:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since expects an ISO date such as 2026-01-31 or 2026-01-31T12:00:00Z, got {value!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


@app.command("crawl-hub")
def crawl_hub(
    ctx: typer.Context,
    author: Annotated[Optional[str], typer.Option(help="Only this user or organisation.")] = None,
    search: Annotated[Optional[str], typer.Option(help="Only repo ids containing this text.")] = None,
    filter_: Annotated[Optional[str], typer.Option("--filter", help="Only models with this hub tag.")] = None,
    since: Annotated[Optional[str], typer.Option(help="Only repos modified since (ISO date); default: the last crawl.")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="List at most this many repos.")] = None,
    lite: LiteOpt = False,
    blocks: BlocksOpt = 3,
    retries: RetriesOpt = 5,
    ray: Annotated[bool, typer.Option("--ray", help="Download and fingerprint as Ray tasks; rows are written here.")] = False,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster for --ray (default: start a local Ray).")] = None,
    num_cpus: Annotated[Optional[int], typer.Option("--num-cpus", min=1, help="CPUs of a local Ray (default: all).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Index what a hub query lists, skipping unchanged repos; safe to interrupt and rerun.
    In Python: crawl_hub(reg, author=..., search=..., fan_out=RayFanOut())."""
    from ..registry import RayFanOut, RetryPolicy
    from ..registry import crawl_hub as run

    if (ray_address is not None or num_cpus is not None) and not ray:
        raise typer.BadParameter("--ray-address and --num-cpus need --ray")
    with state(ctx, json_).errors() as st:
        report = run(
            st.registry(create=True), author=author, search=search, filter=filter_, since=_since(since), limit=limit,
            lite=lite, blocks=blocks, retry=RetryPolicy(max_attempts=retries), progress=_progress(st),
            fan_out=RayFanOut(ray_address, num_cpus=num_cpus) if ray else None,
        )
        st.emit(report.to_dict(), _render(report, st))


@app.command("index-cache")
def index_cache(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Index every model in the local Hugging Face cache, with no network. In Python: index_cache(reg)."""
    from ..registry import index_cache as run

    with state(ctx, json_).errors() as st:
        report = run(st.registry(create=True), progress=_progress(st))
        st.emit(report.to_dict(), _render(report, st))
