"""Indexing from the Hugging Face Hub: one repo, an incremental crawl, or the local cache.

Every repo is handled on its own and committed on its own, so a crawl killed
at any point keeps what it finished. What makes a second run cheap is the
``hub_repos`` table: a repo whose commit sha is the one already indexed is
skipped before any request about it is made (the listing carries the sha).
The ``crawl_cursors`` table keeps, per query, the ``lastModified`` watermark
below which everything was handled; the listing comes newest first, so a
crawl stops reading it at the watermark.

Failures worth retrying (HTTP 408/429/5xx, dropped connections) are retried
with exponential backoff, honouring ``Retry-After``; every try is counted in
``hub_repos.attempts`` and the last error kept in ``hub_repos.error``. Other
failures (missing repo, unreadable weights) are recorded at once and the
crawl moves on.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterable, Iterator, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from ._models import as_utc, iso, utc_now
from ._schema import CrawlCursor, HubRepo, Model
from .errors import HubError, MothertreeError, UnsupportedFormatError

if TYPE_CHECKING:
    from ..indexer.hub import CachedRevision, HubClient, HubListing, HubModelInfo
    from ._indexing import ReadModel
    from ._registry import Registry

__all__ = [
    "RetryPolicy",
    "HubIndexResult",
    "HubReport",
    "parse_repo_spec",
    "index_hub",
    "crawl_hub",
    "index_cache",
    "FetchedRepo",
    "fetch_repo",
    "write_fetched",
    "indexed_sha",
    "RepoFanOut",
]

#: Statuses of ``hub_repos`` rows that need no further work while the sha stays the same
#: (a repo without readable weights stays so until a new commit).
DONE = ("indexed", "lite", "unsupported")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a repo is retried after a transient failure.

    The wait before try ``n + 1`` is ``base_delay_s * 2**(n-1)``, capped at
    ``max_delay_s``, unless the server sent ``Retry-After`` (then that, capped).
    """

    max_attempts: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0

    def delay(self, attempt: int, asked: float | None) -> float:
        wait = asked if asked is not None else self.base_delay_s * 2 ** (attempt - 1)
        return min(wait, self.max_delay_s)


@dataclass(frozen=True)
class HubIndexResult:
    """What happened to one repo.

    ``status`` is ``indexed`` (new model), ``revised`` (new revision of a known
    name), ``unchanged`` (same weights), ``lite`` (partial read), ``skipped``
    (sha already indexed, nothing fetched), ``failed`` or ``unsupported``
    (no weights mothertree reads).
    """

    repo_id: str
    sha: str | None
    status: str
    attempts: int = 0
    bytes_transferred: int = 0
    file_size: int | None = None
    revision: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "sha": self.sha,
            "status": self.status,
            "attempts": self.attempts,
            "bytes_transferred": self.bytes_transferred,
            "file_size": self.file_size,
            "revision": self.revision,
            "error": self.error,
        }


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
        return {
            "query": self.query,
            "complete": self.complete,
            "watermark": iso(self.watermark),
            "counts": self.counts,
            "repos": [r.to_dict() for r in self.results],
        }


Progress = Callable[[HubIndexResult], None]


class RepoFanOut(Protocol):
    """How a crawl fetches and reads its listed repos elsewhere (Ray tasks: :class:`._hub_ray.RayFanOut`).

    It writes each repo here through :func:`write_fetched` (one transaction
    per repo) and yields every listed repo with its result, in the order they
    finish; it reads ``listed`` lazily, so the crawl still stops at its watermark.
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


def _client(client: "HubClient | None") -> "HubClient":
    from ..indexer.hub import HubClient

    return client or HubClient()


def _row(s, repo_id: str) -> HubRepo | None:
    return s.scalar(select(HubRepo).where(HubRepo.repo_id == repo_id))


def indexed_sha(reg: "Registry", repo_id: str) -> str | None:
    """The sha of the repo's indexed revision (or of one without readable weights); ``None`` when there is none."""
    with reg.session() as s:
        row = _row(s, repo_id)
        return row.sha if row is not None and row.status in DONE else None


def _record_failure(reg: "Registry", repo_id: str, sha: str | None, status: str, error: str, tries: int) -> int:
    """Write a failed attempt; returns the attempts now counted for this sha."""
    with reg.session() as s:
        row = _row(s, repo_id)
        if row is None:
            row = HubRepo(repo_id=repo_id, attempts=0, lite=False)
            s.add(row)
        if sha is not None and row.sha != sha:
            row.sha, row.attempts = sha, 0
        row.status = status
        row.error = error
        row.attempts = (row.attempts or 0) + tries
        row.last_attempt_at = utc_now()
        return row.attempts


