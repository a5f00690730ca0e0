"""Hugging Face Hub client: fetch only what indexing needs, or read tensors by byte range.

Every request goes through ``huggingface_hub`` (its session, cache layout,
``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` handling), so a model fetched here is
an ordinary entry of the local Hugging Face cache that other tools reuse.

Two ways to get a model's weights:

* :meth:`HubClient.download` fetches the config, model card, adapter config
  and weight files of one revision (by commit sha, so a branch that moves
  mid-download cannot mix two commits) into the cache.
* :meth:`HubClient.fetch_lite` reads each safetensors header with two range
  requests, then only the byte ranges of the tensors fingerprinting needs
  (embeddings and the identity-carrying matrices of a few evenly spaced
  blocks), and writes them as one small safetensors file. A 7B model then
  costs about a tenth of its bytes.

Retries are the caller's business (the crawl records them per repo);
:func:`is_transient` and :func:`retry_after` say which failures deserve one.
This module imports nothing from the registry but its errors.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from ..registry.errors import HubError, UnreadableWeightsError, UnsupportedFormatError
from .readers import SAFETENSORS_DTYPES
from .roles import FUSED_ROLES, IDENTITY_ROLES, assign_role, detect_architecture

__all__ = [
    "METADATA_FILES",
    "HubListing",
    "HubModelInfo",
    "CachedRevision",
    "HubClient",
    "RangeReader",
    "weight_files",
    "hub_file",
    "lite_tensor_names",
    "declared_from_card",
    "is_offline",
    "is_transient",
    "retry_after",
]

#: Small files indexing reads besides the weights.
METADATA_FILES: tuple[str, ...] = ("config.json", "README.md", "adapter_config.json")
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_LITE_ROLES = IDENTITY_ROLES | frozenset(FUSED_ROLES)
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_BIN_INDEX = "pytorch_model.bin.index.json"


@dataclass(frozen=True)
class HubListing:
    """One repo as a listing returns it: enough to skip it when unchanged."""

    repo_id: str
    sha: str | None
    last_modified: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "sha": self.sha,
            "last_modified": self.last_modified.isoformat() if self.last_modified else None,
        }


@dataclass(frozen=True)
class HubModelInfo:
    """What the hub says about one revision of a model repo."""

    repo_id: str
    sha: str
    created_at: datetime | None
    last_modified: datetime | None
    declared_base_models: tuple[str, ...]
    declared_relation: str | None
    #: Root-level file names with their sizes in bytes (None when the hub did not say).
    files: tuple[tuple[str, int | None], ...]

    @property
    def file_names(self) -> tuple[str, ...]:
        return tuple(f for f, _ in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "sha": self.sha,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "last_modified": self.last_modified.isoformat() if self.last_modified else None,
            "declared_base_models": list(self.declared_base_models),
            "declared_relation": self.declared_relation,
            "files": [f for f, _ in self.files],
        }


@dataclass(frozen=True)
class CachedRevision:
    """One model revision already in the local Hugging Face cache."""

    repo_id: str
    sha: str
    folder: Path
    refs: tuple[str, ...]
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "sha": self.sha,
            "folder": str(self.folder),
            "refs": list(self.refs),
            "size_bytes": self.size_bytes,
        }


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (``huggingface_hub`` reads it, at import)."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: 408/429/5xx answers and dropped connections.

    ``huggingface_hub`` sometimes wraps the HTTP error (a failed HEAD becomes
    "file not in the local cache"), so the whole cause chain is examined.
    """
    import httpx2
    from huggingface_hub.errors import OfflineModeIsEnabled

    for e in _chain(exc):
        if isinstance(e, OfflineModeIsEnabled):
            return False
        if _status(e) in _TRANSIENT_STATUS:
            return True
        if isinstance(e, httpx2.TransportError):
            return True
    return False


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (``Retry-After`` on a 429/503), if it did."""
    for e in _chain(exc):
        response = getattr(e, "response", None)
        value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
        if value is not None and str(value).strip().isdigit():
            return float(value)
    return None


_DRIVE = re.compile(r"^[A-Za-z]:")


def hub_file(repo_id: str, name: object) -> str:
    """``name``, a file name the hub handed over, refused unless it stays inside the model folder.

    The repo's file list and a shard index's ``weight_map`` are data from the
    network: a name is joined to the local cache folder, or to a URL, only
    when it is a plain relative path: not empty, not absolute (nor a Windows
    drive), no ``.``/``..``/empty part, no backslash, no control character
    (NUL, ESC ...). Checked before anything is downloaded or read by range.

    Raises
    ------
    HubError
        Naming the repo and the refused name (escaped: no raw control character reaches a terminal).

    Examples
    --------
    >>> hub_file("org/m", "model-00001-of-00002.safetensors")
    'model-00001-of-00002.safetensors'
    >>> hub_file("org/m", "../../.bashrc")
    Traceback (most recent call last):
    ...
    mothertree.registry.errors.HubError: Hub repo 'org/m': the hub lists the file '../../.bashrc', which is not a plain relative path inside the model folder: refused
    """
    if not (
        isinstance(name, str) and name and not name.startswith("/") and "\\" not in name and not _DRIVE.match(name)
        and not any(unicodedata.category(c) == "Cc" for c in name)
        and all(part not in ("", ".", "..") for part in name.split("/"))
    ):
        raise HubError(
            repo_id, f"the hub lists the file {name!r}, which is not a plain relative path inside the model folder: "
            "refused"
        )
    return name


def weight_files(repo_id: str, files: tuple[str, ...]) -> tuple[str, ...]:
    """The weight files indexing needs among a repo's root files, safetensors first.

    A sharded repo returns only its index here; the shards are known once the
    index is read. Raises :class:`UnsupportedFormatError` when the repo holds
    no weights mothertree reads (GGUF-only, ONNX-only, or no weights at all).
    """
    names = set(files)
    for single in (_SAFETENSORS_INDEX, "model.safetensors"):
        if single in names:
            return (single,)
    loose = sorted(f for f in names if f.endswith(".safetensors") and "/" not in f)
    if loose:
        return tuple(loose)
    for single in (_BIN_INDEX, "pytorch_model.bin"):
        if single in names:
            return (single,)
    raise UnsupportedFormatError(
        repo_id, "no safetensors or pytorch_model.bin weights at the repo root (GGUF, ONNX and others are not read)"
    )


def declared_from_card(folder: Path) -> tuple[tuple[str, ...], str | None]:
    """``base_model`` and ``base_model_relation`` from a local README's YAML header."""
    from .model_card import read_model_card

    card = read_model_card(folder)
    return card.base_models, card.relation


