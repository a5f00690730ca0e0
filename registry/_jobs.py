"""Durable jobs in SQL: what the service queues and ``mothertree worker`` runs.

A job indexes one local path or one hub revision and places it in the lineage
graph (``resolve``). Its row moves ``queued`` -> ``running`` -> ``done`` or
``failed``. Claiming is one ``UPDATE ... WHERE id = (SELECT ... LIMIT 1)``
statement: on PostgreSQL the inner select takes ``FOR UPDATE SKIP LOCKED``, so
concurrent workers skip each other's rows; on SQLite the statement itself is
the single writer (the database lock admits one writer, and the repeated
claimable condition in the outer ``WHERE`` makes a lost race update nothing).

A claimed job carries a lease that the worker renews while it works. A worker
that dies (``kill -9``, a lost machine) stops renewing; once the lease has
expired the job is claimable again. ``attempts`` counts claims: a job that
has used ``max_attempts`` (a poison job, or one that kills its workers) stops
as ``failed`` with its last error kept. The work itself is idempotent: the
registry skips weights whose content digest is stored and hub revisions whose
sha is indexed, so a job re-run after a crash adds no duplicate rows or vectors.

This module is the queue and the work of one job; the loops that claim and
run jobs (locally, or as Ray tasks) are :mod:`._job_workers`, and callers
import both through :mod:`.jobs`.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from ..serialize import Serializable
from ._models import as_utc, utc_now
from ._schema import Job
from .errors import MothertreeError

if TYPE_CHECKING:
    from ._hub_repo import HubIndexResult
    from ._registry import Registry
    from ._resolve import PairRunner

__all__ = [
    "KINDS",
    "STATUSES",
    "JobView",
    "JobNotFoundError",
    "JobFailedError",
    "enqueue",
    "get_job",
    "list_jobs",
    "claim",
    "renew",
    "finish",
    "fail",
    "run_job",
    "index_target",
    "hub_outcome",
    "place",
    "wait_for",
    "worker_name",
]

KINDS = ("path", "hub")
STATUSES = ("queued", "running", "done", "failed")


class JobNotFoundError(MothertreeError, LookupError):
    """A job id that is not in the jobs table."""

    def __init__(self, job_id: int, db: str | None = None) -> None:
        self.job_id = job_id
        where = f" at {db}" if db else ""
        super().__init__(f"Job {job_id} is not in the registry{where}. List jobs with: GET /v1/jobs")


class JobFailedError(MothertreeError, RuntimeError):
    """The work of a job failed (the job is retried until its attempts run out)."""


def worker_name() -> str:
    """``host:pid:random``: unique per worker process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class JobView(Serializable):
    """One job as stored."""

    id: int
    kind: str
    target: str
    revision: str | None
    status: str
    attempts: int
    max_attempts: int
    error: str | None
    result: dict[str, Any] | None
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_expires_at: datetime | None

    @classmethod
    def from_row(cls, j: Job) -> "JobView":
        return cls(
            j.id, j.kind, j.target, j.revision, j.status, j.attempts, j.max_attempts, j.error, j.result,
            j.worker, as_utc(j.created_at), as_utc(j.started_at), as_utc(j.finished_at), as_utc(j.lease_expires_at),
        )


