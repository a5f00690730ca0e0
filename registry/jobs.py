"""Durable jobs: the queue the service fills and the workers that run it (what callers import).

The queue, and the work of one job (index its target, place it), are
:mod:`._jobs`; the loops that claim and run jobs, locally or as Ray tasks,
are :mod:`._job_workers`.
"""

from __future__ import annotations

from ._job_workers import WorkReport, work, work_ray
from ._jobs import (
    KINDS,
    STATUSES,
    JobFailedError,
    JobNotFoundError,
    JobView,
    claim,
    enqueue,
    fail,
    finish,
    get_job,
    index_target,
    list_jobs,
    place,
    renew,
    run_job,
    wait_for,
    worker_name,
)

__all__ = [
    "KINDS",
    "STATUSES",
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
    "index_target",
    "place",
    "work",
    "work_ray",
    "wait_for",
    "worker_name",
]