def _apply_hub_fields(
    s: "Session",
    model: Model,
    *,
    repo_id: str,
    sha: str,
    last_modified: datetime | None,
    declared: tuple[tuple[str, ...], str | None],
    lite: bool,
    source: str | None,
    num_parameters: int | None,
    tries: int,
    transferred: int,
    file_size: int | None,
) -> None:
    """Set a just-indexed model's hub fields and its ``hub_repos`` row, inside the indexing transaction."""
    bases, relation = declared
    model.repo_id = repo_id
    model.hub_sha = sha
    model.hub_last_modified = last_modified
    model.declared_relation = relation
    if bases:
        model.declared_base_models = list(bases)
    if lite:
        model.status = "lite"
        if source is not None:
            model.source = source
        if num_parameters is not None:
            model.num_parameters = num_parameters
    row = _row(s, repo_id)
    if row is None:
        row = HubRepo(repo_id=repo_id, attempts=0)
        s.add(row)
    elif row.sha != sha:
        row.attempts = 0
    now = utc_now()
    row.sha = sha
    row.last_modified = last_modified
    row.status = "lite" if lite else "indexed"
    row.error = None
    row.attempts = (row.attempts or 0) + tries
    row.last_attempt_at = now
    row.indexed_at = now
    row.lite = lite
    row.bytes_transferred = transferred
    row.file_size = file_size
    row.model_id = model.id


def _index_folder(reg: "Registry", folder: Path, *, name: str, created_at: datetime | None, **hub: Any) -> Any:
    """``index_one`` with the hub fields written in the same transaction: a model
    is never stored without its hub provenance."""
    return reg.index_one(
        folder, name=name, created_at=created_at,
        after_write=lambda s, model: _apply_hub_fields(s, model, **hub),
    )


@dataclass(frozen=True)
class FetchedRepo:
    """One repo revision downloaded and read, nothing written: what :func:`fetch_repo` hands the writer.

    Plain data, so a Ray task can return it. ``status`` is ``read`` (with
    ``read`` set), ``failed`` or ``unsupported`` (with ``error``), or
    ``skipped`` (the sha was already indexed).
    """

    repo_id: str
    sha: str | None
    tries: int
    info: "HubModelInfo | None" = None
    read: "ReadModel | None" = None
    transferred: int = 0
    size: int | None = None
    num_parameters: int | None = None
    status: str = "skipped"
    error: str | None = None


def fetch_repo(
    client: "HubClient",
    repo_id: str,
    revision: str | None,
    *,
    done: str | None,
    listed_sha: str | None,
    lite: bool,
    blocks: int,
    retry: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
) -> FetchedRepo:
    """Download one revision (retrying transient failures) and read its weights; writes nothing.

    ``done`` is the sha already indexed for the repo: that revision is not fetched again.
    """
    from ..indexer.hub import is_transient, retry_after

    from ._indexing import read_model

    tries = 0
    sha: str | None = listed_sha
    with tempfile.TemporaryDirectory(prefix="mothertree-lite-") as tmp:
        while True:
            tries += 1
            try:
                info = client.model_info(repo_id, revision)
                sha = info.sha
                if done == info.sha:
                    return FetchedRepo(repo_id, info.sha, tries)
                if lite:
                    folder = Path(tmp)
                    transferred, size, num_parameters = client.fetch_lite(info, folder, blocks=blocks)
                else:
                    folder, transferred, size = client.download(info)
                    num_parameters = None
                break
            except (MothertreeError, OSError, ValueError, *_network_errors()) as exc:
                status = "unsupported" if isinstance(exc, UnsupportedFormatError) else "failed"
                if is_transient(exc) and tries < retry.max_attempts:
                    sleep(retry.delay(tries, retry_after(exc)))
                    continue
                if not is_transient(exc) and _offline_error(exc):
                    raise HubError(repo_id, f"offline ({exc}); unset HF_HUB_OFFLINE or use index-cache") from exc
                msg = _message(exc)
                if isinstance(exc, _network_errors()):
                    msg = (f"cannot reach the Hugging Face Hub ({msg}); check the network or HF_ENDPOINT, "
                           "or index local copies with: mothertree index-cache")
                return FetchedRepo(repo_id, sha, tries, status=status, error=msg)
        fetched = FetchedRepo(repo_id, info.sha, tries, info=info, transferred=transferred, size=size,
                              num_parameters=num_parameters, status="read")
        try:  # read inside the temporary folder a lite fetch wrote to
            read = read_model(folder, label=repo_id)
        except (MothertreeError, OSError, ValueError) as exc:
            return replace(fetched, status="failed", error=_message(exc))
    return replace(fetched, read=read)


