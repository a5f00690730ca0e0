"""The loops that run jobs: one at a time in this process, or fanned out as Ray tasks.

Both claim a job from the queue (:mod:`._jobs`), hold its lease while it
runs (a background thread renews it), then settle it: done with its result,
or failed with its error, told to ``progress`` as it ends. A worker killed
mid-job stops renewing, and the job is claimed again once its lease expires.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import select

from ..progress import Progress, note_done
from ..serialize import Serializable
from ._jobs import JobView, claim, fail, finish, get_job, index_target, place, renew, run_job, worker_name
from ._schema import Model
from .errors import MothertreeError

if TYPE_CHECKING:
    from ._registry import Registry

__all__ = ["WorkReport", "work", "work_ray"]


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

    task, slots = _ray_task(address, num_cpus)
    slots = parallel or slots
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
            done.extend(_settle_task(reg, ref, *inflight.pop(ref), progress=progress) for ref in ready)
    finally:
        for job, lease in inflight.values():  # interrupted: the leases lapse and the jobs are re-run
            lease.stop()
    return WorkReport(worker, tuple(done))


def _ray_task(address: str | None, num_cpus: int | None) -> tuple[Any, int]:
    """Ray (started locally without ``address``) and the indexing task; with the cluster's CPUs."""
    import ray

    if not ray.is_initialized():
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     object_store_memory=128 * 2**20)
        else:
            ray.init(address=address, log_to_driver=False)
    resources = ray.cluster_resources()
    task = ray.remote(_index_in_task).options(num_gpus=1 if resources.get("GPU", 0) >= 1 else 0, max_retries=0)
    return task, max(1, int(resources.get("CPU", 1)))


def _settle_task(reg: "Registry", ref: Any, job: JobView, lease: "_Lease", *, progress: Progress | None) -> JobView:
    """A finished task's job: its vectors into FAISS from SQL, the model placed, the job settled."""
    import ray

    try:
        model, status = ray.get(ref)
        _sync_vectors(reg, model)  # FAISS from SQL: the task wrote rows only
        result = place(reg, model, status)
    except Exception as exc:  # a task's error arrives wrapped by Ray
        cause = getattr(exc, "cause", None) or exc
        return _settle(reg, job, lease, error=_message(cause), progress=progress)
    return _settle(reg, job, lease, result=result, progress=progress)
