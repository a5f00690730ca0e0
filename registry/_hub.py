"""Indexing from the Hugging Face Hub: named repos, an incremental crawl, or the local cache.

What makes a second run cheap is the ``hub_repos`` table: a repo whose
commit sha is the one already indexed is skipped before any request about it
is made (the listing carries the sha). The ``crawl_cursors`` table keeps, per
query, the ``lastModified`` watermark below which everything was handled;
the listing comes newest first, so a crawl stops reading it at the
watermark. A crawl killed at any point keeps every repo it finished.

Fetching, retrying, indexing and recording one repo is :mod:`._hub_repo`. A
crawl can fetch and read its repos elsewhere, several at once (a
:class:`RepoFanOut`; Ray tasks: :mod:`._hub_ray`), and still write them here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterable, Iterator, Protocol

from sqlalchemy import select

from ..progress import Progress, note_done
from ..serialize import to_jsonable
from ._hub_repo import HubIndexResult, RetryPolicy, hub_client, index_cached, index_repo
from ._models import as_utc, utc_now
from ._schema import CrawlCursor
from .errors import HubError

if TYPE_CHECKING:
    from ..indexer.hub import HubClient, HubListing
    from ._registry import Registry

__all__ = [
    "RetryPolicy",
    "HubIndexResult",
    "HubReport",
    "parse_repo_spec",
    "index_hub",
    "crawl_hub",
    "index_cache",
    "RepoFanOut",
]


@dataclass(frozen=True)
class HubReport:
    """The outcome of ``index-hub``, ``crawl-hub`` or ``index-cache``.

    ``complete`` is True when the crawl read its listing to the end (or to the
    watermark), which is what lets the watermark move forward.
    """

    results: tuple[HubIndexResult, ...]
    query: dict[str, Any] = field(default_factory=dict)
    watermark: datetime | None = None
    complete: bool = True

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return dict(sorted(out.items()))

    @property
    def failed(self) -> tuple[HubIndexResult, ...]:
        return tuple(r for r in self.results if r.status == "failed")

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({
            "query": self.query,
            "complete": self.complete,
            "watermark": self.watermark,
            "counts": self.counts,
            "repos": self.results,
        })


class RepoFanOut(Protocol):
    """How a crawl fetches and reads its listed repos elsewhere (Ray tasks: :class:`._hub_ray.RayFanOut`).

    It writes each repo here through :func:`._hub_repo.write_fetched` (one
    transaction per repo) and yields every listed repo with its result, in the
    order they finish; it reads ``listed`` lazily, so the crawl still stops at
    its watermark.
    """

    def __call__(
        self, reg: "Registry", client: "HubClient", listed: Iterable["HubListing"], *, lite: bool, blocks: int,
        retry: RetryPolicy,
    ) -> Generator[tuple["HubListing", HubIndexResult], None, None]: ...


def parse_repo_spec(spec: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; no ``@`` means the default branch."""
    repo, sep, rev = spec.partition("@")
    if not repo or (sep and not rev):
        raise ValueError(f"expected REPO_ID or REPO_ID@REVISION, got {spec!r}")
    return repo, rev or None


def _tell(progress: Progress | None, r: HubIndexResult) -> None:
    note_done(progress, r, r.line())


def index_hub(
    reg: "Registry",
    specs: Iterable[str],
    *,
    client: "HubClient | None" = None,
    lite: bool = False,
    blocks: int = 3,
    retry: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    progress: Progress | None = None,
) -> HubReport:
    """Index hub repos named ``REPO_ID[@REVISION]``, one transaction each.

    Under ``HF_HUB_OFFLINE`` the revision is taken from the local cache instead
    (see :func:`index_cache`). A repo whose sha is already indexed is skipped.

    Parameters
    ----------
    reg : Registry
    specs : iterable of str
        ``org/name`` or ``org/name@revision`` (branch, tag or commit sha).
    client : HubClient, optional
        Default: one built from ``huggingface_hub``'s settings.
    lite : bool
        Read headers and a few blocks by byte range instead of whole files.
    blocks : int
        Blocks a lite index reads.
    retry : RetryPolicy
        Retries of transient failures.
    progress : Progress, optional
        Told each repo as it finishes (the event's ``item`` is its :class:`HubIndexResult`).
    """
    from ..indexer.hub import is_offline

    client = hub_client(client)
    parsed = [parse_repo_spec(s) for s in specs]
    results = []
    for repo_id, rev in parsed:
        if is_offline():
            r = index_cached(reg, client.cached_revision(repo_id, rev))
        else:
            r = index_repo(
                reg, client, repo_id, rev, listed_sha=None, lite=lite, blocks=blocks, retry=retry, sleep=sleep
            )
        results.append(r)
        _tell(progress, r)
    return HubReport(tuple(results))


