"""A local stand-in for the Hugging Face Hub, serving real generated model repos.

``huggingface_hub`` runs unmodified against it: the server answers the routes
that client calls (``/api/models`` listing with ``Link`` pagination, model
info by branch or sha, ``/{repo}/resolve/{rev}/{file}`` with HEAD, ETag,
``X-Repo-Commit`` and ``Range``). It counts every request per route and repo,
and can fail a route of a repo N times (429 with ``Retry-After: 0``, or 5xx)
to exercise retries.

The repos are tiny transformers models (hidden 32-64, two blocks): four
independent roots, and children made by perturbing their weights (fine-tunes,
an int8-grid quantized copy, a merged LoRA, a grandchild, a sharded child).
Some cards declare their base, some derive without saying so, and one
declares the wrong parent. :class:`Truth` holds the ground truth.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import pytest

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes]
    created_at: datetime
    last_modified: datetime
    card: dict | None = None
    sha: str = ""

    def __post_init__(self) -> None:
        if not self.sha:
            self.sha = self.compute_sha()

    def compute_sha(self) -> str:
        h = hashlib.sha1(self.repo_id.encode())
        for name in sorted(self.files):
            h.update(name.encode() + hashlib.sha256(self.files[name]).digest())
        return h.hexdigest()

    def info(self) -> dict:
        return {
            "id": self.repo_id,
            "modelId": self.repo_id,
            "author": self.repo_id.split("/")[0],
            "sha": self.sha,
            "createdAt": _iso(self.created_at),
            "lastModified": _iso(self.last_modified),
            "private": False,
            "tags": ["safetensors", "text-generation"],
            "cardData": self.card,
            "siblings": [{"rfilename": n, "size": len(b)} for n, b in sorted(self.files.items())],
        }


@dataclass(frozen=True)
class Truth:
    """Ground truth of the generated repos.

    ``parent`` maps each derived repo to the repo its weights came from;
    ``declared`` maps repos whose card names a base to that base.
    """

    roots: tuple[str, ...]
    parent: dict[str, str]
    relation: dict[str, str]
    declared: dict[str, str]
    unsupported: tuple[str, ...]

    @property
    def undeclared(self) -> set[str]:
        """Derived repos whose card names no base."""
        return {c for c in self.parent if c not in self.declared}

    @property
    def misdeclared(self) -> set[str]:
        """Repos whose card names a base the weights did not come from."""
        return {c for c, b in self.declared.items() if self.parent.get(c) != b}

    def family_of(self, repo: str) -> str:
        while repo in self.parent:
            repo = self.parent[repo]
        return repo


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _card_text(card: dict | None, title: str) -> bytes:
    if not card:
        return f"# {title}\n".encode()
    lines = ["---"]
    for k, v in card.items():
        lines.append(f"{k}: {v}")
    return ("\n".join(lines) + f"\n---\n# {title}\n").encode()


def _root_tensors(kind: str, seed: int, hidden: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if kind == "llama":
        cfg = LlamaConfig(
            hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=64, max_position_embeddings=64, tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(cfg)
    else:
        cfg = GPT2Config(n_embd=hidden, n_layer=2, n_head=4, vocab_size=64, n_positions=64,
                         bos_token_id=0, eos_token_id=0)
        model = GPT2LMHeadModel(cfg)
    cfg.architectures = [type(model).__name__]
    tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if kind == "gpt2":  # tied head is not stored in hub files
        tensors.pop("lm_head.weight", None)
    return tensors, cfg.to_json_string().encode()


def _derive(tensors, how: str, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in tensors.items():
        if not t.is_floating_point() or t.ndim < 2:
            out[name] = t.clone()
            continue
        if how == "finetune":
            out[name] = t + 0.05 * t.std() * torch.randn(t.shape, generator=g)
        elif how == "quantized":
            scale = t.abs().max() / 127
            out[name] = torch.round(t / scale) * scale
        elif how == "lora-merged" and any(k in name for k in ("q_proj", "v_proj", "c_attn")):
            a = torch.randn(2, t.shape[1], generator=g)
            b = torch.randn(t.shape[0], 2, generator=g)
            out[name] = t + 0.1 * t.std() * (b @ a) / 2
        else:
            out[name] = t.clone()
    return out


def _weights(tensors, *, shards: int = 1) -> dict[str, bytes]:
    from safetensors.torch import save

    if shards == 1:
        return {"model.safetensors": save(tensors, metadata={"format": "pt"})}
    names = sorted(tensors)
    files, weight_map = {}, {}
    for i in range(shards):
        part = names[i::shards]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        files[fname] = save({n: tensors[n] for n in part}, metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}, "weight_map": weight_map}
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    return files


@cache
def build_repos() -> tuple[tuple[FakeRepo, ...], Truth]:
    """The generated repos and their ground truth (built once per process, ~2 s)."""
    roots = {
        "acme/llama-base": ("llama", 0, 32),
        "acme/llama-alt": ("llama", 1, 32),
        "gpt/gpt2-base": ("gpt2", 2, 32),
        "zeta/llama-wide": ("llama", 3, 64),
    }
    # child -> (parent, how, declared base or None, declared relation or None, shards)
    children = {}
    for root in roots:
        short = root.split("/")[1]
        children[f"ft/{short}-chat"] = (root, "finetune", root, "finetune", 1)
        children[f"anon/{short}-tuned"] = (root, "finetune", None, None, 1)
        children[f"quant/{short}-int8"] = (root, "quantized", root, "quantized", 1)
        children[f"lora/{short}-merged"] = (root, "lora-merged", None, None, 1)
    children["ft/llama-base-chat-v2"] = ("ft/llama-base-chat", "finetune", "ft/llama-base-chat", "finetune", 1)
    children["shard/llama-base-sharded"] = ("acme/llama-base", "finetune", None, None, 2)
    children["mallory/llama-alt-instruct"] = ("acme/llama-alt", "finetune", "acme/llama-base", "finetune", 1)

    repos: list[FakeRepo] = []
    weights: dict[str, dict] = {}
    configs: dict[str, bytes] = {}
    t = T0
    for i, (repo_id, (kind, seed, hidden)) in enumerate(roots.items()):
        weights[repo_id], configs[repo_id] = _root_tensors(kind, seed, hidden)
        files = {**_weights(weights[repo_id]), "config.json": configs[repo_id],
                 "README.md": _card_text({"license": "mit"}, repo_id)}
        repos.append(FakeRepo(repo_id, files, t, t + timedelta(minutes=30), card={"license": "mit"}))
        t += timedelta(hours=1)
    for i, (repo_id, (parent, how, base, relation, shards)) in enumerate(children.items()):
        weights[repo_id] = _derive(weights[parent], how, seed=100 + i)
        configs[repo_id] = configs[parent]
        card = {"license": "mit"}
        if base:
            card |= {"base_model": base, "base_model_relation": relation}
        files = {**_weights(weights[repo_id], shards=shards), "config.json": configs[repo_id],
                 "README.md": _card_text(card, repo_id)}
        repos.append(FakeRepo(repo_id, files, t, t + timedelta(minutes=30), card=card))
        t += timedelta(hours=1)
    repos.append(FakeRepo("acme/tokenizer-only", {"tokenizer.json": b"{}", "README.md": b"# tok\n"}, t, t, card=None))
    truth = Truth(
        roots=tuple(roots),
        parent={c: p for c, (p, *_rest) in children.items()},
        relation={c: how for c, (_p, how, *_r) in children.items()},
        declared={c: base for c, (_p, _h, base, *_r) in children.items() if base},
        unsupported=("acme/tokenizer-only",),
    )
    return tuple(repos), truth


@dataclass
class _Failure:
    status: int
    times: int
    route: str


@dataclass
class FakeHub:
    """The server's state: repos by id, request counts, failures to inject."""

    repos: dict[str, FakeRepo]
    page_size: int = 5
    requests: Counter = field(default_factory=Counter)
    failures: dict[str, list[_Failure]] = field(default_factory=dict)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, repo_id: str, status: int, times: int, route: str = "info") -> None:
        """Answer the next ``times`` requests of ``route`` ("info", "resolve", "list") for ``repo_id`` with ``status``."""
        self.failures.setdefault(repo_id, []).append(_Failure(status, times, route))

    def count(self, route: str, repo_id: str | None = None) -> int:
        return sum(n for (r, repo, _f), n in self.requests.items() if r == route and repo_id in (None, repo))

    def downloads(self) -> Counter:
        """Full-file GETs per (repo, file)."""
        return Counter({(repo, f): n for (r, repo, f), n in self.requests.items() if r == "get"})

    def touch(self, repo_id: str, filename: str, content: bytes, when: datetime) -> str:
        """Commit a changed file: new sha and lastModified, as a push would."""
        repo = self.repos[repo_id]
        repo.files[filename] = content
        repo.last_modified = when
        repo.sha = repo.compute_sha()
        return repo.sha

    def _take_failure(self, repo_id: str, route: str) -> int | None:
        with self.lock:
            for f in self.failures.get(repo_id, []):
                if f.route == route and f.times > 0:
                    f.times -= 1
                    return f.status
        return None


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
            self.send_response(status)
            hdrs = {"Content-Length": str(len(body)), **(headers or {})}
            for k, v in hdrs.items():
                self.send_header(k, v)
            self.end_headers()
            if not head and body:
                self.wfile.write(body)

        def _json(self, status: int, obj, headers: dict | None = None) -> None:
            self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, code: str | None, head: bool = False, extra: dict | None = None) -> None:
            headers = {"X-Error-Code": code} if code else {}
            if status == 429:
                headers["Retry-After"] = "0"
            self._send(status, b"" if head else json.dumps({"error": code or "error"}).encode(), {**headers, **(extra or {})}, head)

        def _count(self, route: str, repo: str | None, fname: str | None = None) -> None:
            with hub.lock:
                hub.requests[(route, repo, fname)] += 1

        def do_HEAD(self) -> None:
            self._route(head=True)

        def do_GET(self) -> None:
            self._route(head=False)

        def _route(self, head: bool) -> None:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            query = parse_qs(parts.query)
            if path == "/api/models":
                return self._list(query)
            if path.startswith("/api/models/"):
                rest = path[len("/api/models/"):]
                repo_id, _, rev = rest.partition("/revision/")
                return self._info(repo_id, rev or None)
            if "/resolve/" in path:
                repo_id, _, tail = path.lstrip("/").partition("/resolve/")
                rev, _, fname = tail.partition("/")
                return self._resolve(repo_id, rev, fname, head)
            self._error(404, None, head)

        def _list(self, query: dict) -> None:
            self._count("list", None)
            items = sorted(hub.repos.values(), key=lambda r: r.last_modified, reverse=True)
            if "author" in query:
                items = [r for r in items if r.repo_id.split("/")[0] == query["author"][0]]
            if "search" in query:
                items = [r for r in items if query["search"][0].lower() in r.repo_id.lower()]
            start = int(query.get("cursor", ["0"])[0])
            per_page = min(hub.page_size, int(query.get("limit", [hub.page_size])[0]))
            page = items[start:start + per_page]
            headers = {}
            if start + per_page < len(items):
                q = {k: v[0] for k, v in query.items() if k not in ("cursor", "expand")}
                q["cursor"] = str(start + per_page)
                headers["Link"] = f'<{hub.url}/api/models?{urlencode(q)}>; rel="next"'
            body = [{k: v for k, v in r.info().items() if k not in ("siblings", "cardData")} for r in page]
            self._json(200, body, headers)

        def _info(self, repo_id: str, rev: str | None) -> None:
            self._count("info", repo_id)
            status = hub._take_failure(repo_id, "info")
            if status:
                return self._error(status, None)
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound")
            if rev not in (None, "main", repo.sha):
                return self._error(404, "RevisionNotFound")
            self._json(200, repo.info())

        def _resolve(self, repo_id: str, rev: str, fname: str, head: bool) -> None:
            repo = hub.repos.get(repo_id)
            rng = self.headers.get("Range")
            self._count("head" if head else "range" if rng else "get", repo_id, fname)
            status = hub._take_failure(repo_id, "resolve")
            if status:
                return self._error(status, None, head)
            if repo is None:
                return self._error(404, "RepoNotFound", head)
            if rev not in ("main", repo.sha):
                return self._error(404, "RevisionNotFound", head)
            commit = {"X-Repo-Commit": repo.sha}
            if fname not in repo.files:
                return self._error(404, "EntryNotFound", head, commit)
            data = repo.files[fname]
            headers = {**commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Accept-Ranges": "bytes",
                       "Content-Type": "application/octet-stream"}
            if rng and not head:
                a, _, b = rng.removeprefix("bytes=").partition("-")
                start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return self._send(206, data[start:end + 1], headers)
            self._send(200, data, headers, head)

    return Handler


class FakeHubServer:
    """Runs a :class:`FakeHub` on a free local port in a background thread."""

    def __init__(self, repos: tuple[FakeRepo, ...], *, page_size: int = 5) -> None:
        fresh = {r.repo_id: FakeRepo(r.repo_id, dict(r.files), r.created_at, r.last_modified, r.card, r.sha) for r in repos}
        self.hub = FakeHub(fresh, page_size=page_size)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.hub))
        self._server.daemon_threads = True
        self.hub.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self.hub

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A running fake hub with fresh counters; ``huggingface_hub`` points at it and
    caches into ``tmp_path/hf``. ``huggingface_hub`` reads ``HF_ENDPOINT`` once, at
    import, into ``ENDPOINT`` and the resolve-URL template, so both are patched."""
    from huggingface_hub import constants

    repos, _truth = build_repos()
    with FakeHubServer(repos) as hub:
        cache_dir = tmp_path / "hf" / "hub"
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
        yield hub


@pytest.fixture
def truth() -> Truth:
    return build_repos()[1]


__all__ = ["FakeRepo", "FakeHub", "FakeHubServer", "Truth", "build_repos", "fake_hub", "truth"]
