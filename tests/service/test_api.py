"""The HTTP API in-process (FastAPI's TestClient) over a registry indexed from the fake hub."""

from __future__ import annotations

import pytest
from fakehub import FakeHubServer, build_repos
from sqlalchemy import func, inspect, select, text

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from mothertree.registry import Registry, index_hub  # noqa: E402
from mothertree.registry._hub import RetryPolicy  # noqa: E402
from mothertree.registry._schema import Job  # noqa: E402
from mothertree.service import ServiceConfig, create_app  # noqa: E402

REPOS = ["acme/llama-base", "ft/llama-base-chat", "acme/llama-alt"]


def patch_hub(mp: pytest.MonkeyPatch, hub, tmp) -> None:
    """Point huggingface_hub at a fake hub (what the ``fake_hub`` fixture does, for any scope)."""
    from huggingface_hub import constants

    mp.setenv("HF_ENDPOINT", hub.url)
    mp.setenv("HF_HOME", str(tmp / "hf"))
    mp.setattr(constants, "ENDPOINT", hub.url)
    mp.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    mp.setattr(constants, "HF_HUB_CACHE", str(tmp / "hf" / "hub"))
    mp.setattr(constants, "HF_HUB_OFFLINE", False)
    mp.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)


@pytest.fixture(scope="module")
def hub_db(tmp_path_factory):
    """An SQLite registry holding three fake-hub repos, resolved (one family of two, one singleton)."""
    tmp = tmp_path_factory.mktemp("api")
    url = f"sqlite:///{tmp / 'registry.db'}"
    with pytest.MonkeyPatch.context() as mp, FakeHubServer(build_repos()[0]) as hub:
        patch_hub(mp, hub, tmp)
        mp.setenv("MOTHERTREE_HOME", str(tmp / "home"))
        with Registry(url) as reg:
            assert not index_hub(reg, REPOS, retry=RetryPolicy(max_attempts=2, base_delay_s=0)).failed
            reg.resolve()
    return url


@pytest.fixture
def client(hub_db):
    app = create_app(ServiceConfig(db=hub_db, webhook_secret="s3cret"))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _counts(url: str) -> dict[str, int]:
    with Registry(url) as reg, reg.engine.connect() as conn:
        return {t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar() for t in inspect(conn).get_table_names()}


def _error_shape(r, status: int, kind: str) -> dict:
    assert r.status_code == status, r.text
    doc = r.json()
    assert doc["ok"] is False and doc["status"] == status and doc["type"] == kind
    assert doc["errors"] and "Traceback" not in r.text
    return doc


def test_read_endpoints_answer_like_the_cli_and_never_write(client, hub_db):
    before = _counts(hub_db)
    models = client.get("/v1/models").json()["models"]
    assert sorted(m["name"] for m in models) == sorted(REPOS)
    assert client.get("/v1/models/acme/llama-base").json()["name"] == "acme/llama-base"
    anc = client.get("/v1/models/ft/llama-base-chat/ancestry").json()
    assert [(e["parent"], e["child"]) for e in anc["edges"]] == [("acme/llama-base", "ft/llama-base-chat")]
    assert anc["edges"][0]["p_value_log10"] < -2
    desc = client.get("/v1/models/acme/llama-base/descendants").json()
    assert sorted(m["name"] for m in desc["models"]) == ["acme/llama-base", "ft/llama-base-chat"]
    fam = client.get("/v1/models/acme/llama-alt/family").json()
    assert [m["name"] for m in fam["models"]] == ["acme/llama-alt"]
    cands = client.get("/v1/models/ft/llama-base-chat/candidates", params={"k": 2}).json()
    assert cands["candidates"][0]["name"] == "acme/llama-base"
    tree = client.get("/v1/tree").json()
    assert len(tree["edges"]) == 1
    mermaid = client.get("/v1/tree", params={"family": "acme/llama-base", "format": "mermaid"})
    assert mermaid.text.startswith("flowchart TD") and "-->|" in mermaid.text
    assert client.get("/v1/tree", params={"format": "dot"}).text.startswith("digraph lineage {")
    reports = client.get("/v1/reports").json()["reports"]
    assert reports and client.get(f"/v1/reports/{reports[0]['name']}").status_code in (200, 422)
    sql = client.get("/v1/sql", params={"q": "SELECT name FROM models ORDER BY name"}).json()
    assert [r[0] for r in sql["rows"]] == sorted(REPOS)
    test = client.get("/v1/test", params={"a": "acme/llama-base", "b": "ft/llama-base-chat"}).json()
    assert test["dependent"] is True
    assert client.get("/").status_code == 200
    assert _counts(hub_db) == before