def _query_key(query: dict[str, Any]) -> str:
    return json.dumps(query, sort_keys=True, separators=(",", ":"))


def crawl_hub(
    reg: "Registry",
    *,
    author: str | None = None,
    search: str | None = None,
    filter: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
    client: "HubClient | None" = None,
    lite: bool = False,
    blocks: int = 3,
    retry: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    progress: Progress | None = None,
    fan_out: RepoFanOut | None = None,
) -> HubReport:
    """Index every model a hub query lists, incrementally and resumably.

    The listing is read newest-modified first and stops at ``since``, or by
    default at the query's stored watermark. Repos whose sha is already
    indexed are skipped without a request. When the listing was read to its
    end, the watermark moves to the newest ``lastModified`` seen, held back to
    the oldest repo that failed so that the next crawl lists it again.

    Parameters
    ----------
    author, search, filter : str, optional
        The hub's listing filters; together they name the crawl cursor.
    since : datetime, optional
        Only repos modified at or after this time (default: the cursor's watermark).
    limit : int, optional
        List at most this many repos; a crawl cut short by it keeps the watermark.
    progress : Progress, optional
        Told each repo as it finishes (the event's ``item`` is its :class:`HubIndexResult`).
    fan_out : RepoFanOut, optional
        Fetch and read the repos elsewhere, several at once (``RayFanOut()``:
        as Ray tasks); the rows are still written here, one transaction per
        repo. Default: one repo after another in this process.

    Raises
    ------
    HubError
        Under ``HF_HUB_OFFLINE``: a crawl needs the hub (use :func:`index_cache`).
    """
    _check_crawl(limit)
    client = hub_client(client)
    query = {"author": author, "search": search, "filter": filter}
    key = _query_key(query)
    old_watermark = _start_cursor(reg, key, query)
    since = as_utc(since)
    run = _Crawl(stop_at=since if since is not None else old_watermark)
    listed = run.listed(client.list_models(author=author, search=search, filter=filter, limit=limit))
    handled = _handled(reg, client, listed, fan_out, lite=lite, blocks=blocks, retry=retry, sleep=sleep)
    try:
        run.take(handled, progress)
    except BaseException:
        handled.close()  # a fan-out cancels what it still runs
        _finish_cursor(reg, key, run.results, status="interrupted", watermark=None)
        raise
    return _report(reg, key, query, run, since=since, old_watermark=old_watermark, limit=limit)


def _check_crawl(limit: int | None) -> None:
    """Refuse a crawl that cannot run before the cursor is touched: offline, or a limit below 1."""
    from ..indexer.hub import is_offline

    if is_offline():
        raise HubError("*", "crawl-hub needs the hub but HF_HUB_OFFLINE is set; use: mothertree index-cache")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")


def _report(
    reg: "Registry", key: str, query: dict[str, Any], run: "_Crawl", *,
    since: datetime | None, old_watermark: datetime | None, limit: int | None,
) -> HubReport:
    """Close the cursor after a crawl that ran to its end, and report it.

    The listing was read completely unless ``limit`` cut it. Only a complete
    read that started at or before the stored watermark may move it: one that
    started later skipped the repos in between.
    """
    complete = run.reached_stop or limit is None or len(run.results) < limit
    watermark = None
    if complete and (since is None or old_watermark is None or since <= old_watermark):
        watermark = run.watermark(old_watermark)
    final = _finish_cursor(reg, key, run.results, status="done" if complete else "partial", watermark=watermark)
    return HubReport(tuple(run.results), query=query, watermark=final, complete=complete)


