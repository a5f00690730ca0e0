"""One CLI test for each command the other CLI tests leave out: JSON shapes, exit codes, database effects."""

from __future__ import annotations

import json

import pytest


def _json(result):
    code, out, err = result
    assert code == 0, err
    return json.loads(out)


def test_init_creates_the_schema(cli, tmp_path):
    db = tmp_path / "fresh.db"
    doc = _json(cli("--db", str(db), "--json", "init"))
    from mothertree.registry import schema_head

    assert doc["schema_revision"] == schema_head() and db.exists()
    assert doc["vectors"].endswith("fresh.db.vectors")


def test_db_downgrade_to_base_and_back(cli, tmp_path):
    db = str(tmp_path / "mig.db")
    _json(cli("--db", db, "--json", "init"))
    assert _json(cli("--db", db, "--json", "db", "downgrade", "base", "--yes"))["schema_revision"] is None
    assert _json(cli("--db", db, "--json", "db", "current"))["schema_revision"] is None
    from mothertree.registry import schema_head

    assert _json(cli("--db", db, "--json", "db", "upgrade"))["schema_revision"] == schema_head()


def test_candidates_by_name_by_path_and_with_add(cli, tiny_models):
    _json(cli("--json", "index", str(tiny_models["llama"]), "--name", "base"))
    _json(cli("--json", "index", str(tiny_models["gpt2"])))
    doc = _json(cli("--json", "candidates", "base", "-k", "5"))
    assert doc["model"] == "base" and "base" not in [c["name"] for c in doc["candidates"]]
    # A path not indexed is fingerprinted in memory: nothing is added.
    doc = _json(cli("--json", "candidates", str(tiny_models["llama-sharded"])))
    assert doc["candidates"][0]["name"] == "base" and doc["candidates"][0]["score"] > 0.99
    assert len(_json(cli("--json", "models"))["models"]) == 2
    # With --add it is indexed first.
    doc = _json(cli("--json", "candidates", str(tiny_models["llama-sharded"]), "--add"))
    assert len(_json(cli("--json", "models"))["models"]) == 3
    code, _, err = cli("candidates", "no-such-model")
    assert code == 1 and "Model 'no-such-model' is not in the registry" in err


def test_reindex_dry_run_then_execute(cli, tiny_models):
    _json(cli("--json", "index", str(tiny_models["gpt2"])))
    plan = _json(cli("--json", "reindex", "--dry-run"))
    assert plan["unfingerprinted"] == [] and {i["kind"] for i in plan["indexes"]} == {"aligned", "invariant"}
    report = _json(cli("--json", "reindex"))
    assert report["fingerprinted"] == [] and sum(i["vectors"] for i in report["indexes"]) > 0


def test_family_descendants_and_remove(cli, tiny_models):
    _json(cli("--json", "index", str(tiny_models["llama"]), "--name", "a"))
    _json(cli("--json", "index", str(tiny_models["llama-bin"]), "--name", "b"))  # same weights, other format
    _json(cli("--json", "resolve"))
    fam = _json(cli("--json", "family", "a"))
    assert {m["name"] for m in fam["models"]} == {"a", "b"} and len(fam["edges"]) == 1
    assert fam["edges"][0]["relation"] == "duplicate"
    assert _json(cli("--json", "remove", "b")) == {"removed": "b"}
    assert [m["name"] for m in _json(cli("--json", "models"))["models"]] == ["a"]
    code, out, _ = cli("--json", "remove", "b")
    assert code == 1 and json.loads(out)["type"] == "ModelNotFoundError"


@pytest.mark.slow
def test_demo_recovers_its_family(cli, tmp_path):
    doc = _json(cli("--json", "demo", "--workdir", str(tmp_path / "demo")))
    assert len(doc["models"]) == 9 and doc["true_edges"] > 0
    assert doc["edge_accuracy"] >= 0.8, doc["truth"]
