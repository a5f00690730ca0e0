"""Hub indexing against the fake hub: crawl, resume, retries, lite reads, the offline cache."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fakehub import fake_hub, truth  # noqa: F401  (fixtures)
from sqlalchemy import select

from mothertree.indexer.hub import HubClient
from mothertree.registry import Registry
from mothertree.registry._hub import RetryPolicy, crawl_hub, index_cache, index_hub, parse_repo_spec
from mothertree.registry._schema import CrawlCursor, HubRepo, Model, Tensor
from mothertree.registry.errors import HubError

FAST = RetryPolicy(max_attempts=3, base_delay_s=0)


def _rows(reg, cls):
    with reg.session() as s:
        return {getattr(r, "repo_id", None) or r.name: r for r in s.scalars(select(cls))}


def test_parse_repo_spec():
    assert parse_repo_spec("org/m") == ("org/m", None)
    assert parse_repo_spec("org/m@v1.0") == ("org/m", "v1.0")
    with pytest.raises(ValueError, match="expected REPO_ID or REPO_ID@REVISION, got 'org/m@'"):
        parse_repo_spec("org/m@")


def test_crawl_indexes_every_repo_with_hub_fields(registry, fake_hub, truth):
    report = crawl_hub(registry, retry=FAST)
    assert report.complete
    assert report.counts == {"indexed": len(fake_hub.repos) - 1, "unsupported": 1}
    models = _rows(registry, Model)
    for repo_id, repo in fake_hub.repos.items():
        if repo_id in truth.unsupported:
            assert repo_id not in models
            continue
        m = models[repo_id]
        assert (m.repo_id, m.hub_sha) == (repo_id, repo.sha)
        assert m.created_at.replace(tzinfo=None) == repo.created_at.replace(tzinfo=None)
        assert m.hub_last_modified.replace(tzinfo=None) == repo.last_modified.replace(tzinfo=None)
        assert (m.declared_base_models or [None])[0] == truth.declared.get(repo_id)
        assert m.declared_relation == (truth.relation[repo_id] if repo_id in truth.declared else None)
    repos = _rows(registry, HubRepo)
    assert repos["acme/tokenizer-only"].status == "unsupported"
    assert repos["shard/llama-base-sharded"].file_size == sum(
        len(b) for f, b in fake_hub.repos["shard/llama-base-sharded"].files.items() if f.endswith(".safetensors")
    )
    newest = max(r.last_modified for r in fake_hub.repos.values())
    assert report.watermark == newest


def test_interrupted_crawl_resumes_without_repeating_work(registry, fake_hub):
    seen = []

    def stop_after_seven(event):
        seen.append(event.item.repo_id)
        if len(seen) == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        crawl_hub(registry, retry=FAST, progress=stop_after_seven)
    with registry.session() as s:
        cursor = s.scalar(select(CrawlCursor))
        assert (cursor.status, cursor.watermark, cursor.repos_listed) == ("interrupted", None, 7)
    assert len(_rows(registry, HubRepo)) == 7  # the seventh committed before the interrupt

    report = crawl_hub(registry, retry=FAST)
    assert report.counts["skipped"] == 7
    assert all(fake_hub.count("info", r) == 1 for r in fake_hub.repos)
    assert set(fake_hub.downloads().values()) == {1}  # every file fetched exactly once
    assert len(_rows(registry, Model)) == len(fake_hub.repos) - 1

    requests_before = sum(fake_hub.requests.values())
    again = crawl_hub(registry, retry=FAST)
    assert [r.status for r in again.results] == ["skipped"]  # the newest sits at the watermark
    assert sum(fake_hub.requests.values()) - requests_before == 1  # one listing page, nothing else


def test_changed_repo_is_reindexed(registry, fake_hub):
    crawl_hub(registry, retry=FAST, author="acme")
    repo = fake_hub.repos["acme/llama-alt"]
    new_sha = fake_hub.touch("acme/llama-alt", "README.md", b"# edited\n", repo.last_modified + timedelta(days=30))
    report = crawl_hub(registry, retry=FAST, author="acme")
    done = [(r.repo_id, r.status) for r in report.results if r.status != "skipped"]
    assert done == [("acme/llama-alt", "unchanged")]
    assert _rows(registry, Model)["acme/llama-alt"].hub_sha == new_sha


def test_transient_errors_are_retried_and_recorded(registry, fake_hub):
    fake_hub.fail("acme/llama-base", 429, times=2)
    fake_hub.fail("acme/llama-alt", 500, times=10)
    waits = []
    report = crawl_hub(registry, retry=RetryPolicy(max_attempts=3, base_delay_s=0.5), sleep=waits.append,
                       author="acme")
    by_repo = {r.repo_id: r for r in report.results}
    assert (by_repo["acme/llama-base"].status, by_repo["acme/llama-base"].attempts) == ("indexed", 3)
    alt = by_repo["acme/llama-alt"]
    assert (alt.status, alt.attempts) == ("failed", 3)
    assert "500" in alt.error
    assert waits.count(0.0) == 2  # Retry-After: 0 on each 429
    assert 0.5 in waits and 1.0 in waits  # exponential backoff for the 500s
    row = _rows(registry, HubRepo)["acme/llama-alt"]
    assert (row.status, row.attempts) == ("failed", 3)
    # the watermark waits for the failed repo, so the next crawl lists it again
    assert report.watermark == fake_hub.repos["acme/llama-alt"].last_modified

    fake_hub.failures.clear()
    second = crawl_hub(registry, retry=FAST, author="acme")
    assert {r.repo_id: r.status for r in second.results if r.status != "skipped"} == {"acme/llama-alt": "indexed"}
    assert _rows(registry, HubRepo)["acme/llama-alt"].attempts == 4


def test_index_hub_by_revision_skips_known_sha_and_records_missing(registry, fake_hub):
    sha = fake_hub.repos["acme/llama-base"].sha
    first = index_hub(registry, [f"acme/llama-base@{sha}", "nobody/missing"], retry=FAST)
    assert [(r.repo_id, r.status) for r in first.results] == [("acme/llama-base", "indexed"), ("nobody/missing", "failed")]
    assert first.results[1].error.startswith("RepositoryNotFoundError")
    assert first.results[1].attempts == 1  # a 404 is not retried
    again = index_hub(registry, ["acme/llama-base"], retry=FAST)
    assert again.results[0].status == "skipped"
    assert fake_hub.count("get", "acme/llama-base") == 3  # config, card, weights: once


def test_lite_reads_a_fraction_by_range(registry, fake_hub):
    report = index_hub(registry, ["zeta/llama-wide"], lite=True, blocks=1, retry=FAST)
    r = report.results[0]
    weights = len(fake_hub.repos["zeta/llama-wide"].files["model.safetensors"])
    assert r.status == "lite" and r.file_size == weights
    assert 0 < r.bytes_transferred < 0.7 * weights
    assert fake_hub.count("get", "zeta/llama-wide") == 2  # config and card only: the weights by range
    with registry.session() as s:
        m = s.scalar(select(Model).where(Model.name == "zeta/llama-wide"))
        names = set(s.scalars(select(Tensor.name).where(Tensor.model_id == m.id)))
        assert m.status == "lite" and m.source.startswith("hf://zeta/llama-wide@")
    assert "model.embed_tokens.weight" in names
    assert {n.split(".")[2] for n in names if n.startswith("model.layers.")} == {"0"}
    assert not any("norm" in n or "lm_head" in n for n in names)
    full = Registry(f"sqlite:///{registry.home.parent / 'full.db'}")
    index_hub(full, ["zeta/llama-wide"], retry=FAST)
    assert full.model("zeta/llama-wide").model.num_parameters == m.num_parameters
    full.close()


def test_offline_uses_only_the_cache(registry, fake_hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    crawl_hub(registry, retry=FAST, author="acme")
    before = sum(fake_hub.requests.values())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set; use: mothertree index-cache"):
        crawl_hub(registry, retry=FAST)
    other = Registry(f"sqlite:///{tmp_path / 'offline.db'}")
    report = index_cache(other)
    assert {r.repo_id: r.status for r in report.results} == {
        "acme/llama-base": "indexed", "acme/llama-alt": "indexed", "acme/tokenizer-only": "unsupported",
    }
    m = other.model("acme/llama-base").model
    assert m.declared_base_models in (None, ())
    assert index_hub(other, ["acme/llama-alt"]).results[0].status == "skipped"
    with pytest.raises(HubError, match="not in the local cache"):
        index_hub(other, ["gpt/gpt2-base"])
    assert sum(fake_hub.requests.values()) == before
    other.close()


def test_a_failed_hub_update_leaves_no_model(registry, fake_hub, monkeypatch):
    import mothertree.registry._hub_repo as hubmod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(hubmod, "_apply_hub_fields", boom)
    report = index_hub(registry, ["acme/llama-base"], retry=FAST)
    assert report.results[0].status == "failed"
    assert "acme/llama-base" not in _rows(registry, Model)


def test_client_defaults_follow_huggingface_hub_constants(fake_hub):
    client = HubClient()
    assert client.endpoint == fake_hub.url
    assert [m.repo_id for m in client.list_models(author="gpt")][-1] == "gpt/gpt2-base"


#: File names a hostile (or broken) hub may list: each must be refused before any request for it.
HOSTILE_NAMES = (
    "../../../escape.safetensors", "/tmp/absolute.safetensors", "shards/../../up.safetensors",
    "..\\..\\windows.safetensors", "C:evil.safetensors", "nul\x00byte.safetensors", "\x1b[2Jesc.safetensors",
    "./dot.safetensors", "double//slash.safetensors",
)


def _requested(fake_hub, name: str) -> int:
    return sum(n for (_route, _repo, f), n in fake_hub.requests.items() if f == name)


@pytest.mark.parametrize("lite", [False, True], ids=["download", "lite"])
def test_hostile_shard_names_in_an_index_are_refused_before_any_request(fake_hub, tmp_path, lite):
    import json

    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    repo_id = "shard/llama-base-sharded"
    repo = fake_hub.repos[repo_id]
    index = json.loads(repo.files["model.safetensors.index.json"])
    first = sorted(set(index["weight_map"].values()))[0]
    when = repo.last_modified
    for name in HOSTILE_NAMES:
        repo.files[name] = repo.files[first]  # a naive client would fetch it and write it wherever it points
        weight_map = {t: (name if f == first else f) for t, f in index["weight_map"].items()}
        when += timedelta(minutes=1)
        fake_hub.touch(repo_id, "model.safetensors.index.json", json.dumps({**index, "weight_map": weight_map}).encode(), when)
        result = index_hub(reg, [repo_id], lite=lite, retry=FAST).results[0]
        assert result.status == "failed" and result.attempts == 1, (name, result)
        assert f"the hub lists the file {name!r}, which is not a plain relative path" in result.error
        assert "\x1b" not in result.error and "\x00" not in result.error
        assert _requested(fake_hub, name) == 0, name
        assert repo_id not in _rows(reg, Model)
    reg.close()


def test_hostile_names_in_the_file_list_are_refused_before_any_request(fake_hub, tmp_path):
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    repo_id = "acme/llama-alt"
    repo = fake_hub.repos[repo_id]
    weights = repo.files.pop("model.safetensors")  # loose safetensors files at the root are read as they are listed
    when = repo.last_modified
    for name in ("..\\..\\evil.safetensors", "\x1b]0;pwned\x07.safetensors", "C:evil.safetensors"):
        repo.files = {n: b for n, b in repo.files.items() if n.endswith((".json", ".md"))}
        when += timedelta(minutes=1)
        fake_hub.touch(repo_id, name, weights, when)
        result = index_hub(reg, [repo_id], retry=FAST).results[0]
        assert result.status == "failed" and "not a plain relative path inside the model folder" in result.error
        assert _requested(fake_hub, name) == 0 and repo_id not in _rows(reg, Model)
    reg.close()


def test_hub_file_accepts_plain_relative_names_and_refuses_the_rest():
    from mothertree.indexer.hub import hub_file

    for ok in ("model.safetensors", "model-00001-of-00002.safetensors", "onnx/model.onnx", "a..b.safetensors"):
        assert hub_file("org/m", ok) == ok
    for bad in (*HOSTILE_NAMES, "", None, 3, ["x"], "trailing/", "\u0085next-line.safetensors"):
        with pytest.raises(HubError, match=r"Hub repo 'org/m': the hub lists the file .* refused"):
            hub_file("org/m", bad)
