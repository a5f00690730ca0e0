"""The loops that run jobs: one at a time in this process, or fanned out as Ray tasks.

Both claim a job from the queue (:mod:`._jobs`), hold its lease while it
runs (a background thread renews it), then settle it: done with its result,
or failed with its error, told to ``progress`` as it ends. A worker killed
mid-job stops renewing, and the job is claimed again once its lease expires.
Ray tasks only read (download, fingerprint, test pairs) and return plain
data; the driver writes every row (see :mod:`._ray`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..progress import Progress, note_done
from ..serialize import Serializable
from ._jobs import JobView, claim, fail, finish, get_job, hub_outcome, place, renew, run_job, worker_name
from .errors import MothertreeError

if TYPE_CHECKING:
    from ._hub_repo import FetchedRepo
    from ._indexing import ReadModel
    from ._ray import RayPairRunner
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
def _read_in_task(job: dict[str, Any], client: dict[str, Any], done: str | None) -> "ReadModel | FetchedRepo":
    """Body of the Ray task: download and fingerprint one job's target; it writes nothing.

    ``client`` holds the driver's hub endpoint, cache folder and token;
    ``done`` the sha of a hub repo's indexed revision, which is not fetched again.
    """
    if job["kind"] == "path":
        from ._indexing import read_model

        return read_model(job["target"])
    from ..indexer.hub import HubClient
    from ._hub_repo import RetryPolicy, fetch_repo

    return fetch_repo(HubClient(**client), job["target"], job["revision"], done=done, listed_sha=None, lite=False,
                      blocks=3, retry=RetryPolicy())


def _write_read(reg: "Registry", job: JobView, read: "ReadModel | FetchedRepo") -> tuple[str | None, str]:
    """Write what a task read: the model's rows in one transaction, then its FAISS vectors."""
    from ._hub_repo import write_fetched
    from ._indexing import ReadModel, write_model

    if isinstance(read, ReadModel):  # a path job
        r = write_model(reg, read)
        return r.name, r.status
    spec = f"{job.target}@{job.revision}" if job.revision else job.target
    return hub_outcome(write_fetched(reg, read, lite=False), spec)


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
    """Like :func:`work`, with each job's download, reading and fingerprinting, and its pair tests, run as Ray tasks.

    The driver (this process) claims jobs and holds their leases; up to
    ``parallel`` (default: the cluster's CPUs) indexing tasks run at once, each
    requesting one GPU when the cluster has GPUs. An indexing task returns
    what it read as plain data and writes nothing; the driver writes the
    model's rows in one transaction (a hub repo's with its hub fields) and
    then its vectors into the FAISS files, and places the model
    (``resolve``): its candidate pair tests fan out as Ray tasks
    (:class:`._ray.RayPairRunner`, one GPU each on a GPU cluster) and the
    driver writes their rows in one transaction, then solves the family and
    marks the job done. Tasks need the hub and the weights' files, never the database.

    Without ``address`` a local Ray is started (``num_cpus`` caps it).
    """
    import ray

    from ._ray import RayPairRunner

    task, client, slots = _ray_task(address, num_cpus)
    slots = parallel or slots
    pairs = RayPairRunner(reg.home)
    worker = worker or worker_name()
    stop = stop or threading.Event()
    inflight: dict[Any, tuple[JobView, _Lease]] = {}
    done: list[JobView] = []
    started = 0
    try:
        while not stop.is_set():
            room = slots - len(inflight) if max_jobs is None else min(slots - len(inflight), max_jobs - started)
            started += _start_tasks(reg, task, client, worker, inflight, lease_s=lease_s, room=room)
            if not inflight:
                if idle_exit or (max_jobs is not None and started >= max_jobs):
                    break
                stop.wait(poll_s)
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=poll_s)
            done.extend(_settle_task(reg, ref, *inflight.pop(ref), pairs=pairs, progress=progress) for ref in ready)
    finally:
        for job, lease in inflight.values():  # interrupted: the leases lapse and the jobs are re-run
            lease.stop()
    return WorkReport(worker, tuple(done))


def _start_tasks(
    reg: "Registry", task: Any, client: dict[str, Any], worker: str, inflight: dict[Any, tuple[JobView, _Lease]],
    *, lease_s: float, room: int,
) -> int:
    """Claim up to ``room`` jobs and start an indexing task for each (added to ``inflight``); how many started.

    Each job's lease is renewed from the moment its task starts, so a driver
    that dies lets the job be claimed again once the lease lapses.
    """
    from ._hub_repo import indexed_sha

    started = 0
    while started < room:
        job = claim(reg, worker, lease_s=lease_s)
        if job is None:
            break
        done_sha = indexed_sha(reg, job.target) if job.kind == "hub" else None
        target = {"kind": job.kind, "target": job.target, "revision": job.revision}
        inflight[task.remote(target, client, done_sha)] = (job, _Lease(reg, job, lease_s))
        started += 1
    return started


def _ray_task(address: str | None, num_cpus: int | None) -> tuple[Any, dict[str, Any], int]:
    """Ray (started locally without ``address``), the reading task, the hub client's arguments, the cluster's CPUs."""
    import ray

    from ..indexer.hub import HubClient
    from ._ray import client_args, ensure_ray, gpu_options

    ensure_ray(address, num_cpus)
    task = ray.remote(_read_in_task).options(max_retries=0, **gpu_options())
    return task, client_args(HubClient()), max(1, int(ray.cluster_resources().get("CPU", 1)))


def _settle_task(
    reg: "Registry", ref: Any, job: JobView, lease: "_Lease", *, pairs: "RayPairRunner", progress: Progress | None,
) -> JobView:
    """A finished task's job: what it read written here, the model placed (pair tests as Ray tasks), the job settled."""
    import ray

    from ._ray import unwrap

    try:
        model, status = _write_read(reg, job, ray.get(ref))
        result = place(reg, model, status, pair_runner=pairs)
    except Exception as exc:  # a task's error arrives wrapped by Ray
        return _settle(reg, job, lease, error=_message(unwrap(exc)), progress=progress)
    return _settle(reg, job, lease, result=result, progress=progress)
