"""``index-hub``, ``crawl-hub``, ``index-cache``, ``report`` and ``sql`` through the CLI."""

from __future__ import annotations

import csv
import io
import json

from fakehub import fake_hub  # noqa: F401  (fixture)

from mothertree.registry.reports import REPORTS


def test_crawl_report_and_sql(cli, fake_hub, monkeypatch):
    code, out, _ = cli("crawl-hub", "--author", "acme", "--retries", "2", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["counts"] == {"indexed": 2, "unsupported": 1} and doc["complete"] is True
    assert doc["query"] == {"author": "acme", "search": None, "filter": None}

    code, out, _ = cli("crawl-hub", "--author", "acme", "--json")
    assert json.loads(out)["counts"] == {"skipped": 1}

    code, out, _ = cli("index-hub", "nobody/missing", "--json")
    assert code == 1 and json.loads(out)["repos"][0]["status"] == "failed"

    code, out, _ = cli("report", "architectures", "--csv")
    assert code == 0
    # The parameter count is the sum over the two indexed models, read independently of the report.
    listed = json.loads(cli("models", "--json")[1])["models"]
    total = sum(m["num_parameters"] for m in listed)
    assert len(listed) == 2 and total > 0
    assert list(csv.reader(io.StringIO(out))) == [["architecture", "models", "parameters"],
                                                  ["LlamaForCausalLM", "2", str(total)]]

    code, out, _ = cli("report", "undeclared-derivatives", "-p", "parent=acme/llama-base", "--json")
    assert json.loads(out) == {"columns": ["model", "proven_parent", "relation", "p_value_log10",
                                           "direction_confidence", "declared_base_models"],
                               "rows": [], "truncated": False}

    code, out, _ = cli("report", "--json")
    assert [r["name"] for r in json.loads(out)["reports"]] == [r.name for r in REPORTS]

    code, out, _ = cli("sql", "SELECT repo_id, hub_sha FROM models ORDER BY repo_id", "--json")
    rows = json.loads(out)["rows"]
    assert rows == [[r, fake_hub.repos[r].sha] for r in ("acme/llama-alt", "acme/llama-base")]

    code, out, err = cli("sql", "DELETE FROM models")
    assert code == 1
    assert "Error: mothertree sql only reads: expected SELECT, WITH, VALUES or EXPLAIN, got DELETE" in err

    code, out, _ = cli("sql", "SELECT 1; DROP TABLE models", "--json")
    assert code == 1 and json.loads(out)["type"] == "ReadOnlyQueryError"

    code, _, err = cli("report", "families", "-p", "oops")
    assert code == 1 and "-p expects key=value, got 'oops'" in err


def test_index_cache_offline(cli, fake_hub, monkeypatch):
    from huggingface_hub import constants

    assert cli("index-hub", "gpt/gpt2-base", "--lite", "--blocks", "1", "--json")[0] == 0
    assert cli("index-hub", "acme/llama-alt")[0] == 0
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = sum(fake_hub.requests.values())
    code, _, err = cli("crawl-hub")
    assert code == 1 and "use: mothertree index-cache" in err
    code, out, _ = cli("index-cache", "--json")
    statuses = {r["repo_id"]: r["status"] for r in json.loads(out)["repos"]}
    # both shas are already indexed (one of them lite, whose cache holds only config and card)
    assert statuses == {"acme/llama-alt": "skipped", "gpt/gpt2-base": "skipped"}
    assert sum(fake_hub.requests.values()) == before


def test_crawl_hub_ray_options_need_ray(cli):
    code, _, err = cli("crawl-hub", "--ray-address", "ray://head:10001")
    assert code == 2 and "--ray-address and --num-cpus need --ray" in err
