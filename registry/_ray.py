"""Ray plumbing shared by the fanned-out work: starting or joining a cluster, GPU requests, pair tests.

The work that runs as Ray tasks only computes (downloads, reads, fingerprints,
independence tests) and returns plain data; the process that started the
tasks (the driver) writes SQL, in transactions, and brings the FAISS files up
to date from SQL. Tasks never write the registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..progress import Progress, note_step
from ._pairs import PairJob
from ._weights_cache import WeightsCache

if TYPE_CHECKING:
    from ..indexer.hub import HubClient

__all__ = ["ensure_ray", "gpu_options", "unwrap", "client_args", "RayPairRunner"]


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address``, or start a local Ray (at most ``num_cpus`` CPUs); no-op when connected."""
    import ray

    if ray.is_initialized():
        return
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 2**20)
    else:
        ray.init(address=address, log_to_driver=False)


def gpu_options() -> dict[str, Any]:
    """Task options: one GPU per task when the cluster has GPUs, none otherwise."""
    import ray

    return {"num_gpus": 1} if ray.cluster_resources().get("GPU", 0) >= 1 else {}


def unwrap(exc: BaseException) -> BaseException:
    """The task's own exception inside the error Ray raises on ``ray.get``."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def client_args(client: "HubClient") -> dict[str, Any]:
    """Keyword arguments that rebuild ``client`` inside a task: the driver's endpoint, cache folder and token."""
    return {"endpoint": client.endpoint, "cache_dir": str(client.cache_dir), "token": client.token}


#: One weights cache per Ray worker process and registry home: a worker that runs several pair tests
#: of one placement reads the new model once.
_CACHES: dict[str, WeightsCache] = {}


def _test_pair(home: str, job: PairJob) -> dict[str, Any]:
    """Body of a pair-test task: the row columns of one candidate pair."""
    cache = _CACHES.get(home)
    if cache is None:
        cache = _CACHES[home] = WeightsCache(home=Path(home))
    return job.run(cache)


class RayPairRunner:
    """Runs a resolve's candidate pair tests as Ray tasks, one task per pair (:data:`._resolve.PairRunner`).

    Each task loads the two models from their sources (a path every node can
    read: a shared HF cache or file system on a multi-machine cluster),
    caching activations under ``home``, and returns the pair's row columns;
    :func:`._resolve._run_tests` writes them all in one transaction. The
    results are those of the same test in the resolving process: the same
    function (:meth:`PairJob.run`) on the same weights and seeded inputs.
    """

    def __init__(self, home: Path) -> None:
        self.home = str(home)

    def __call__(self, jobs: Sequence[PairJob], progress: Progress | None) -> list[dict[str, Any]]:
        import ray

        task = ray.remote(_test_pair).options(max_retries=0, **gpu_options())
        note_step(progress, f"testing {len(jobs)} pair(s) as Ray tasks")
        where = {task.remote(self.home, job): i for i, job in enumerate(jobs)}
        out: list[dict[str, Any] | None] = [None] * len(jobs)
        pending = list(where)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    i = where[ref]
                    try:
                        out[i] = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        raise unwrap(exc) from None
                    note_step(
                        progress,
                        f"tested {jobs[i].names[0]} ~ {jobs[i].names[1]} ({len(jobs) - len(pending)}/{len(jobs)})",
                    )
        finally:
            for ref in pending:  # one test failed: the others' results would not be written
                ray.cancel(ref)
        return [r for r in out if r is not None]