def _declared(card: dict[str, Any]) -> tuple[tuple[str, ...], str | None]:
    from .model_card import declared_in

    info = declared_in(card)
    return info.base_models, info.relation


def lite_tensor_names(
    header: dict[str, tuple[str, tuple[int, ...]]], config: dict[str, Any] | None, *, blocks: int
) -> list[str]:
    """The tensors a lite index reads: identity roles of model-level tensors and of
    ``blocks`` evenly spaced blocks (first and last included), weights only.

    Parameters
    ----------
    header : dict
        ``name -> (dtype, shape)`` for every tensor of the model.
    config : dict, optional
        The model's ``config.json`` (decides the role table).
    blocks : int
        How many blocks to read; fewer blocks, fewer bytes, weaker evidence.
    """
    if blocks < 1:
        raise ValueError(f"blocks must be at least 1, got {blocks}")
    architecture = detect_architecture(config, header)
    assigned = {n: assign_role(n, architecture) for n in header}
    present = sorted({a.block for a in assigned.values() if a.block is not None})
    if len(present) <= blocks:
        keep = set(present)
    else:
        step = (len(present) - 1) / (blocks - 1) if blocks > 1 else 0
        keep = {present[round(i * step)] for i in range(blocks)}
    return sorted(
        n for n, a in assigned.items()
        if a.part == "weight" and a.role in _LITE_ROLES and (a.block is None or a.block in keep)
    )