def enqueue(
    reg: "Registry",
    kind: str,
    target: str,
    *,
    revision: str | None = None,
    max_attempts: int = 3,
) -> tuple[JobView, bool]:
    """Queue a job; returns ``(job, created)``.

    ``kind`` is ``"path"`` (a local model folder or file) or ``"hub"`` (a repo
    id, with ``revision`` a commit sha or branch). A hub job with a revision is
    idempotent: the same ``repo@revision`` queued twice is one job, and the
    second call returns it with ``created`` False.
    """
    if kind not in KINDS:
        raise ValueError(f"job kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not target or not target.strip():
        raise ValueError(f"a {kind} job needs a non-empty target")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    if kind == "path":
        target = str(Path(target).expanduser().resolve())
        if not Path(target).exists():
            raise FileNotFoundError(f"{target}: no such model folder or file; give a path the worker can read")
    key = f"hub:{target}@{revision}" if kind == "hub" and revision else None
    if key is not None:
        found = _by_key(reg, key)
        if found is not None:
            return found, False
    try:
        with reg.session() as s:
            job = Job(kind=kind, target=target, revision=revision, dedup_key=key, status="queued", attempts=0,
                      max_attempts=max_attempts, created_at=utc_now())
            s.add(job)
            s.flush()
            view = JobView.from_row(job)
    except IntegrityError:  # the same repo@sha queued concurrently: that row is the job
        found = _by_key(reg, key) if key is not None else None
        if found is None:
            raise
        return found, False
    return view, True


def _by_key(reg: "Registry", key: str) -> JobView | None:
    with reg.session() as s:
        j = s.scalar(select(Job).where(Job.dedup_key == key))
        return JobView.from_row(j) if j is not None else None


def get_job(reg: "Registry", job_id: int) -> JobView:
    with reg.session() as s:
        j = s.get(Job, job_id)
        if j is None:
            raise JobNotFoundError(job_id, reg.display_url)
        return JobView.from_row(j)


def list_jobs(reg: "Registry", *, status: str | None = None, limit: int = 100) -> tuple[JobView, ...]:
    """Newest first."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    with reg.session() as s:
        q = select(Job).order_by(Job.id.desc()).limit(limit)
        if status is not None:
            q = q.where(Job.status == status)
        return tuple(JobView.from_row(j) for j in s.scalars(q))


def _claimable(now: datetime):
    return or_(Job.status == "queued", and_(Job.status == "running", Job.lease_expires_at < now))


def claim(reg: "Registry", worker: str, *, lease_s: float = 60.0) -> JobView | None:
    """Take the oldest claimable job for ``worker``, or ``None`` when there is none.

    Running jobs whose lease expired after their last allowed attempt are
    marked ``failed`` first (their worker died on every try).
    """
    now = utc_now()
    postgres = reg.engine.dialect.name == "postgresql"
    with reg.session() as s:
        s.execute(
            update(Job)
            .where(Job.status == "running", Job.lease_expires_at < now, Job.attempts >= Job.max_attempts)
            .values(
                status="failed", finished_at=now, lease_expires_at=None,
                error=func.coalesce(Job.error, "the worker stopped (lease expired) on every attempt"),
            )
        )
        pick = select(Job.id).where(_claimable(now)).order_by(Job.id).limit(1)
        if postgres:
            pick = pick.with_for_update(skip_locked=True)
        jid = s.scalar(
            update(Job)
            .where(Job.id == pick.scalar_subquery(), _claimable(now))
            .values(status="running", worker=worker, attempts=Job.attempts + 1, started_at=now,
                    lease_expires_at=now + timedelta(seconds=lease_s))
            .returning(Job.id)
        )
        if jid is None:
            return None
    return get_job(reg, jid)


def _mine(job: JobView):
    return and_(Job.id == job.id, Job.worker == job.worker, Job.attempts == job.attempts, Job.status == "running")


def renew(reg: "Registry", job: JobView, *, lease_s: float = 60.0) -> bool:
    """Extend the lease of a job this worker holds; False when it was lost."""
    with reg.session() as s:
        res = s.execute(update(Job).where(_mine(job)).values(lease_expires_at=utc_now() + timedelta(seconds=lease_s)))
        return res.rowcount == 1


def finish(reg: "Registry", job: JobView, result: dict[str, Any]) -> bool:
    """Mark a held job done with its result; False when the lease was lost meanwhile."""
    with reg.session() as s:
        res = s.execute(
            update(Job).where(_mine(job)).values(status="done", result=result, error=None, finished_at=utc_now(),
                                                 lease_expires_at=None)
        )
        return res.rowcount == 1


def fail(reg: "Registry", job: JobView, error: str) -> bool:
    """Record a failed attempt: back to ``queued``, or ``failed`` after ``max_attempts``."""
    final = job.attempts >= job.max_attempts
    with reg.session() as s:
        res = s.execute(
            update(Job).where(_mine(job)).values(
                status="failed" if final else "queued", error=error[:4000], lease_expires_at=None,
                finished_at=utc_now() if final else None,
            )
        )
        return res.rowcount == 1


# -- the work ---------------------------------------------------------------
def run_job(reg: "Registry", job: JobView, *, resolve: bool = True) -> dict[str, Any]:
    """Index a job's target and place it; returns the job's result.

    Raises :class:`JobFailedError` (or the registry's own errors) on failure.
    """
    model, status = index_target(reg, job)
    return place(reg, model, status, resolve=resolve)


def index_target(reg: "Registry", job: JobView | dict[str, Any]) -> tuple[str | None, str]:
    """Index a job's target only: ``(model name or None, status)``."""
    kind = job["kind"] if isinstance(job, dict) else job.kind
    target = job["target"] if isinstance(job, dict) else job.target
    revision = job["revision"] if isinstance(job, dict) else job.revision
    if kind == "path":
        r = reg.index_one(target)
        return r.name, r.status
    from ._hub import index_hub

    spec = f"{target}@{revision}" if revision else target
    return hub_outcome(index_hub(reg, [spec]).results[0], spec)


def hub_outcome(r: "HubIndexResult", spec: str) -> tuple[str | None, str]:
    """A hub job's ``(model name or None, status)``; a failed repo fails the job."""
    if r.status == "failed":
        raise JobFailedError(f"hub repo {spec}: {r.error}")
    if r.status == "unsupported":
        return None, r.status
    return r.repo_id, r.status


def place(
    reg: "Registry", model: str | None, status: str, *, resolve: bool = True, pair_runner: "PairRunner | None" = None,
) -> dict[str, Any]:
    """Resolve the new model into the lineage graph and describe its parents.

    ``pair_runner`` runs the candidate pair tests elsewhere (Ray tasks); their rows are written here.
    """
    out: dict[str, Any] = {"model": model, "status": status}
    if model is None:
        return out
    if resolve:
        rep = reg.resolve(pair_runner=pair_runner)
        out["pairs_tested"] = rep.pairs_tested
    view = reg.ancestry(model)
    out["parents"] = sorted({e.parent for e in view.edges if e.child == model})
    return out


def wait_for(reg: "Registry", job_id: int, *, timeout_s: float = 60.0, poll_s: float = 0.2) -> JobView:
    """Poll until a job is done or failed (tests and scripts)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = get_job(reg, job_id)
        if job.status in ("done", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(poll_s)