def write_fetched(reg: "Registry", fetched: FetchedRepo, *, lite: bool) -> HubIndexResult:
    """Write one fetched repo: its model with its hub fields in one transaction, or its failure."""
    from ._indexing import write_model

    repo_id, info = fetched.repo_id, fetched.info
    if fetched.error is not None:
        attempts = _record_failure(reg, repo_id, fetched.sha, fetched.status, fetched.error, fetched.tries)
        return HubIndexResult(repo_id, fetched.sha, fetched.status, attempts=attempts, error=fetched.error)
    if fetched.read is None or info is None:  # the indexed sha: nothing was fetched
        return HubIndexResult(repo_id, fetched.sha, "skipped", attempts=fetched.tries)
    hub = dict(
        repo_id=repo_id, sha=info.sha, last_modified=info.last_modified,
        declared=(info.declared_base_models, info.declared_relation), lite=lite,
        source=f"hf://{repo_id}@{info.sha}" if lite else None, num_parameters=fetched.num_parameters,
        tries=fetched.tries, transferred=fetched.transferred, file_size=fetched.size,
    )
    try:
        result = write_model(reg, fetched.read, name=repo_id, created_at=info.created_at,
                             after_write=lambda s, model: _apply_hub_fields(s, model, **hub))
    except (MothertreeError, OSError, ValueError) as exc:
        msg = _message(exc)
        attempts = _record_failure(reg, repo_id, info.sha, "failed", msg, fetched.tries)
        return HubIndexResult(repo_id, info.sha, "failed", attempts=attempts, error=msg)
    with reg.session() as s:
        attempts = _row(s, repo_id).attempts  # type: ignore[union-attr]
    return HubIndexResult(
        repo_id, info.sha, "lite" if lite else result.status, attempts=attempts,
        bytes_transferred=fetched.transferred, file_size=fetched.size, revision=result.revision,
    )


def _index_repo(
    reg: "Registry",
    client: "HubClient",
    repo_id: str,
    revision: str | None,
    *,
    listed_sha: str | None,
    lite: bool,
    blocks: int,
    retry: RetryPolicy,
    sleep: Callable[[float], None],
) -> HubIndexResult:
    done = indexed_sha(reg, repo_id)
    if listed_sha is not None and done == listed_sha:
        return HubIndexResult(repo_id, listed_sha, "skipped")
    fetched = fetch_repo(client, repo_id, revision, done=done, listed_sha=listed_sha, lite=lite, blocks=blocks,
                         retry=retry, sleep=sleep)
    return write_fetched(reg, fetched, lite=lite)


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport failures of the hub's HTTP client (not ``OSError`` subclasses)."""
    import httpx2

    return (httpx2.TransportError,)


