"""``crawl-hub --ray``: downloads and fingerprints as Ray tasks, rows written by the crawling process."""

from __future__ import annotations

import faiss
import pytest
from fakehub import fake_hub  # noqa: F401  (fixture)
from sqlalchemy import func, select

from mothertree.indexer.hub import HubClient
from mothertree.registry import RayFanOut, Registry, crawl_hub
from mothertree.registry._hub import RetryPolicy
from mothertree.registry._models import as_utc
from mothertree.registry._schema import CrawlCursor, Fingerprint, HubRepo, Model, Tensor
from mothertree.registry._faiss_index import index_ids

pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a local Ray starts in 10-30 s on the shared 2-core machine

FAST = RetryPolicy(max_attempts=3, base_delay_s=0)


def _state(reg: Registry) -> dict:
    """What a crawl leaves in SQL, by repo: models with their hub fields, row counts, hub_repos rows."""
    with reg.session() as s:
        models = {
            m.name: (m.content_digest, m.hub_sha, m.revision, m.num_parameters, m.declared_relation,
                     tuple(m.declared_base_models or ()), m.status,
                     s.scalar(select(func.count()).where(Tensor.model_id == m.id)),
                     s.scalar(select(func.count()).where(Fingerprint.model_id == m.id)))
            for m in s.scalars(select(Model))
        }
        repos = {r.repo_id: (r.sha, r.status, r.attempts, r.file_size, r.error) for r in s.scalars(select(HubRepo))}
        cursor = s.scalar(select(CrawlCursor))
        return {"models": models, "repos": repos, "watermark": as_utc(cursor.watermark), "status": cursor.status}


def _assert_faiss_in_step(reg: Registry) -> None:
    """Every index file on disk holds exactly the SQL ids of its key."""
    assert reg.vectors.drift() == ()
    with reg.session() as s:
        for key in reg.vectors.keys():
            sql = sorted(s.scalars(select(Fingerprint.id).where(*reg.vectors._where(key))))
            assert sorted(index_ids(faiss.read_index(str(reg.vectors.path(key)))).tolist()) == sql


def test_crawl_as_ray_tasks_writes_what_a_crawl_in_one_process_writes(
    registry, fake_hub, tmp_path, local_ray,
):
    report = crawl_hub(registry, retry=FAST, fan_out=RayFanOut(parallel=2))
    assert report.complete
    assert report.counts == {"indexed": len(fake_hub.repos) - 1, "unsupported": 1}
    assert set(fake_hub.downloads().values()) == {1}  # every file fetched once, by the tasks
    _assert_faiss_in_step(registry)

    with Registry(f"sqlite:///{tmp_path / 'one-process.db'}") as here:
        alone = crawl_hub(here, retry=FAST, client=HubClient(cache_dir=tmp_path / "hf-alone"))
        assert _state(registry) == _state(here)
    by_repo = {r.repo_id: r.to_dict() for r in report.results}
    assert by_repo == {r.repo_id: r.to_dict() for r in alone.results}
    assert report.watermark == alone.watermark

    requests = sum(fake_hub.requests.values())
    again = crawl_hub(registry, retry=FAST, fan_out=RayFanOut(parallel=2))
    assert [r.status for r in again.results] == ["skipped"]  # the newest sits at the watermark
    assert sum(fake_hub.requests.values()) - requests == 1  # one listing page: no task asked the hub anything


def test_retries_run_in_the_task_and_failures_are_recorded_by_the_driver(registry, fake_hub, local_ray):
    fake_hub.fail("acme/llama-base", 429, times=2)
    fake_hub.fail("acme/llama-alt", 500, times=10)
    report = crawl_hub(registry, retry=FAST, author="acme", fan_out=RayFanOut())
    by_repo = {r.repo_id: r for r in report.results}
    assert (by_repo["acme/llama-base"].status, by_repo["acme/llama-base"].attempts) == ("indexed", 3)
    alt = by_repo["acme/llama-alt"]
    assert (alt.status, alt.attempts) == ("failed", 3) and "500" in alt.error
    with registry.session() as s:
        row = s.scalar(select(HubRepo).where(HubRepo.repo_id == "acme/llama-alt"))
        assert (row.status, row.attempts) == ("failed", 3)
        assert s.scalar(select(Model).where(Model.name == "acme/llama-alt")) is None
    assert report.watermark == fake_hub.repos["acme/llama-alt"].last_modified  # held back for the failed repo
    _assert_faiss_in_step(registry)


def test_crawl_hub_ray_command(cli, fake_hub, local_ray):
    import json

    code, out, err = cli("crawl-hub", "--author", "acme", "--ray", "--json")
    assert code == 0, err
    assert json.loads(out)["counts"] == {"indexed": 2, "unsupported": 1}
