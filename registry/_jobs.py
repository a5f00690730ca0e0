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
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from ..progress import Progress, note_done
from ..serialize import Serializable
from ._models import as_utc, utc_now
from ._schema import Job, Model
from .errors import MothertreeError

if TYPE_CHECKING:
    from ._registry import Registry

__all__ = [
    "JobView",
    "JobNotFoundError",
    "JobFailedError",
    "WorkReport",
    "enqueue",
    "get_job",
    "list_jobs",
    "claim",
    "renew",
    "finish",
    "fail",
    "run_job",
    "work",
    "work_ray",
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
    report = index_hub(reg, [spec])
    r = report.results[0]
    if r.status == "failed":
        raise JobFailedError(f"hub repo {spec}: {r.error}")
    if r.status == "unsupported":
        return None, r.status
    return r.repo_id, r.status


def place(reg: "Registry", model: str | None, status: str, *, resolve: bool = True) -> dict[str, Any]:
    """Resolve the new model into the lineage graph and describe its parents."""
    out: dict[str, Any] = {"model": model, "status": status}
    if model is None:
        return out
    if resolve:
        rep = reg.resolve()
        out["pairs_tested"] = rep.pairs_tested
    view = reg.ancestry(model)
    out["parents"] = sorted({e.parent for e in view.edges if e.child == model})
    return out


@dataclass(frozen=True)
class WorkReport(Serializable):
    """What one ``work`` call did."""

    worker: str
    jobs: tuple[JobView, ...]


class _Lease:
    """Renews a held job's lease from a background thread until stopped."""

    def __init__(self, reg: "Registry", job: JobView, lease_s: float) -> None:
        self._stop = threading.Event()
        self.lost = False

        def beat() -> None:
            while not self._stop.wait(lease_s / 3):
                try:
                    if not renew(reg, job, lease_s=lease_s):
                        self.lost = True
                        return
                except Exception:  # a database hiccup: try again next beat
                    continue

        self._thread = threading.Thread(target=beat, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _message(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def work(
    reg: "Registry",
    *,
    worker: str | None = None,
    lease_s: float = 60.0,
    max_jobs: int | None = None,
    idle_exit: bool = False,
    poll_s: float = 1.0,
    stop: threading.Event | None = None,
    runner: Callable[["Registry", JobView], dict[str, Any]] = run_job,
    progress: Progress | None = None,
) -> WorkReport:
    """Claim and run jobs one at a time until ``max_jobs`` ran, ``stop`` is set, or
    (with ``idle_exit``) no job is left."""
    worker = worker or worker_name()
    done: list[JobView] = []
    stop = stop or threading.Event()
    while not stop.is_set() and (max_jobs is None or len(done) < max_jobs):
        job = claim(reg, worker, lease_s=lease_s)
        if job is None:
            if idle_exit:
                break
            stop.wait(poll_s)
            continue
        lease = _Lease(reg, job, lease_s)
        try:
            result = runner(reg, job)
        except (MothertreeError, OSError, ValueError, RuntimeError) as exc:
            done.append(_settle(reg, job, lease, error=_message(exc), progress=progress))
        else:
            done.append(_settle(reg, job, lease, result=result, progress=progress))
    return WorkReport(worker, tuple(done))


def _settle(
    reg: "Registry", job: JobView, lease: "_Lease", *, result: dict[str, Any] | None = None,
    error: str | None = None, progress: Progress | None = None,
) -> JobView:
    """End a claimed job: stop renewing its lease, record the error or the result, report it."""
    lease.stop()
    if error is not None:
        fail(reg, job, error)
    else:
        finish(reg, job, result or {})
    final = get_job(reg, job.id)
    note_done(progress, final, f"job {final.id} {final.status:7} {final.kind} {final.target}"
              + (f"  ({final.error})" if final.error else ""))
    return final


def wait_for(reg: "Registry", job_id: int, *, timeout_s: float = 60.0, poll_s: float = 0.2) -> JobView:
    """Poll until a job is done or failed (tests and scripts)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = get_job(reg, job_id)
        if job.status in ("done", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(poll_s)


# -- Ray ----------------------------------------------------------------------
class _SqlOnlyVectors:
    """Stands in for the FAISS store inside a Ray task: the task writes SQL only,
    and the driver brings the FAISS files up to date from SQL."""

    def update(self, *, add=(), remove=()) -> None:
        pass


def _index_in_task(url: str, job: dict[str, Any]) -> tuple[str | None, str]:
    """Body of the Ray task: download and fingerprint one target, commit its rows in one transaction."""
    from ._registry import Registry

    reg = Registry(url, upgrade=False)
    reg.vectors = _SqlOnlyVectors()  # type: ignore[assignment]
    try:
        return index_target(reg, job)
    finally:
        reg.close()


def _sync_vectors(reg: "Registry", model: str | None) -> None:
    """Add a model's fingerprint rows, read back from SQL, to the FAISS files (ids already there are skipped)."""
    import numpy as np

    if model is None:
        return
    with reg.session() as s:
        mid = s.scalar(select(Model.id).where(Model.name == model))
        rows = [] if mid is None else reg.vectors.vectors(s, [mid])
        add = [(r.id, r.kind, r.level, np.frombuffer(r.vector, dtype=np.float32)) for r in rows]
    reg.vectors.update(add=add)


def work_ray(
    reg: "Registry",
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    parallel: int | None = None,
    lease_s: float = 60.0,
    max_jobs: int | None = None,
    idle_exit: bool = False,
    poll_s: float = 1.0,
    stop: threading.Event | None = None,
    worker: str | None = None,
    progress: Progress | None = None,
) -> WorkReport:
    """Like :func:`work`, with each job's download, reading and fingerprinting run as a Ray task.

    The driver (this process) claims jobs and holds their leases; up to
    ``parallel`` (default: the cluster's CPUs) tasks run at once, each
    requesting one GPU when the cluster has GPUs. A task commits its model's
    rows in one transaction (PostgreSQL for a multi-machine cluster; each task
    opens its own connection) and never touches FAISS. The driver then brings
    the FAISS files up to date from SQL, places the model (``resolve``: its
    pair tests run in the driver) and marks the job done.

    Without ``address`` a local Ray is started (``num_cpus`` caps it).
    """
    import ray

    if not ray.is_initialized():
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     object_store_memory=128 * 2**20)
        else:
            ray.init(address=address, log_to_driver=False)
    resources = ray.cluster_resources()
    task = ray.remote(_index_in_task).options(num_gpus=1 if resources.get("GPU", 0) >= 1 else 0, max_retries=0)
    slots = parallel or max(1, int(resources.get("CPU", 1)))
    worker = worker or worker_name()
    stop = stop or threading.Event()
    inflight: dict[Any, tuple[JobView, _Lease]] = {}
    done: list[JobView] = []
    started = 0
    try:
        while not stop.is_set():
            while len(inflight) < slots and (max_jobs is None or started < max_jobs):
                job = claim(reg, worker, lease_s=lease_s)
                if job is None:
                    break
                ref = task.remote(reg.url, {"kind": job.kind, "target": job.target, "revision": job.revision})
                inflight[ref] = (job, _Lease(reg, job, lease_s))
                started += 1
            if not inflight:
                if idle_exit or (max_jobs is not None and started >= max_jobs):
                    break
                stop.wait(poll_s)
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=poll_s)
            for ref in ready:
                job, lease = inflight.pop(ref)
                try:
                    model, status = ray.get(ref)
                    _sync_vectors(reg, model)  # FAISS from SQL: the task wrote rows only
                    result = place(reg, model, status)
                except Exception as exc:  # a task's error arrives wrapped by Ray
                    cause = getattr(exc, "cause", None) or exc
                    done.append(_settle(reg, job, lease, error=_message(cause), progress=progress))
                else:
                    done.append(_settle(reg, job, lease, result=result, progress=progress))
    finally:
        for job, lease in inflight.values():  # interrupted: the leases lapse and the jobs are re-run
            lease.stop()
    return WorkReport(worker, tuple(done))
