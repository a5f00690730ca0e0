"""The HTTP service: ``mothertree serve`` runs :func:`create_app` under uvicorn.

It imports :mod:`mothertree.registry` only; the CLI command is a thin wrapper.
"""

from ._app import ServiceConfig, create_app

__all__ = ["create_app", "ServiceConfig", "serve"]


def serve(config: ServiceConfig, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          lease_s: float = 60.0) -> None:
    """Run the API with ``workers`` local job-worker threads until interrupted (Ctrl-C)."""
    import threading

    import uvicorn

    from ..registry import Registry
    from ..registry import jobs

    stop = threading.Event()
    threads = []

    def run_worker() -> None:
        with Registry(config.db) as reg:
            jobs.work(reg, lease_s=lease_s, stop=stop)

    for _ in range(workers):
        t = threading.Thread(target=run_worker, daemon=True, name="mothertree-worker")
        t.start()
        threads.append(t)
    try:
        uvicorn.run(create_app(config), host=host, port=port, log_level="warning")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
