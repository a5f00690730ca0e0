"""End to end, in real processes: ``mothertree serve`` on 127.0.0.1, a hub webhook, workers (local Ray, and
a local worker killed with SIGKILL mid-job), 20 concurrent readers while a model is indexed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from fakehub import FakeHubServer, build_repos
from sqlalchemy import func, select

httpx = pytest.importorskip("httpx")

from mothertree.registry import Registry, index_hub  # noqa: E402
from mothertree.registry import _jobs as jobs  # noqa: E402
from mothertree.registry._hub import RetryPolicy  # noqa: E402
from mothertree.registry._schema import Fingerprint, Job, Model, ModelRevision, Tensor  # noqa: E402

from test_api import patch_hub  # noqa: E402

SECRET = "e2e-secret"
MT = [str(Path(sys.executable).with_name("mothertree"))]
NEW = "anon/llama-base-tuned"  # an undeclared fine-tune of acme/llama-base


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A fake hub, a registry that already holds the base models, and the environment for child processes."""
    with FakeHubServer(build_repos()[0]) as hub:
        patch_hub(monkeypatch, hub, tmp_path)
        monkeypatch.setenv("MOTHERTREE_HOME", str(tmp_path / "home"))
        url = f"sqlite:///{tmp_path / 'registry.db'}"
        with Registry(url) as reg:
            assert not index_hub(reg, ["acme/llama-base", "acme/llama-alt"],
                                 retry=RetryPolicy(max_attempts=2, base_delay_s=0)).failed
            reg.resolve()
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "HF_HUB_DISABLE_PROGRESS_BARS": "1",
               "MOTHERTREE_HOME": str(tmp_path / "home"), "MOTHERTREE_DB": url,
               "MOTHERTREE_WEBHOOK_SECRET": SECRET, "RAY_AUTH_MODE": "disabled"}
        env.pop("HF_HUB_OFFLINE", None)
        yield hub, url, env


@pytest.fixture
def server(world, tmp_path):
    hub, url, env = world
    port = _port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([*MT, "serve", "--port", str(port), "--workers", "0"], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        assert time.monotonic() < deadline, "serve did not come up"
        time.sleep(0.5)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def _hook(base: str, name: str, sha: str, secret: str = SECRET):
    payload = {"event": {"action": "update", "scope": "repo.content"},
               "repo": {"type": "model", "name": name, "headSha": sha, "id": "r", "private": False}}
    return httpx.post(f"{base}/v1/webhooks/hub", json=payload, headers={"X-Webhook-Secret": secret}, timeout=30)


def _wait(base: str, job_id: int, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=30).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout_s} s")


def _new_revision(hub) -> str:
    repo = hub.repos[NEW]
    return hub.touch(NEW, "README.md", b"# v2\n", repo.last_modified + timedelta(hours=1))


@pytest.mark.slow
def test_webhook_to_ray_worker_to_ancestry_with_20_concurrent_readers(world, server, tmp_path):
    pytest.importorskip("ray")
    hub, url, env = world
    sha = _new_revision(hub)
    assert _hook(server, NEW, sha, secret="wrong").status_code == 401
    assert httpx.get(f"{server}/v1/jobs", timeout=30).json()["jobs"] == []
    r = _hook(server, NEW, sha)
    assert r.status_code == 202, r.text
    job_id = r.json()["job"]["id"]

    errors: list[str] = []
    stop = threading.Event()
    served = [0]

    def reader(i: int) -> None:
        paths = ["/v1/models", "/v1/tree", "/v1/models/acme/llama-base/family", "/v1/jobs",
                 "/v1/sql?q=SELECT%20count(*)%20FROM%20tensors", "/"]
        with httpx.Client(base_url=server, timeout=60) as c:
            k = i
            while not stop.is_set():
                resp = c.get(paths[k % len(paths)])
                k += 1
                if resp.status_code != 200:
                    errors.append(f"{paths[k % len(paths)]}: {resp.status_code} {resp.text[:200]}")
                served[0] += 1

    readers = [threading.Thread(target=reader, args=(i,)) for i in range(20)]
    for t in readers:
        t.start()
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([*MT, "worker", "--ray", "--num-cpus", "2", "--idle-exit", "--poll", "0.5"],
                              env=env, stdout=log, stderr=log)
    try:
        job = _wait(server, job_id, 600)
    finally:
        stop.set()
        for t in readers:
            t.join()
        worker.wait(timeout=120)
    assert job["status"] == "done", (job, (tmp_path / "worker.log").read_text()[-3000:])
    assert job["attempts"] == 1 and job["result"]["parents"] == ["acme/llama-base"]
    assert "rebuilt from SQL" not in (tmp_path / "worker.log").read_text()  # vectors added, not repaired
    assert errors == [] and served[0] > 20
    anc = httpx.get(f"{server}/v1/models/{NEW}/ancestry", timeout=30).json()
    assert [(e["parent"], e["child"]) for e in anc["edges"]] == [("acme/llama-base", NEW)]
    with Registry(url) as reg, reg.session() as s:
        m = s.scalar(select(Model).where(Model.name == NEW))
        assert m.hub_sha == sha
    # the same delivery again is the same job, and queues nothing new
    again = _hook(server, NEW, sha)
    assert again.status_code == 200 and again.json()["job"]["id"] == job_id


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_replaced_and_the_job_finishes_exactly_once(world, server, tmp_path):
    hub, url, env = world
    sha = _new_revision(hub)
    job_id = _hook(server, NEW, sha).json()["job"]["id"]
    log = open(tmp_path / "w1.log", "wb")
    first = subprocess.Popen([*MT, "worker", "--lease", "3", "--poll", "0.2"], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while httpx.get(f"{server}/v1/jobs/{job_id}", timeout=30).json()["status"] != "running":
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    held = httpx.get(f"{server}/v1/jobs/{job_id}", timeout=30).json()
    assert (held["status"], held["attempts"]) == ("running", 1)  # the dead worker's lease still stands

    log2 = open(tmp_path / "w2.log", "wb")
    second = subprocess.Popen([*MT, "worker", "--lease", "3", "--poll", "0.2", "--max-jobs", "1"], env=env,
                              stdout=log2, stderr=log2)
    job = _wait(server, job_id, 240)
    second.wait(timeout=60)
    assert job["status"] == "done", (job, (tmp_path / "w2.log").read_text()[-3000:])
    assert job["attempts"] == 2 and job["result"]["parents"] == ["acme/llama-base"]
    with Registry(url) as reg:
        with reg.session() as s:
            m = s.scalar(select(Model).where(Model.name == NEW))
            assert s.scalar(select(func.count()).select_from(Model).where(Model.name == NEW)) == 1
            assert s.scalar(select(func.count()).select_from(ModelRevision).where(ModelRevision.model_id == m.id)) == 1
            n_tensors = s.scalar(select(func.count()).select_from(Tensor).where(Tensor.model_id == m.id))
            assert n_tensors == s.scalar(select(func.count(func.distinct(Tensor.name))).where(Tensor.model_id == m.id))
            fps = s.scalar(select(func.count()).select_from(Fingerprint))
            assert s.scalar(select(func.count()).select_from(Job).where(Job.status == "done")) == 1
        infos = reg.vectors.check()
        assert sum(i.vectors for i in infos) == fps  # FAISS holds each SQL vector once
        assert not reg.vectors.notices
