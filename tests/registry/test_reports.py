"""Named reports against the fake hub's ground truth, and read-only SQL, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
from fakehub import build_repos, fake_hub, truth  # noqa: F401  (fixtures)
from sqlalchemy import select

from mothertree.registry import Registry
from mothertree.registry._schema import Edge, FamilyMember, Model, PairTest
from mothertree.registry.errors import ReadOnlyQueryError
from mothertree.registry.reports import REPORTS, datasette_metadata, get_report

NOW = datetime(2026, 2, 1, tzinfo=timezone.utc)
REPO_ROOT = Path(__file__).resolve().parents[2]


def _arch(repo_id: str, truth) -> str:
    return "GPT2LMHeadModel" if truth.family_of(repo_id).startswith("gpt/") else "LlamaForCausalLM"


def _load_truth(reg, truth) -> dict[str, int]:
    """Models and the lineage rows ``resolve`` should produce, straight from the ground truth."""
    repos, _ = build_repos()
    names = [r.repo_id for r in repos if r.repo_id not in truth.unsupported]
    with reg.session() as s:
        ids = {}
        for n in names:
            m = Model(
                name=n, source=f"hf://{n}", file_format="safetensors", architecture="x", model_class=_arch(n, truth),
                num_parameters=1000, content_digest=n, indexed_at=NOW, resolved_at=NOW,
                declared_base_models=[truth.declared[n]] if n in truth.declared else None,
            )
            s.add(m)
            s.flush()
            ids[n] = m.id
        for child, parent in truth.parent.items():
            s.add(Edge(parent_id=ids[parent], child_id=ids[child], relation=truth.relation[child],
                       direction_confidence=0.9, p_value_log10=-12.0, method="truth", computed_at=NOW))
        for n in names:
            root = truth.family_of(n)
            s.add(FamilyMember(model_id=ids[n], family_id=truth.roots.index(root), is_root=n == root))
        for child in truth.misdeclared:
            a, b = sorted((ids[child], ids[truth.declared[child]]))
            s.add(PairTest(a_id=a, b_id=b, method="truth", p_value_log10=-0.2, dependent=False, computed_at=NOW))
    return ids


def test_reports_match_the_ground_truth(registry, truth):
    ids = _load_truth(registry, truth)
    undeclared = registry.report("undeclared-derivatives")
    assert undeclared.columns[:2] == ("model", "proven_parent")
    assert {r["model"] for r in undeclared.records()} == truth.undeclared | truth.misdeclared
    assert {r["model"]: r["proven_parent"] for r in undeclared.records()} == {
        c: truth.parent[c] for c in truth.undeclared | truth.misdeclared
    }
    only = registry.report("undeclared-derivatives", {"parent": "acme/llama-base"})
    assert {r["model"] for r in only.records()} == {
        c for c in truth.undeclared if truth.parent[c] == "acme/llama-base"
    }

    mis = registry.report("misdeclared-parents").records()
    assert [(r["model"], r["declared_base"], r["evidence"]) for r in mis] == [
        (c, truth.declared[c], "independent") for c in sorted(truth.misdeclared)
    ]
    with registry.session() as s:  # without the test, no edge and no shared family still says "no"
        for t in s.scalars(select(PairTest)):
            s.delete(t)
    assert [r["evidence"] for r in registry.report("misdeclared-parents").records()] == ["no lineage"]

    families = registry.report("families").records()
    sizes = Counter(truth.family_of(n) for n in ids)
    assert {r["root"]: r["members"] for r in families} == dict(sizes)
    assert [r["members"] for r in families] == sorted(sizes.values(), reverse=True)

    top = registry.report("top-roots", {"limit": "2"}).records()
    descendants = {root: n - 1 for root, n in sizes.items()}
    assert [(r["root"], r["descendants"]) for r in top] == sorted(
        descendants.items(), key=lambda kv: (-kv[1], kv[0])
    )[:2]

    relations = {r["relation"]: r["edges"] for r in registry.report("relations").records()}
    assert relations == dict(Counter(truth.relation.values()))
    archs = {r["architecture"]: r["models"] for r in registry.report("architectures").records()}
    assert archs == dict(Counter(_arch(n, truth) for n in ids))


def test_report_errors(registry):
    with pytest.raises(LookupError, match="No report named 'nope'. Reports: families, top-roots"):
        registry.report("nope")
    with pytest.raises(ValueError, match="Report 'families' has no parameter x; it takes: none"):
        registry.report("families", {"x": "1"})


def test_every_report_runs_on_an_empty_registry(registry):
    for r in REPORTS:
        result = registry.report(r.name)
        assert result.rows == () and result.columns


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM models",
        "INSERT INTO models (name) VALUES ('x')",
        "WITH x AS (SELECT 1) DELETE FROM models",
        "SELECT 1; DELETE FROM models",
        "SELECT 1; -- fine\n; DROP TABLE models",
        "/* comment */ UPDATE models SET name = 'x'",
    ],
)
def test_sql_refuses_writes(registry, tiny_models, sql):
    registry.index_one(tiny_models["gpt2"], name="m")
    with pytest.raises(ReadOnlyQueryError):
        registry.query(sql)
    assert [m.name for m in registry.models()] == ["m"]
    registry.remove("m")  # the registry's own connections can still write


def test_sql_reads(registry, tiny_models):
    registry.index_one(tiny_models["gpt2"], name="m;x")
    r = registry.query("SELECT name, indexed_at FROM models WHERE name = 'm;x';  ")
    assert r.columns == ("name", "indexed_at")
    assert r.rows[0][0] == "m;x" and r.rows[0][1].startswith("20")  # ISO on PostgreSQL, stored text on SQLite
    assert registry.query("SELECT name FROM tensors", max_rows=3).truncated
    assert registry.query("SELECT :v AS v", {"v": "7"}).rows == (("7",),)
    with pytest.raises(ValueError, match="SQL error"):
        registry.query("SELECT * FROM no_such_table")


def test_datasette_metadata_matches_the_reports():
    path = REPO_ROOT / "datasette" / "metadata.json"
    assert json.loads(path.read_text()) == datasette_metadata(), (
        "datasette/metadata.json is stale; regenerate: mothertree report --datasette > datasette/metadata.json"
    )
    queries = datasette_metadata()["databases"]["registry"]["queries"]
    assert set(queries) == {r.name for r in REPORTS}
    assert queries["top-roots"]["params"] == ["limit"]


def test_every_report_is_documented():
    text = (REPO_ROOT / "docs" / "schema.md").read_text()
    missing = [r.name for r in REPORTS if f"`{r.name}`" not in text]
    assert not missing, f"docs/schema.md does not describe: {missing}"
    assert get_report("families").title == "Families by size"


@pytest.mark.slow
def test_reports_after_a_real_crawl_and_resolve(fake_hub, truth, tmp_path, monkeypatch):
    """End to end: crawl the fake hub, resolve lineage from the weights, read the reports."""
    from mothertree.registry._hub import RetryPolicy, crawl_hub

    monkeypatch.setenv("MOTHERTREE_HOME", str(tmp_path / "home"))
    reg = Registry(f"sqlite:///{tmp_path / 'e2e.db'}")
    crawl_hub(reg, retry=RetryPolicy(base_delay_s=0))
    reg.resolve()
    with reg.session() as s:
        names = dict(s.execute(select(Model.id, Model.name)).all())
        edges = {(names[e.child_id], names[e.parent_id]) for e in s.scalars(select(Edge))}
    true_edges = set(truth.parent.items())
    found = edges & true_edges
    assert len(found) >= 0.8 * len(true_edges), f"resolve found {sorted(found)} of {sorted(true_edges)}"
    undeclared = {r["model"] for r in reg.report("undeclared-derivatives").records()}
    assert {c for c, p in found if c not in truth.declared or truth.declared[c] != p} <= undeclared
    assert not undeclared & {c for c in truth.declared if c not in truth.misdeclared}
    mis = {(r["model"], r["declared_base"]) for r in reg.report("misdeclared-parents").records()}
    assert mis == {(c, truth.declared[c]) for c in truth.misdeclared}
    reg.close()
