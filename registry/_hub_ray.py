"""``crawl-hub --ray``: a hub crawl whose downloads and fingerprinting run as Ray tasks.

The driver (the crawling process) reads the listing, skips repos whose sha is
indexed, and keeps at most ``parallel`` repos in flight. Each task downloads
one revision into its node's Hugging Face cache and reads it
(:func:`._hub_repo.fetch_repo`), writing nothing; the driver writes what it
returns (:func:`._hub_repo.write_fetched`): the model's rows and hub fields in
one transaction, then its vectors, read from those committed rows, into the
FAISS files (one writer: the lock of :mod:`._faiss_index`). The crawl cursor
and watermark are kept by :func:`._hub.crawl_hub` as for a crawl in one process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator, Iterable

from ._hub_repo import HubIndexResult, RetryPolicy, fetch_repo, indexed_sha, write_fetched

if TYPE_CHECKING:
    from ..indexer.hub import HubClient, HubListing
    from ._hub_repo import FetchedRepo
    from ._registry import Registry

__all__ = ["RayFanOut"]


def _fetch_in_task(client: dict[str, Any], repo_id: str, sha: str | None, done: str | None, lite: bool,
                   blocks: int, retry: RetryPolicy) -> "FetchedRepo":
    """Body of a crawl task: download and read one listed repo with a client built like the driver's."""
    from ..indexer.hub import HubClient

    return fetch_repo(HubClient(**client), repo_id, None, done=done, listed_sha=sha, lite=lite, blocks=blocks,
                      retry=retry)


class RayFanOut:
    """Fetch and read a crawl's repos as Ray tasks (a :class:`._hub.RepoFanOut`).

    Parameters
    ----------
    address : str, optional
        Ray cluster to join (default: start a local Ray with ``num_cpus`` CPUs).
    parallel : int, optional
        Repos in flight at once (default: the cluster's CPUs). Each task asks
        for one GPU when the cluster has GPUs (fingerprints are sketched there).

    Tasks wait between retries of a transient failure with ``time.sleep``;
    their client has the driver's endpoint, cache folder and token.
    """

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, parallel: int | None = None):
        self.address = address
        self.num_cpus = num_cpus
        self.parallel = parallel

    def __call__(
        self, reg: "Registry", client: "HubClient", listed: Iterable["HubListing"], *, lite: bool, blocks: int,
        retry: RetryPolicy,
    ) -> Generator[tuple["HubListing", HubIndexResult], None, None]:
        import ray

        from ._ray import client_args, ensure_ray, gpu_options, unwrap

        ensure_ray(self.address, self.num_cpus)
        task = ray.remote(_fetch_in_task).options(max_retries=0, **gpu_options())
        slots = self.parallel or max(1, int(ray.cluster_resources().get("CPU", 1)))
        spec = client_args(client)
        inflight: dict[Any, "HubListing"] = {}

        def finished() -> Generator[tuple["HubListing", HubIndexResult], None, None]:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                item = inflight.pop(ref)
                try:
                    fetched = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    raise unwrap(exc) from None
                yield item, write_fetched(reg, fetched, lite=lite)

        try:
            for item in listed:
                done = indexed_sha(reg, item.repo_id)
                if item.sha is not None and done == item.sha:  # no request about an unchanged repo
                    yield item, HubIndexResult(item.repo_id, item.sha, "skipped")
                    continue
                while len(inflight) >= slots:
                    yield from finished()
                inflight[task.remote(spec, item.repo_id, item.sha, done, lite, blocks, retry)] = item
            while inflight:
                yield from finished()
        finally:
            for ref in inflight:  # interrupted: what is still running is not written, and the next crawl redoes it
                ray.cancel(ref)
