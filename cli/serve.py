"""``serve``: the HTTP API (and, by default, a local job worker) over the registry."""

from __future__ import annotations

from typing import Annotated

import typer

from ._app import app
from ._output import state


@app.command("serve")
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=0, help="Local job-worker threads in this process (0: jobs run only "
                                                     "in separate 'mothertree worker' processes).")] = 1,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds a request may take before a 504.")] = 30.0,
    lease: Annotated[float, typer.Option(min=1, help="Seconds a job lease lasts (renewed while the job runs).")] = 60.0,
) -> None:
    """HTTP API over the registry (OpenAPI at /docs, family tree page at /), hub webhook at
    /v1/webhooks/hub (secret: MOTHERTREE_WEBHOOK_SECRET). In Python: service.serve(ServiceConfig(db))."""
    from ..registry.settings import get
    from ..service import ServiceConfig
    from ..service import serve as run

    with state(ctx, False).errors() as st:
        st.info(f"mothertree serve on http://{host}:{port} (database {st.db or 'default'}, {workers} local worker(s))")
        run(ServiceConfig(db=st.db, webhook_secret=get("MOTHERTREE_WEBHOOK_SECRET"), timeout_s=timeout),
            host=host, port=port, workers=workers, lease_s=lease)