class RangeReader:
    """Byte-range reads of one repo revision's files, counting every byte received.

    Parameters
    ----------
    repo_id, revision : str
        The repo and the commit sha to read.
    endpoint : str
        Hub URL.
    token : str or bool, optional
        Passed to ``huggingface_hub``'s header builder.
    """

    def __init__(self, repo_id: str, revision: str, *, endpoint: str, token: str | bool | None = None) -> None:
        from huggingface_hub.utils import build_hf_headers

        self.repo_id = repo_id
        self.revision = revision
        self.endpoint = endpoint
        self._headers = build_hf_headers(token=token)
        self.bytes_transferred = 0

    def read(self, filename: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``filename``."""
        hub_file(self.repo_id, filename)
        from huggingface_hub import get_session, hf_hub_url
        from huggingface_hub.utils import hf_raise_for_status

        if end <= start:
            return b""
        url = hf_hub_url(self.repo_id, filename, revision=self.revision, endpoint=self.endpoint)
        r = get_session().get(url, headers={**self._headers, "Range": f"bytes={start}-{end - 1}"})
        hf_raise_for_status(r)
        data = r.content
        self.bytes_transferred += len(data)
        if r.status_code == 200:  # the server ignored Range and sent the whole file
            data = data[start:end]
        if len(data) != end - start:
            raise UnreadableWeightsError(
                f"{self.repo_id}/{filename}", f"asked for bytes {start}-{end - 1}, got {len(data)} bytes"
            )
        return data

    def header(self, filename: str) -> tuple[dict[str, Any], int]:
        """A safetensors file's parsed header and the offset where its data starts."""
        (n,) = struct.unpack("<Q", self.read(filename, 0, 8))
        if n > 100_000_000:
            raise UnreadableWeightsError(f"{self.repo_id}/{filename}", f"header length {n} is implausible")
        try:
            header = json.loads(self.read(filename, 8, 8 + n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UnreadableWeightsError(f"{self.repo_id}/{filename}", f"header is not valid JSON ({exc})") from None
        return header, 8 + n


class HubClient:
    """Reads model repos through ``huggingface_hub``.

    Parameters
    ----------
    endpoint : str, optional
        Hub URL; default ``huggingface_hub``'s (``HF_ENDPOINT``).
    cache_dir : path, optional
        Hugging Face cache; default ``huggingface_hub``'s (``HF_HUB_CACHE``).
    token : str or bool, optional
        Access token; default the one ``huggingface_hub`` finds.
    """

    def __init__(
        self, *, endpoint: str | None = None, cache_dir: str | Path | None = None, token: str | bool | None = None
    ) -> None:
        from huggingface_hub import HfApi, constants

        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self.cache_dir = Path(cache_dir or constants.HF_HUB_CACHE)
        self.token = token
        self.api = HfApi(endpoint=self.endpoint, token=token)

    def list_models(
        self,
        *,
        author: str | None = None,
        search: str | None = None,
        filter: str | None = None,
        limit: int | None = None,
    ) -> Iterator[HubListing]:
        """Model repos, most recently modified first (what an incremental crawl needs)."""
        for m in self.api.list_models(
            author=author, search=search, filter=filter, limit=limit, sort="last_modified",
            expand=["sha", "lastModified", "createdAt"],
        ):
            yield HubListing(m.id, m.sha, m.last_modified)

    def model_info(self, repo_id: str, revision: str | None = None) -> HubModelInfo:
        """One revision's sha, dates, declared base and file list."""
        m = self.api.model_info(repo_id, revision=revision, files_metadata=True)
        if m.sha is None:
            raise HubError(repo_id, "the hub returned no commit sha for this revision")
        bases, relation = _declared(m.card_data.to_dict() if m.card_data is not None else {})
        files = tuple((s.rfilename, s.size) for s in (m.siblings or ()) if "/" not in s.rfilename)
        return HubModelInfo(repo_id, m.sha, m.created_at, m.last_modified, bases, relation, files)

    def _get(self, info: HubModelInfo, filename: str) -> tuple[Path, int]:
        """One file of the revision into the cache; returns its path and bytes downloaded (0 if cached)."""
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        hub_file(info.repo_id, filename)

        cached = try_to_load_from_cache(info.repo_id, filename, cache_dir=self.cache_dir, revision=info.sha)
        path = Path(
            hf_hub_download(
                info.repo_id, filename, revision=info.sha, cache_dir=self.cache_dir,
                endpoint=self.endpoint, token=self.token,
            )
        )
        return path, 0 if isinstance(cached, str) else path.stat().st_size

    def _metadata(self, info: HubModelInfo) -> tuple[dict[str, Path], int]:
        got, transferred = {}, 0
        for f in METADATA_FILES:
            if f in info.file_names:
                got[f], n = self._get(info, f)
                transferred += n
        return got, transferred

    def _shards(self, info: HubModelInfo, index_file: str) -> tuple[tuple[str, ...], int]:
        path, n = self._get(info, index_file)
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
            shards = tuple(dict.fromkeys(weight_map.values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise UnreadableWeightsError(f"{info.repo_id}/{index_file}", f"no readable weight_map ({exc})") from None
        return tuple(hub_file(info.repo_id, f) for f in shards), n

    def download(self, info: HubModelInfo) -> tuple[Path, int, int]:
        """Fetch config, card, adapter config and weights of one revision into the cache.

        Returns
        -------
        folder : Path
            The cache snapshot folder (``.../snapshots/<sha>``), ready for indexing.
        bytes_transferred : int
            Bytes downloaded now (files already cached cost nothing).
        file_size : int
            Total size of the weight files.
        """
        paths, transferred = self._metadata(info)
        names = weight_files(info.repo_id, info.file_names)
        if names[0] in (_SAFETENSORS_INDEX, _BIN_INDEX):
            shards, n = self._shards(info, names[0])
            transferred += n
            names = shards
        size = 0
        for f in names:
            path, n = self._get(info, f)
            transferred += n
            size += path.stat().st_size
            paths[f] = path
        folder = next(iter(paths.values())).parent
        return folder, transferred, size

    def fetch_lite(self, info: HubModelInfo, dest: Path, *, blocks: int = 3) -> tuple[int, int, int]:
        """Write a partial model to ``dest``: small files, and only the tensors
        :func:`lite_tensor_names` picks, read by byte range.

        Returns
        -------
        bytes_transferred : int
            Bytes received: small files, headers and tensor ranges.
        file_size : int
            Total size of the repo's weight files, none of which is downloaded whole.
        num_parameters : int
            Elements of every tensor in the headers: the whole model's size, which
            the partial file alone would understate.
        """
        paths, transferred = self._metadata(info)
        dest.mkdir(parents=True, exist_ok=True)
        for name, path in paths.items():
            shutil.copyfile(path, dest / name)
        config = json.loads((dest / "config.json").read_text()) if "config.json" in paths else None
        names = weight_files(info.repo_id, info.file_names)
        if names[0].endswith(".bin") or names[0] == _BIN_INDEX:
            raise UnsupportedFormatError(
                f"{info.repo_id}/{names[0]}", "--lite reads safetensors only; index this repo without --lite"
            )
        if names[0] == _SAFETENSORS_INDEX:
            names, n = self._shards(info, names[0])
            transferred += n
        reader = RangeReader(info.repo_id, info.sha, endpoint=self.endpoint, token=self.token)
        entries: dict[str, tuple[str, dict[str, Any], int]] = {}
        size = 0
        for f in names:
            header, data_start = reader.header(f)
            tensors = {t: m for t, m in header.items() if t != "__metadata__"}
            entries.update((t, (f, m, data_start)) for t, m in tensors.items())
            size += data_start + max((m["data_offsets"][1] for m in tensors.values()), default=0)
        wanted = lite_tensor_names(
            {t: (m["dtype"], tuple(m["shape"])) for t, (_, m, _) in entries.items()}, config, blocks=blocks
        )
        out_header: dict[str, Any] = {"__metadata__": {"format": "pt", "mothertree": "lite"}}
        chunks, offset = [], 0
        for tname in wanted:
            f, meta, data_start = entries[tname]
            if meta["dtype"] not in SAFETENSORS_DTYPES:
                continue
            begin, end = meta["data_offsets"]
            chunks.append(reader.read(f, data_start + begin, data_start + end))
            out_header[tname] = {"dtype": meta["dtype"], "shape": meta["shape"], "data_offsets": [offset, offset + end - begin]}
            offset += end - begin
        raw = json.dumps(out_header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(dest / "model.safetensors", "wb") as fh:
            fh.write(struct.pack("<Q", len(raw)) + raw)
            for c in chunks:
                fh.write(c)
        num_parameters = sum(_numel(m["shape"]) for _, m, _ in entries.values())
        return transferred + reader.bytes_transferred, size, num_parameters

    def cached_revisions(self) -> list[CachedRevision]:
        """Every model revision in the local cache, no network: the ``refs/main`` one
        for repos that have it, else the most recently modified snapshot."""
        from huggingface_hub import scan_cache_dir

        if not self.cache_dir.is_dir():
            return []
        out = []
        for repo in sorted(scan_cache_dir(self.cache_dir).repos, key=lambda r: r.repo_id):
            if repo.repo_type != "model" or not repo.revisions:
                continue
            revs = sorted(repo.revisions, key=lambda r: ("main" in r.refs, r.last_modified), reverse=True)
            r = revs[0]
            out.append(CachedRevision(repo.repo_id, r.commit_hash, Path(r.snapshot_path), tuple(sorted(r.refs)), r.size_on_disk))
        return out

    def cached_revision(self, repo_id: str, revision: str | None) -> CachedRevision:
        """The cached revision of ``repo_id`` named by a ref or (a prefix of) its sha."""
        from huggingface_hub import scan_cache_dir

        repos = [r for r in scan_cache_dir(self.cache_dir).repos if r.repo_id == repo_id and r.repo_type == "model"] \
            if self.cache_dir.is_dir() else []
        for repo in repos:
            want = revision or "main"
            for r in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
                if want in r.refs or r.commit_hash.startswith(want) or (revision is None and not r.refs):
                    return CachedRevision(repo_id, r.commit_hash, Path(r.snapshot_path), tuple(sorted(r.refs)), r.size_on_disk)
        raise HubError(
            repo_id,
            f"revision {revision or 'main'} is not in the local cache at {self.cache_dir} and HF_HUB_OFFLINE is set; "
            "unset HF_HUB_OFFLINE to download it",
        )


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