def test_errors_are_json_with_status_codes(client, hub_db):
    before = _counts(hub_db)
    doc = _error_shape(client.get("/v1/models/no/such-model/ancestry"), 404, "ModelNotFoundError")
    assert doc["error"].startswith("Model 'no/such-model' is not in the registry")
    _error_shape(client.get("/v1/models/no/such"), 404, "ModelNotFoundError")
    _error_shape(client.get("/v1/test", params={"a": "acme/llama-base", "b": "/etc"}), 404, "ModelNotFoundError")
    _error_shape(client.get("/v1/tree", params={"format": "png"}), 422, "RequestValidationError")
    _error_shape(client.get("/v1/models/acme/llama-base/candidates", params={"k": 0}), 422, "RequestValidationError")
    _error_shape(client.get("/v1/sql", params={"q": "DELETE FROM models"}), 403, "ReadOnlyQueryError")
    _error_shape(client.get("/v1/sql", params={"q": "SELECT * FROM nope"}), 422, "ValueError")
    _error_shape(client.get("/v1/reports/no-such-report"), 404, "LookupError")
    _error_shape(client.get("/v1/jobs/12345"), 404, "JobNotFoundError")
    _error_shape(client.post("/v1/jobs", json={"path": "/no/such/model"}), 422, "FileNotFoundError")
    _error_shape(client.post("/v1/jobs", json={"what": 1}), 422, "ValueError")
    _error_shape(client.post("/v1/jobs", content=b"{not json"), 422, "ValueError")
    assert _counts(hub_db) == before


def test_unreachable_database_is_503_and_slow_requests_are_504(hub_db):
    down = create_app(ServiceConfig(db="postgresql+psycopg://postgres@127.0.0.1:1/none"))
    with TestClient(down, raise_server_exceptions=False) as c:
        doc = _error_shape(c.get("/v1/models"), 503, "DatabaseUnavailable")
        assert doc["error"].startswith("database unreachable: connection failed")
        assert doc["error"].endswith("check the URL given with --db or MOTHERTREE_DB")
    slow = create_app(ServiceConfig(db=hub_db, timeout_s=0.001))
    with TestClient(slow, raise_server_exceptions=False) as c:
        _error_shape(c.get("/v1/test", params={"a": "acme/llama-base", "b": "ft/llama-base-chat"}), 504, "Timeout")


def _payload(name="ft/llama-base-chat", sha="abc123", repo_type="model", scope="repo.content", action="update"):
    return {
        "event": {"action": action, "scope": scope},
        "repo": {"type": repo_type, "name": name, "id": "x", "private": False, "headSha": sha},
        "webhook": {"id": "w", "version": 3},
    }


def _jobs(url: str) -> int:
    with Registry(url) as reg, reg.session() as s:
        return s.scalar(select(func.count()).select_from(Job))


def test_webhook_checks_the_secret_ignores_what_it_does_not_need_and_is_idempotent(tmp_path, monkeypatch):
    monkeypatch.setenv("MOTHERTREE_HOME", str(tmp_path / "home"))
    url = f"sqlite:///{tmp_path / 'r.db'}"
    app = create_app(ServiceConfig(db=url, webhook_secret="s3cret"))
    with TestClient(app, raise_server_exceptions=False) as c:
        _error_shape(c.post("/v1/webhooks/hub", json=_payload(), headers={"X-Webhook-Secret": "wrong"}), 401,
                     "Unauthorized")
        _error_shape(c.post("/v1/webhooks/hub", json=_payload()), 401, "Unauthorized")
        assert _jobs(url) == 0
        ok = {"X-Webhook-Secret": "s3cret"}
        r = c.post("/v1/webhooks/hub", json=_payload(repo_type="dataset"), headers=ok)
        assert r.status_code == 200 and r.json()["queued"] is False
        r = c.post("/v1/webhooks/hub", json=_payload(scope="discussion", action="create"), headers=ok)
        assert r.status_code == 200 and r.json()["queued"] is False
        assert _jobs(url) == 0
        _error_shape(c.post("/v1/webhooks/hub", json={"event": {}}, headers=ok), 422, "ValueError")
        first = c.post("/v1/webhooks/hub", json=_payload(), headers=ok)
        again = c.post("/v1/webhooks/hub", json=_payload(), headers=ok)
        assert (first.status_code, again.status_code) == (202, 200)
        assert first.json()["job"]["id"] == again.json()["job"]["id"]
        job = c.get(f"/v1/jobs/{first.json()['job']['id']}").json()
        assert (job["kind"], job["target"], job["revision"], job["status"]) == (
            "hub", "ft/llama-base-chat", "abc123", "queued")
        assert _jobs(url) == 1
    no_secret = create_app(ServiceConfig(db=url, webhook_secret=None))
    with TestClient(no_secret, raise_server_exceptions=False) as c:
        _error_shape(c.post("/v1/webhooks/hub", json=_payload(sha="zzz"), headers={"X-Webhook-Secret": ""}), 401,
                     "Unauthorized")
    assert _jobs(url) == 1


def test_service_imports_the_registry_only():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "service"
    found = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2 and node.module:
                found.add(node.module.split(".")[0])
    assert found == {"registry"}
