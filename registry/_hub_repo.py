"""One hub repository: fetch it (whole, or a lite byte-range read) with retries, index it, record it.

Every repo is handled on its own and committed on its own, in two halves:
:func:`fetch_repo` downloads and reads a revision and writes nothing (so a
Ray task can run it: :mod:`._hub_ray`), and :func:`write_fetched` writes
what it returns, in the process that owns the registry. Failures worth
retrying (HTTP 408/429/5xx, dropped connections) are retried with
exponential backoff, honouring ``Retry-After``; every try is counted in
``hub_repos.attempts`` and the last error kept in ``hub_repos.error``. Other
failures (missing repo, unreadable weights) are recorded at once. A repo
whose commit sha is already indexed is skipped (see :data:`DONE`).

The listing, the crawl cursor and the batch functions are in :mod:`._hub`.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..serialize import Serializable
from ._models import utc_now
from ._schema import HubRepo, Model
from .errors import HubError, MothertreeError, UnsupportedFormatError

if TYPE_CHECKING:
    from ..indexer.hub import CachedRevision, HubClient, HubModelInfo
    from ._indexing import ReadModel
    from ._registry import Registry

__all__ = [
    "DONE", "RetryPolicy", "HubIndexResult", "FetchedRepo", "hub_client", "indexed_sha", "fetch_repo",
    "write_fetched", "index_repo", "index_cached",
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
class HubIndexResult(Serializable):
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

    def line(self) -> str:
        """One line for a human: the status and repo, or the repo and why it failed."""
        if self.status == "failed":
            return f"{self.repo_id}: {self.error} (after {self.attempts} tries)"
        return f"{self.status:11} {self.repo_id}"


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


def hub_client(client: "HubClient | None") -> "HubClient":
    """``client``, or one built from ``huggingface_hub``'s settings."""
    from ..indexer.hub import HubClient

    return client or HubClient()


def _row(s: Session, repo_id: str) -> HubRepo | None:
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
    s: Session,
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


def index_repo(
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
    """Fetch one repo (retrying transient failures) and index it; the outcome is in ``hub_repos``.

    ``listed_sha`` (from a listing) lets an indexed repo be skipped before any request.
    """
    done = indexed_sha(reg, repo_id)
    if listed_sha is not None and done == listed_sha:
        return HubIndexResult(repo_id, listed_sha, "skipped")
    fetched = fetch_repo(client, repo_id, revision, done=done, listed_sha=listed_sha, lite=lite, blocks=blocks,
                         retry=retry, sleep=sleep)
    return write_fetched(reg, fetched, lite=lite)


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
    from ._indexing import read_model

    with tempfile.TemporaryDirectory(prefix="mothertree-lite-") as tmp:
        got, folder = _fetch(client, repo_id, revision, Path(tmp), done=done, listed_sha=listed_sha, lite=lite,
                             blocks=blocks, retry=retry, sleep=sleep)
        if folder is None:
            return got
        try:  # read inside the temporary folder a lite fetch wrote to
            return replace(got, read=read_model(folder, label=repo_id))
        except (MothertreeError, OSError, ValueError) as exc:
            return replace(got, status="failed", error=_message(exc))


def _fetch(
    client: "HubClient", repo_id: str, revision: str | None, tmp: Path, *,
    done: str | None, listed_sha: str | None, lite: bool, blocks: int, retry: RetryPolicy,
    sleep: Callable[[float], None],
) -> tuple[FetchedRepo, Path | None]:
    """The repo's folder (a lite read goes to ``tmp``) with what fetching it cost, or why there is none."""
    from ..indexer.hub import is_transient, retry_after

    tries, sha = 0, listed_sha
    while True:
        tries += 1
        try:
            info = client.model_info(repo_id, revision)
            sha = info.sha
            if done == info.sha:
                return FetchedRepo(repo_id, info.sha, tries), None
            if lite:
                transferred, size, num_parameters = client.fetch_lite(info, tmp, blocks=blocks)
                folder = tmp
            else:
                folder, transferred, size = client.download(info)
                num_parameters = None
            fetched = FetchedRepo(repo_id, info.sha, tries, info=info, transferred=transferred, size=size,
                                  num_parameters=num_parameters, status="read")
            return fetched, folder
        except (MothertreeError, OSError, ValueError, *_network_errors()) as exc:
            if is_transient(exc) and tries < retry.max_attempts:
                sleep(retry.delay(tries, retry_after(exc)))
                continue
            return _fetch_failed(repo_id, sha, exc, tries), None


def _fetch_failed(repo_id: str, sha: str | None, exc: BaseException, tries: int) -> FetchedRepo:
    """A fetch that failed for good (:func:`write_fetched` records it); offline mode is the caller's mistake: raise."""
    from ..indexer.hub import is_transient

    if not is_transient(exc) and _offline_error(exc):
        raise HubError(repo_id, f"offline ({exc}); unset HF_HUB_OFFLINE or use index-cache") from exc
    status = "unsupported" if isinstance(exc, UnsupportedFormatError) else "failed"
    msg = _message(exc)
    if isinstance(exc, _network_errors()):
        msg = (f"cannot reach the Hugging Face Hub ({msg}); check the network or HF_ENDPOINT, "
               "or index local copies with: mothertree index-cache")
    return FetchedRepo(repo_id, sha, tries, status=status, error=msg)


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


def index_cached(reg: "Registry", rev: "CachedRevision") -> HubIndexResult:
    """Index one revision of the local Hugging Face cache (no network); a failure is recorded."""
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
