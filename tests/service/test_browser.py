"""The family page in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from html.parser import HTMLParser

import pytest

httpx = pytest.importorskip("httpx")

from test_e2e import MT, _port  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install -y chromium)")]


class _Page(HTMLParser):
    """Collects the model names in the family tree and the rows of the evidence table."""

    def __init__(self) -> None:
        super().__init__()
        self.section: str | None = None
        self.tree_models: list[str] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self._in_td = False
        self.mermaid = ""
        self._in_pre = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and a.get("id") in ("family", "ancestry"):
            self.section = a["id"]
        if tag == "span" and self.section == "family" and "data-model" in a:
            self.tree_models.append(a["data-model"])
        if tag == "tr" and self.section == "ancestry":
            self._cell = []
            self.rows.append(self._cell)
        if tag == "td":
            self._in_td = True
        if tag == "pre" and a.get("id") == "mermaid":
            self._in_pre = True

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_td = False
        if tag == "pre":
            self._in_pre = False

    def handle_data(self, data):
        if self._in_td and self._cell is not None:
            self._cell.append(data)
        if self._in_pre:
            self.mermaid += data


@pytest.fixture(scope="module")
def demo_db(zoo, tmp_path_factory):
    """What ``mothertree demo`` builds: its nine models indexed without timestamps and resolved.

    The models come from the test zoo cache (``MOTHERTREE_ZOO_DIR``), which holds the demo's models weight
    for weight (same recipes: ``bench.demo.demo_models_of`` checks it); training the demo's own zoo takes
    more than 15 minutes on a shared 2-core machine, indexing and resolving these takes a minute or two.
    """
    from mothertree.bench.demo import run_demo

    tmp = tmp_path_factory.mktemp("browser")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOTHERTREE_HOME", str(tmp / "home"))
        result = run_demo(tmp / "demo", zoo=zoo)
    return result


def test_the_page_shows_the_demo_family_tree_and_ancestry_evidence(demo_db, tmp_path):
    from mothertree.registry import Registry

    child = "llama-a-ft-ft"
    with Registry(demo_db.db, upgrade=False) as reg:
        family = set(reg.family(child).models)
        parents = {e.parent for e in reg.ancestry(child).edges if e.child == child}
    assert {"llama-a", "llama-a-ft", child} <= family and "llama-b" not in family  # the ground truth's family
    assert parents == {p for p, c, _ in demo_db.truth if c == child}  # the demo recovers its true parent
    port = _port()
    env = {**os.environ, "MOTHERTREE_DB": f"sqlite:///{demo_db.db}", "MOTHERTREE_HOME": str(tmp_path / "home")}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([*MT, "serve", "--port", str(port), "--workers", "0"], env=env, stdout=log, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.5)
        url = f"{base}/?model={child}"
        shot = tmp_path / "page.png"
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'chrome'}"]
        dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        subprocess.run([*args, f"--screenshot={shot}", "--window-size=1200,900", url], capture_output=True,
                       timeout=120)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    page = _Page()
    page.feed(dom)
    assert family <= set(page.tree_models), (family, page.tree_models)
    assert "llama-b" not in page.tree_models
    evidence = [r for r in page.rows if r]
    assert {(r[0], r[1]) for r in evidence} >= {(p, child) for p in parents}, evidence
    assert page.mermaid.startswith("flowchart TD") and "-->|" in page.mermaid
    assert shot.is_file() and shot.stat().st_size > 5000