def _offline_error(exc: BaseException) -> bool:
    from huggingface_hub.errors import OfflineModeIsEnabled

    cur: BaseException | None = exc
    while cur is not None:
        if isinstance(cur, OfflineModeIsEnabled):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _message(exc: BaseException) -> str:
    """First line of the error, with its type: hub errors carry long multi-line bodies."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:1000]


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
    """
    from ..indexer.hub import is_offline

    client = _client(client)
    parsed = [parse_repo_spec(s) for s in specs]
    results = []
    for repo_id, rev in parsed:
        if is_offline():
            r = _index_cached(reg, client.cached_revision(repo_id, rev))
        else:
            r = _index_repo(
                reg, client, repo_id, rev, listed_sha=None, lite=lite, blocks=blocks, retry=retry, sleep=sleep
            )
        results.append(r)
        if progress is not None:
            progress(r)
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
    fan_out : RepoFanOut, optional
        Fetch and read the repos elsewhere, several at once (``RayFanOut()``:
        as Ray tasks); the rows are still written here, one transaction per
        repo. Default: one repo after another in this process.

    Raises
    ------
    HubError
        Under ``HF_HUB_OFFLINE``: a crawl needs the hub (use :func:`index_cache`).
    """
    from ..indexer.hub import is_offline

    if is_offline():
        raise HubError("*", "crawl-hub needs the hub but HF_HUB_OFFLINE is set; use: mothertree index-cache")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    client = _client(client)
    query = {"author": author, "search": search, "filter": filter}
    key = _query_key(query)
    with reg.session() as s:
        cursor = s.scalar(select(CrawlCursor).where(CrawlCursor.query_key == key))
        if cursor is None:
            cursor = CrawlCursor(query_key=key, query=query, repos_listed=0, repos_indexed=0, repos_failed=0)
            s.add(cursor)
        old_watermark = as_utc(cursor.watermark)
        cursor.status = "running"
        cursor.started_at = utc_now()
        cursor.finished_at = None
    since = as_utc(since)
    stop_at = since if since is not None else old_watermark
    results: list[HubIndexResult] = []
    newest: datetime | None = None
    oldest_failed: datetime | None = None
    reached = [False]

    def listed() -> Iterator["HubListing"]:
        for item in client.list_models(author=author, search=search, filter=filter, limit=limit):
            modified = as_utc(item.last_modified)
            if stop_at is not None and modified is not None and modified < stop_at:
                reached[0] = True
                return
            yield item

    if fan_out is None:
        handled: Generator[tuple["HubListing", HubIndexResult], None, None] = (
            (item, _index_repo(reg, client, item.repo_id, None, listed_sha=item.sha, lite=lite, blocks=blocks,
                               retry=retry, sleep=sleep))
            for item in listed()
        )
    else:
        handled = fan_out(reg, client, listed(), lite=lite, blocks=blocks, retry=retry)
    try:
        for item, r in handled:
            modified = as_utc(item.last_modified)
            results.append(r)
            if modified is not None:
                newest = modified if newest is None else max(newest, modified)
                if r.status == "failed":
                    oldest_failed = modified if oldest_failed is None else min(oldest_failed, modified)
            if progress is not None:
                progress(r)
    except BaseException:
        handled.close()  # a fan-out cancels what it still runs
        _finish_cursor(reg, key, results, status="interrupted", watermark=None)
        raise
    complete = reached[0] or limit is None or len(results) < limit
    watermark = None
    if complete and (since is None or old_watermark is None or since <= old_watermark):
        candidates = [t for t in (newest, oldest_failed) if t is not None]
        watermark = min(candidates) if oldest_failed is not None else newest
        if watermark is not None and old_watermark is not None and oldest_failed is None:
            watermark = max(watermark, old_watermark)
    final = _finish_cursor(reg, key, results, status="done" if complete else "partial", watermark=watermark)
    return HubReport(tuple(results), query=query, watermark=final, complete=complete)


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


def _index_cached(reg: "Registry", rev: "CachedRevision") -> HubIndexResult:
    from ..indexer.hub import declared_from_card

    if indexed_sha(reg, rev.repo_id) == rev.sha:
        return HubIndexResult(rev.repo_id, rev.sha, "skipped")
    try:
        result = _index_folder(
            reg, rev.folder, name=rev.repo_id, created_at=None, repo_id=rev.repo_id, sha=rev.sha,
            last_modified=None, declared=declared_from_card(rev.folder), lite=False, source=None,
            num_parameters=None, tries=1, transferred=0, file_size=rev.size_bytes,
        )
    except (MothertreeError, OSError, ValueError) as exc:
        status = "unsupported" if isinstance(exc, UnsupportedFormatError) else "failed"
        msg = _message(exc)
        attempts = _record_failure(reg, rev.repo_id, rev.sha, status, msg, 1)
        return HubIndexResult(rev.repo_id, rev.sha, status, attempts=attempts, error=msg)
    return HubIndexResult(rev.repo_id, rev.sha, result.status, attempts=1, file_size=rev.size_bytes, revision=result.revision)


def index_cache(
    reg: "Registry", *, client: "HubClient | None" = None, progress: Progress | None = None
) -> HubReport:
    """Index every model revision in the local Hugging Face cache, with no network.

    Each repo contributes its ``refs/main`` snapshot (else its newest one);
    a repo without readable weights (a tokenizer-only download) is reported
    ``unsupported`` and the rest go on.
    """
    client = _client(client)
    results = []
    for rev in client.cached_revisions():
        r = _index_cached(reg, rev)
        results.append(r)
        if progress is not None:
            progress(r)
    return HubReport(tuple(results))
