"""Durable jobs: idempotent queueing, exclusive claims, lease expiry, poison jobs (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select

from mothertree.registry import _jobs as jobs
from mothertree.registry._schema import Fingerprint, Job, Model


def test_hub_jobs_are_idempotent_per_repo_and_sha(registry):
    a, created_a = jobs.enqueue(registry, "hub", "org/m", revision="abc")
    b, created_b = jobs.enqueue(registry, "hub", "org/m", revision="abc")
    c, created_c = jobs.enqueue(registry, "hub", "org/m", revision="def")
    assert (created_a, created_b, created_c) == (True, False, True)
    assert a.id == b.id != c.id
    assert a.status == "queued" and a.attempts == 0


def test_bad_jobs_are_refused(registry, tmp_path):
    with pytest.raises(ValueError, match="job kind must be one of path, hub, got 'x'"):
        jobs.enqueue(registry, "x", "y")
    with pytest.raises(FileNotFoundError, match="no such model folder or file"):
        jobs.enqueue(registry, "path", str(tmp_path / "nope"))
    with pytest.raises(jobs.JobNotFoundError, match="Job 99 is not in the registry"):
        jobs.get_job(registry, 99)
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_two_workers_never_take_the_same_job(registry):
    for i in range(12):
        jobs.enqueue(registry, "hub", f"org/m{i}", revision="s")
    taken: dict[str, list[int]] = {"w1": [], "w2": [], "w3": []}

    def grab(name: str) -> None:
        while (j := jobs.claim(registry, name, lease_s=60)) is not None:
            taken[name].append(j.id)

    threads = [threading.Thread(target=grab, args=(n,)) for n in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for v in taken.values() for i in v]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 12
    assert all(j.status == "running" and j.attempts == 1 for j in jobs.list_jobs(registry))


def test_expired_lease_makes_a_job_claimable_again_and_a_stale_worker_cannot_finish(registry):
    job, _ = jobs.enqueue(registry, "hub", "org/m", revision="s")
    first = jobs.claim(registry, "dead", lease_s=0.2)
    assert first.id == job.id and jobs.claim(registry, "other", lease_s=60) is None  # held
    time.sleep(0.4)
    second = jobs.claim(registry, "alive", lease_s=60)
    assert (second.id, second.attempts, second.worker) == (job.id, 2, "alive")
    assert jobs.finish(registry, first, {"x": 1}) is False  # the dead worker's lease is gone
    assert jobs.finish(registry, second, {"x": 2}) is True
    final = jobs.get_job(registry, job.id)
    assert (final.status, final.result, final.attempts) == ("done", {"x": 2}, 2)


def test_poison_job_stops_after_max_attempts_keeping_its_error(registry):
    job, _ = jobs.enqueue(registry, "hub", "org/poison", revision="s", max_attempts=2)

    def boom(reg, j):
        raise jobs.JobFailedError(f"bad weights in {j.target}")

    report = jobs.work(registry, runner=boom, idle_exit=True)
    assert [j.status for j in report.jobs] == ["queued", "failed"]
    final = jobs.get_job(registry, job.id)
    assert (final.status, final.attempts) == ("failed", 2)
    assert final.error == "JobFailedError: bad weights in org/poison"
    assert jobs.claim(registry, "w") is None


def test_a_job_whose_worker_dies_every_time_ends_failed(registry):
    job, _ = jobs.enqueue(registry, "hub", "org/crasher", revision="s", max_attempts=1)
    jobs.claim(registry, "dies", lease_s=0.1)
    time.sleep(0.3)
    assert jobs.claim(registry, "next") is None
    final = jobs.get_job(registry, job.id)
    assert final.status == "failed" and "lease expired" in final.error


def test_a_path_job_indexes_and_places_once(registry, tiny_models):
    job, _ = jobs.enqueue(registry, "path", str(tiny_models["llama"]))
    report = jobs.work(registry, idle_exit=True)
    assert [j.status for j in report.jobs] == ["done"]
    assert report.jobs[0].result["model"] == "llama" and report.jobs[0].result["status"] == "indexed"
    # the same path again: a new job, but the registry sees unchanged weights
    jobs.enqueue(registry, "path", str(tiny_models["llama"]))
    again = jobs.work(registry, idle_exit=True)
    assert again.jobs[0].result["status"] == "unchanged"
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Model)) == 1
        n = s.scalar(select(func.count()).select_from(Fingerprint))
    assert sum(i.vectors for i in registry.vectors.check()) == n
