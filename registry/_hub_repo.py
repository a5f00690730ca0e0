"""One hub repository: fetch it (whole, or a lite byte-range read) with retries, index it, record it.

Every repo is handled on its own and committed on its own. Failures worth
retrying (HTTP 408/429/5xx, dropped connections) are retried with
exponential backoff, honouring ``Retry-After``; every try is counted in
``hub_repos.attempts`` and the last error kept in ``hub_repos.error``. Other
failures (missing repo, unreadable weights) are recorded at once. A repo
whose commit sha is already indexed is skipped (see :data:`DONE`).

The listing, the crawl cursor and the batch functions are in :mod:`._hub`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
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
    from ..indexer.hub import CachedRevision, HubClient
    from ._registry import Registry

__all__ = ["DONE", "RetryPolicy", "HubIndexResult", "hub_client", "index_repo", "index_cached"]

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
class _Fetched:
    """A repo revision on disk, ready to index, and what fetching it cost."""

    info: Any  # indexer.hub's model info: sha, times, declared bases
    folder: Path
    transferred: int
    size: int | None
    num_parameters: int | None
    tries: int


def hub_client(client: "HubClient | None") -> "HubClient":
    """``client``, or one built from ``huggingface_hub``'s settings."""
    from ..indexer.hub import HubClient

    return client or HubClient()


def _row(s: Session, repo_id: str) -> HubRepo | None:
    return s.scalar(select(HubRepo).where(HubRepo.repo_id == repo_id))


def _done_sha(reg: "Registry", repo_id: str) -> str | None:
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
    done = _done_sha(reg, repo_id)
    if listed_sha is not None and done == listed_sha:
        return HubIndexResult(repo_id, listed_sha, "skipped")
    with tempfile.TemporaryDirectory(prefix="mothertree-lite-") as tmp:
        got = _fetch(reg, client, repo_id, revision, Path(tmp), done=done, listed_sha=listed_sha, lite=lite,
                     blocks=blocks, retry=retry, sleep=sleep)
        if isinstance(got, HubIndexResult):
            return got
        return _index_fetched(reg, repo_id, got, lite=lite)


def _fetch(
    reg: "Registry", client: "HubClient", repo_id: str, revision: str | None, tmp: Path, *,
    done: str | None, listed_sha: str | None, lite: bool, blocks: int, retry: RetryPolicy,
    sleep: Callable[[float], None],
) -> "_Fetched | HubIndexResult":
    """The repo on disk (a lite read goes to ``tmp``), or the result that ends it: skipped or failed."""
    from ..indexer.hub import is_transient, retry_after

    tries, sha = 0, listed_sha
    while True:
        tries += 1
        try:
            info = client.model_info(repo_id, revision)
            sha = info.sha
            if done == info.sha:
                return HubIndexResult(repo_id, info.sha, "skipped", attempts=tries)
            if lite:
                transferred, size, num_parameters = client.fetch_lite(info, tmp, blocks=blocks)
                return _Fetched(info, tmp, transferred, size, num_parameters, tries)
            folder, transferred, size = client.download(info)
            return _Fetched(info, folder, transferred, size, None, tries)
        except (MothertreeError, OSError, ValueError, *_network_errors()) as exc:
            if is_transient(exc) and tries < retry.max_attempts:
                sleep(retry.delay(tries, retry_after(exc)))
                continue
            return _fetch_failed(reg, repo_id, sha, exc, tries)


def _fetch_failed(reg: "Registry", repo_id: str, sha: str | None, exc: BaseException, tries: int) -> HubIndexResult:
    """Record a fetch that failed for good; offline mode is the caller's mistake and raises."""
    from ..indexer.hub import is_transient

    if not is_transient(exc) and _offline_error(exc):
        raise HubError(repo_id, f"offline ({exc}); unset HF_HUB_OFFLINE or use index-cache") from exc
    status = "unsupported" if isinstance(exc, UnsupportedFormatError) else "failed"
    msg = _message(exc)
    if isinstance(exc, _network_errors()):
        msg = (f"cannot reach the Hugging Face Hub ({msg}); check the network or HF_ENDPOINT, "
               "or index local copies with: mothertree index-cache")
    attempts = _record_failure(reg, repo_id, sha, status, msg, tries)
    return HubIndexResult(repo_id, sha, status, attempts=attempts, error=msg)


def _index_fetched(reg: "Registry", repo_id: str, got: _Fetched, *, lite: bool) -> HubIndexResult:
    """Index a fetched repo with its hub fields, in one transaction; a failure is recorded."""
    info = got.info
    try:
        result = _index_folder(
            reg, got.folder, name=repo_id, created_at=info.created_at, repo_id=repo_id, sha=info.sha,
            last_modified=info.last_modified, declared=(info.declared_base_models, info.declared_relation),
            lite=lite, source=f"hf://{repo_id}@{info.sha}" if lite else None,
            num_parameters=got.num_parameters, tries=got.tries, transferred=got.transferred, file_size=got.size,
        )
    except (MothertreeError, OSError, ValueError) as exc:
        msg = _message(exc)
        attempts = _record_failure(reg, repo_id, info.sha, "failed", msg, got.tries)
        return HubIndexResult(repo_id, info.sha, "failed", attempts=attempts, error=msg)
    with reg.session() as s:
        attempts = _row(s, repo_id).attempts  # type: ignore[union-attr]
    return HubIndexResult(
        repo_id, info.sha, "lite" if lite else result.status, attempts=attempts,
        bytes_transferred=got.transferred, file_size=got.size, revision=result.revision,
    )


def index_cached(reg: "Registry", rev: "CachedRevision") -> HubIndexResult:
    """Index one revision of the local Hugging Face cache (no network); a failure is recorded."""
    from ..indexer.hub import declared_from_card

    if _done_sha(reg, rev.repo_id) == rev.sha:
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