def _handled(
    reg: "Registry", client: "HubClient", listed: Iterator["HubListing"], fan_out: RepoFanOut | None, *,
    lite: bool, blocks: int, retry: RetryPolicy, sleep: Callable[[float], None],
) -> Generator[tuple["HubListing", HubIndexResult], None, None]:
    """Each listed repo with its result, as it finishes: here one after another, or from ``fan_out``.

    Both are generators, so the caller can ``close()`` either to stop (and
    cancel) what is still running when it is interrupted.
    """
    if fan_out is not None:
        return fan_out(reg, client, listed, lite=lite, blocks=blocks, retry=retry)
    return (
        (item, index_repo(reg, client, item.repo_id, None, listed_sha=item.sha, lite=lite, blocks=blocks,
                          retry=retry, sleep=sleep))
        for item in listed
    )


@dataclass
class _Crawl:
    """One crawl's reading of the listing: where it stops, what it did, the times it saw."""

    stop_at: datetime | None
    results: list[HubIndexResult] = field(default_factory=list)
    newest: datetime | None = None
    oldest_failed: datetime | None = None
    reached_stop: bool = False

    def listed(self, listing: Iterable["HubListing"]) -> Iterator["HubListing"]:
        """The listed repos (newest modified first) down to the stop time."""
        for item in listing:
            modified = as_utc(item.last_modified)
            if self.stop_at is not None and modified is not None and modified < self.stop_at:
                self.reached_stop = True
                return
            yield item

    def take(self, handled: Iterable[tuple["HubListing", HubIndexResult]], progress: Progress | None) -> None:
        """Keep each handled repo's result (in the order they finish) and tell ``progress``."""
        for item, r in handled:
            self.add(r, as_utc(item.last_modified))
            _tell(progress, r)

    def add(self, r: HubIndexResult, modified: datetime | None) -> None:
        self.results.append(r)
        if modified is not None:
            self.newest = modified if self.newest is None else max(self.newest, modified)
            if r.status == "failed":
                self.oldest_failed = modified if self.oldest_failed is None else min(self.oldest_failed, modified)

    def watermark(self, old: datetime | None) -> datetime | None:
        """The next watermark after a complete read: the newest time seen, held back to the oldest failure."""
        if self.oldest_failed is not None:
            return min(t for t in (self.newest, self.oldest_failed) if t is not None)
        if self.newest is not None and old is not None:
            return max(self.newest, old)
        return self.newest


def _start_cursor(reg: "Registry", key: str, query: dict[str, Any]) -> datetime | None:
    """Mark the query's cursor running (creating it); its watermark before this crawl."""
    with reg.session() as s:
        cursor = s.scalar(select(CrawlCursor).where(CrawlCursor.query_key == key))
        if cursor is None:
            cursor = CrawlCursor(query_key=key, query=query, repos_listed=0, repos_indexed=0, repos_failed=0)
            s.add(cursor)
        old_watermark = as_utc(cursor.watermark)
        cursor.status = "running"
        cursor.started_at = utc_now()
        cursor.finished_at = None
    return old_watermark


def _finish_cursor(
    reg: "Registry", key: str, results: list[HubIndexResult], *, status: str, watermark: datetime | None
) -> datetime | None:
    with reg.session() as s:
        cursor = s.scalar(select(CrawlCursor).where(CrawlCursor.query_key == key))
        assert cursor is not None  # created at the start of the crawl
        cursor.status = status
        cursor.finished_at = utc_now()
        cursor.repos_listed = len(results)
        cursor.repos_indexed = sum(r.status in ("indexed", "revised", "unchanged", "lite") for r in results)
        cursor.repos_failed = sum(r.status == "failed" for r in results)
        if watermark is not None:
            cursor.watermark = watermark
        return as_utc(cursor.watermark)


def index_cache(
    reg: "Registry", *, client: "HubClient | None" = None, progress: Progress | None = None
) -> HubReport:
    """Index every model revision in the local Hugging Face cache, with no network.

    Each repo contributes its ``refs/main`` snapshot (else its newest one);
    a repo without readable weights (a tokenizer-only download) is reported
    ``unsupported`` and the rest go on.
    """
    client = hub_client(client)
    results = []
    for rev in client.cached_revisions():
        r = index_cached(reg, rev)
        results.append(r)
        _tell(progress, r)
    return HubReport(tuple(results))
