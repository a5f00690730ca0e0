"""The FastAPI application: read endpoints over :class:`Registry`, jobs and the hub webhook.

Every read endpoint calls the same library function as the matching CLI
command and never writes: names only (a path is never indexed from here),
and SQL goes through :meth:`Registry.query`, the guard ``mothertree sql`` uses.
Blocking library calls run in worker threads under a per-request timeout.
Errors are one JSON shape, ``{"ok": false, "error", "errors", "status", "type"}``;
nothing of a traceback reaches a client.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import anyio
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from sqlalchemy.exc import DBAPIError, OperationalError

from ..registry import Registry, jobs, reports
from ..registry.errors import MothertreeError, ReadOnlyQueryError, RegistryError
from . import _render

__all__ = ["create_app", "ServiceConfig"]

log = logging.getLogger("mothertree.service")


@dataclass
class ServiceConfig:
    """What ``mothertree serve`` was started with."""

    db: str | None = None
    webhook_secret: str | None = None
    timeout_s: float = 30.0
    max_rows: int = 10_000


class _Unavailable(Exception):
    """The database cannot be reached (503)."""


def _clean(obj: Any) -> Any:
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _error(status: int, msg: str, kind: str, errors: list[Any] | None = None) -> JSONResponse:
    return JSONResponse(
        {"ok": False, "error": msg, "errors": errors or [msg], "status": status, "type": kind}, status_code=status
    )


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, ReadOnlyQueryError):
        return 403
    if isinstance(exc, LookupError):
        return 404
    if isinstance(exc, (ValueError, TypeError, FileNotFoundError)):
        return 422
    if isinstance(exc, RegistryError):
        return 409
    return 400


@dataclass
class _State:
    config: ServiceConfig
    _registry: Registry | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Serialises the calls that share in-memory caches (FAISS, loaded weights).
    heavy: threading.Lock = field(default_factory=threading.Lock)

    def registry(self) -> Registry:
        with self.lock:
            if self._registry is None:
                try:
                    self._registry = Registry(self.config.db)
                except RegistryError as exc:
                    raise _Unavailable(str(exc)) from None
                except OperationalError as exc:
                    raise _Unavailable(
                        f"database unreachable: {str(exc.orig).splitlines()[0]}; check the URL given with --db or "
                        "MOTHERTREE_DB"
                    ) from None
            return self._registry

    async def call(self, fn: Callable[[Registry], Any], *, heavy: bool = False) -> Any:
        """Run a blocking library call in a thread, under the request timeout."""

        def run() -> Any:
            reg = self.registry()
            if heavy:
                with self.heavy:
                    return fn(reg)
            return fn(reg)

        with anyio.fail_after(self.config.timeout_s):
            return await anyio.to_thread.run_sync(run, abandon_on_cancel=True)

    def close(self) -> None:
        with self.lock:
            if self._registry is not None:
                self._registry.close()
                self._registry = None


def create_app(config: ServiceConfig | None = None) -> FastAPI:
    """The mothertree HTTP API (OpenAPI at ``/docs``)."""
    config = config or ServiceConfig()
    state = _State(config)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        state.close()

    app = FastAPI(title="mothertree", version="1", description=__doc__.split("\n\n")[0], lifespan=lifespan)
    app.state.mothertree = state
    _add_error_handlers(app, config)
    # Order matters within a router only: ``/v1/models/{name:path}`` comes after its sub-resources.
    for router in (_model_routes(state), _query_routes(state), _job_routes(state), _page_routes(state)):
        app.include_router(router)
    return app


def _add_error_handlers(app: FastAPI, config: ServiceConfig) -> None:
    """Map every exception to the one JSON error shape, so no traceback reaches a client."""

    @app.exception_handler(MothertreeError)
    async def _mt(_req: Request, exc: MothertreeError) -> JSONResponse:
        return _error(_status_of(exc), str(exc), type(exc).__name__)

    @app.exception_handler(LookupError)
    async def _lookup(_req: Request, exc: LookupError) -> JSONResponse:
        return _error(404, str(exc).strip("'\""), type(exc).__name__)

    @app.exception_handler(ValueError)
    async def _value(_req: Request, exc: ValueError) -> JSONResponse:
        return _error(422, str(exc), type(exc).__name__)

    @app.exception_handler(FileNotFoundError)
    async def _nofile(_req: Request, exc: FileNotFoundError) -> JSONResponse:
        return _error(422, str(exc), type(exc).__name__)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errs = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return _error(422, errs[0] if errs else "invalid request", "RequestValidationError", errs)

    @app.exception_handler(_Unavailable)
    async def _down(_req: Request, exc: _Unavailable) -> JSONResponse:
        return _error(503, str(exc), "DatabaseUnavailable")

    @app.exception_handler(OperationalError)
    async def _op(_req: Request, exc: OperationalError) -> JSONResponse:
        first = str(exc.orig).splitlines()[0] if exc.orig is not None else "database error"
        return _error(503, f"database unavailable: {first}", "DatabaseUnavailable")

    @app.exception_handler(TimeoutError)
    async def _timeout(_req: Request, exc: TimeoutError) -> JSONResponse:
        return _error(504, f"the request took longer than {config.timeout_s:g} s", "Timeout")

    @app.exception_handler(Exception)
    async def _any(_req: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return _error(503, "database connection lost", "DatabaseUnavailable")
        log.exception("unhandled error")
        return _error(500, "internal error; the server log has the details", "InternalError")


def _known(reg: Registry, name: str) -> None:
    """Refuse anything but a registry name before heavy work (a path is never indexed from here)."""
    reg.model(name)  # raises ModelNotFoundError


def _model_routes(state: _State) -> APIRouter:
    """Health and the per-model reads: the same library calls as ``mothertree models``, ``ancestry``, ..."""
    router = APIRouter()
    call = state.call

    @router.get("/v1/health")
    async def health() -> dict[str, Any]:
        url = await call(lambda reg: reg.display_url)
        return {"ok": True, "db": url}

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        rows = await call(lambda reg: reg.models())
        return _clean({"models": [m.to_dict() for m in rows]})

    @router.get("/v1/models/{name:path}/candidates")
    async def candidates(name: str, k: int = Query(10, ge=1, le=1000)) -> dict[str, Any]:
        def run(reg: Registry):
            _known(reg, name)
            return reg.candidates(name, k=k).to_dict()

        return _clean(await call(run, heavy=True))

    @router.get("/v1/models/{name:path}/ancestry")
    async def ancestry(name: str) -> dict[str, Any]:
        return _clean(await call(lambda reg: reg.ancestry(name).to_dict()))

    @router.get("/v1/models/{name:path}/descendants")
    async def descendants(name: str) -> dict[str, Any]:
        return _clean(await call(lambda reg: reg.descendants(name).to_dict()))

    @router.get("/v1/models/{name:path}/family")
    async def family(name: str) -> dict[str, Any]:
        return _clean(await call(lambda reg: reg.family(name).to_dict()))

    @router.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        return _clean(await call(lambda reg: reg.model(name).to_dict()))

    return router


def _query_routes(state: _State) -> APIRouter:
    """The registry-wide reads: the tree, a pair test, named reports and read-only SQL."""
    router = APIRouter()
    call = state.call

    @router.get("/v1/tree", response_model=None)
    async def tree(family: str | None = None, format: str = Query("json", pattern="^(json|mermaid|dot)$")):
        view = await call(lambda reg: reg.tree(family).to_dict())
        if format == "mermaid":
            return PlainTextResponse(_render.mermaid(view) + "\n")
        if format == "dot":
            return PlainTextResponse(_render.dot(view) + "\n")
        return _clean(view)

    @router.get("/v1/test")
    async def pair_test(
        a: str, b: str, method: str = Query("auto", pattern="^(auto|exact|match|permtest)$"),
        alpha: float = Query(0.01, gt=0, lt=1),
    ) -> dict[str, Any]:
        def run(reg: Registry):
            _known(reg, a)
            _known(reg, b)
            return reg.test(a, b, method=method, alpha=alpha).to_dict()

        return _clean(await call(run, heavy=True))

    @router.get("/v1/reports")
    async def report_list() -> dict[str, Any]:
        return {"reports": [r.to_dict() for r in reports.REPORTS]}

    @router.get("/v1/reports/{name}")
    async def report(name: str, request: Request) -> dict[str, Any]:
        params = dict(request.query_params)
        return _clean(await call(lambda reg: reg.report(name, params).to_dict()))

    @router.get("/v1/sql")
    async def sql(q: str = Query(..., min_length=1), max_rows: int = Query(1000, ge=1)) -> dict[str, Any]:
        rows = min(max_rows, state.config.max_rows)
        return _clean(await call(lambda reg: reg.query(q, max_rows=rows).to_dict()))

    return router


def _job_routes(state: _State) -> APIRouter:
    """The only writes: queueing an index job, by hand or from the hub webhook, and reading jobs back."""
    router = APIRouter()
    call = state.call

    @router.post("/v1/jobs", status_code=202)
    async def post_job(request: Request) -> JSONResponse:
        kind, target, revision = _job_request(await _json_body(request))
        job, created = await call(lambda reg: jobs.enqueue(reg, kind, target, revision=revision))
        return JSONResponse({"ok": True, "created": created, "job": job.to_dict()}, status_code=202 if created else 200)

    @router.get("/v1/jobs")
    async def job_list(status: str | None = None, limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        rows = await call(lambda reg: jobs.list_jobs(reg, status=status, limit=limit))
        return {"jobs": [j.to_dict() for j in rows]}

    @router.get("/v1/jobs/{job_id}")
    async def job(job_id: int) -> dict[str, Any]:
        return (await call(lambda reg: jobs.get_job(reg, job_id))).to_dict()

    @router.post("/v1/webhooks/hub")
    async def webhook(request: Request) -> JSONResponse:
        given = request.headers.get("x-webhook-secret") or request.query_params.get("secret") or ""
        refused = _refuse_webhook(given, state.config.webhook_secret)
        if refused is not None:
            return refused
        event = _hub_event(await _json_body(request))
        if isinstance(event, JSONResponse):
            return event
        name, sha = event
        job, created = await call(lambda reg: jobs.enqueue(reg, "hub", name, revision=sha))
        return JSONResponse({"ok": True, "queued": created, "job": job.to_dict()}, status_code=202 if created else 200)

    return router


def _job_request(body: Any) -> tuple[str, str, str | None]:
    """``(kind, target, revision)`` of a ``POST /v1/jobs`` body, checked before anything is queued."""
    if not isinstance(body, dict) or ("path" in body) == ("repo" in body):
        raise ValueError('POST /v1/jobs expects {"path": "..."} or {"repo": "org/name", "revision": "sha"}')
    kind, target = ("path", body["path"]) if "path" in body else ("hub", body["repo"])
    revision = body.get("revision")
    if not isinstance(target, str) or (revision is not None and not isinstance(revision, str)):
        raise ValueError("path, repo and revision must be strings")
    return kind, target, revision


def _refuse_webhook(given: str, secret: str | None) -> JSONResponse | None:
    """The 401 for a server without a secret or a caller with the wrong one; ``None`` lets the call through.

    The comparison is constant-time so that the secret cannot be guessed byte by byte.
    """
    if not secret:
        return _error(401, "this server has no webhook secret; start it with MOTHERTREE_WEBHOOK_SECRET set",
                      "Unauthorized")
    if not hmac.compare_digest(given.encode(), secret.encode()):
        return _error(401, "wrong or missing X-Webhook-Secret", "Unauthorized")
    return None


def _hub_event(payload: Any) -> tuple[str, str] | JSONResponse:
    """The ``(repo, sha)`` a hub webhook asks to index, or the 200 that says why it is ignored.

    Only a model repo's content update or creation queues a job; other events are
    acknowledged (the hub retries what is not) and named in ``ignored``.
    """
    event = payload.get("event") if isinstance(payload, dict) else None
    repo = payload.get("repo") if isinstance(payload, dict) else None
    if not isinstance(event, dict) or not isinstance(repo, dict):
        raise ValueError("a hub webhook payload has 'event' and 'repo' objects")
    scope, action = event.get("scope"), event.get("action")
    if repo.get("type") != "model":
        return JSONResponse({"ok": True, "queued": False, "ignored": f"repo type {repo.get('type')!r}"})
    if scope != "repo.content" or action not in ("update", "create"):
        return JSONResponse({"ok": True, "queued": False, "ignored": f"event {scope}/{action}"})
    name, sha = repo.get("name"), repo.get("headSha")
    if not isinstance(name, str) or not name or not isinstance(sha, str) or not sha:
        raise ValueError("repo.name and repo.headSha must be non-empty strings")
    return name, sha


def _page_routes(state: _State) -> APIRouter:
    """The one HTML page: a model's family and ancestry, for a browser."""
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse)
    async def index(model: str | None = None) -> HTMLResponse:
        def run(reg: Registry):
            names = [m.name for m in reg.models()]
            chosen = model or _first_with_family(reg, names)
            if chosen is None:
                return _render.page(names, None, None, None)
            try:
                fam = reg.family(chosen).to_dict()
                anc = reg.ancestry(chosen).to_dict()
            except LookupError as exc:
                return _render.page(names, None, None, None, error=str(exc))
            return _render.page(names, chosen, fam, anc)

        return HTMLResponse(await state.call(run))

    return router


def _first_with_family(reg: Registry, names: list[str]) -> str | None:
    """The page's default model: the root of the first family with an edge."""
    view = reg.tree(None)
    if view.edges:
        return sorted(view.edges, key=lambda e: (e.parent, e.child))[0].child
    return names[0] if names else None


async def _json_body(request: Request) -> Any:
    import json

    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except ValueError:
        raise ValueError("the request body is not JSON") from None
