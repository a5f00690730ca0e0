"""The README's Datasette step, in a real Datasette process (and a headless browser when one is installed)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest

pytest.importorskip("datasette")

ROOT = Path(__file__).resolve().parents[2]
DATASETTE = Path(sys.executable).with_name("datasette")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, *args: str, cwd: Path) -> None:
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(DATASETTE), *args, "--port", str(self.port)], cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/-/versions.json", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError(f"datasette exited: {self.proc.stdout.read()}")
                time.sleep(0.3)
        raise AssertionError("datasette did not start in 60 s")

    def rows(self, path: str) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as r:
            return json.loads(r.read())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def lineage_db(cli, tiny_models, tmp_path):
    """A registry file with a base, two children and a grandchild (edges written directly)."""
    from mothertree.registry import Registry
    from mothertree.registry._schema import Edge, Model

    db = tmp_path / "demo.db"
    assert cli("--db", str(db), "index", str(tiny_models["llama"]), str(tiny_models["llama-other"]),
               str(tiny_models["gpt2"]), str(tiny_models["llama-sharded"]))[0] == 0
    reg = Registry(str(db))
    with reg.session() as s:
        ids = {m.name: m.id for m in s.query(Model)}
        now = datetime.now(timezone.utc)
        for parent, child in (("llama", "llama-other"), ("llama", "gpt2"), ("gpt2", "llama-sharded")):
            s.add(Edge(parent_id=ids[parent], child_id=ids[child], relation="finetune", direction_confidence=0.9,
                       p_value_log10=-12.3456789, method="exact", computed_at=now))
    reg.close()
    return db


def test_generated_metadata_serves_the_reports_for_the_file_served(cli, lineage_db, tmp_path):
    code, out, _ = cli("--db", str(lineage_db), "report", "--datasette")
    assert code == 0 and list(json.loads(out)["databases"]) == ["demo"]
    meta = tmp_path / "metadata.json"
    meta.write_text(out)
    server = _Server(str(lineage_db), "-m", str(meta), cwd=tmp_path)
    try:
        # an empty limit box (what the query form submits) means the default, not LIMIT 0
        assert server.rows("/demo/top-roots.json?limit=&_shape=array") == [{"root": "llama", "descendants": 3}]
        assert server.rows("/demo/top-roots.json?limit=1&_shape=array") == [{"root": "llama", "descendants": 3}]
        relations = server.rows("/demo/relations.json?_shape=array")
        assert relations and relations[0]["relation"] == "finetune"
    finally:
        server.close()


def test_plugin_serves_the_reports_for_any_registry_file(lineage_db, tmp_path):
    other = tmp_path / "whatever-name.db"
    shutil.copy(lineage_db, other)
    server = _Server(str(other), "--plugins-dir", str(ROOT / "datasette" / "plugins"), cwd=tmp_path)
    try:
        rows = server.rows("/whatever-name/undeclared-derivatives.json?parent=&_shape=array")
        assert sorted((r["model"], r["proven_parent"]) for r in rows) == [
            ("gpt2", "llama"), ("llama-other", "llama"), ("llama-sharded", "gpt2")]
        chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if chromium is None:
            return  # the page check needs a browser; the JSON above is the same query
        page = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
             f"{server.url}/whatever-name/top-roots?limit="],
            capture_output=True, text=True, timeout=120,
        )
        assert "Roots with the most descendants" in page.stdout
        assert ">llama<" in page.stdout and ">3<" in page.stdout
    finally:
        server.close()
