"""Resolve as plan-then-execute, and lineage queries that never write."""

from __future__ import annotations

import json
import shutil

import pytest
from sqlalchemy import select

from mothertree.registry._schema import Base
from mothertree.registry.errors import ModelNotFoundError, RegistryError



def _derive(src, dst, seed: int, scale: float = 0.2):
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(src / "model.safetensors")
    g = torch.Generator().manual_seed(seed)
    state = {k: v + scale * v.std() * torch.randn(v.shape, generator=g) if v.ndim == 2 else v for k, v in state.items()}
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def _dump(registry) -> dict[str, list]:
    """Every row of every table: equal before and after means nothing was written."""
    with registry.engine.connect() as c:
        return {t.name: sorted(map(repr, c.execute(select(t)).all())) for t in Base.metadata.sorted_tables}


@pytest.fixture
def family3(tiny_models, tmp_path):
    child = _derive(tiny_models["llama"], tmp_path / "llama-child", seed=1)
    return {"parent": tiny_models["llama"], "child": child, "stranger": tiny_models["llama-other"]}


def test_plan_writes_nothing_and_execute_does_it(registry, family3):
    for name, path in family3.items():
        registry.index_one(path, name=name)
    before = _dump(registry)
    plan = registry.plan_resolve()
    assert _dump(registry) == before
    assert set(plan.models) == {"parent", "child", "stranger"} and not plan.full and plan.deletes == ()
    assert ("child", "parent") in plan.pairs or ("parent", "child") in plan.pairs
    assert any(set(f) >= {"parent", "child"} for f in plan.families)
    doc = plan.to_dict()
    assert json.loads(json.dumps(doc))["models"] == list(plan.models)
    report = plan.execute()
    assert report.models_resolved == 3 and report.pairs_tested == len(plan.pairs)
    assert set(registry.family("parent").models) == {"parent", "child"}
    # Nothing left to do; a full plan names what it would forget.
    assert registry.plan_resolve().pairs == ()
    full = registry.plan_resolve(full=True)
    assert dict(full.deletes)["edges"] == report.edges and dict(full.deletes)["pair_tests"] >= report.pairs_tested
    assert set(full.models) == {"parent", "child", "stranger"}


def test_a_stale_plan_is_refused(registry, family3):
    registry.index_one(family3["parent"], name="parent")
    plan = registry.plan_resolve()
    registry.index_one(family3["child"], name="child")
    with pytest.raises(RegistryError, match="changed since this resolve plan was made"):
        plan.execute()


def test_resolve_limited_to_some_models(registry, family3):
    for name, path in family3.items():
        registry.index_one(path, name=name)
    report = registry.resolve(models=["stranger"])
    assert report.models_resolved == 1
    assert registry.ancestry("parent").notes == ("not resolved yet: run mothertree resolve",)
    with pytest.raises(ValueError, match="cannot be limited"):
        registry.plan_resolve(full=True, models=["parent"])
    with pytest.raises(ModelNotFoundError):
        registry.plan_resolve(models=["nope"])


def test_ancestry_reads_only(registry, family3):
    for name, path in family3.items():
        registry.index_one(path, name=name)
    registry.resolve()
    before = _dump(registry)
    for x in ("parent", "child", "stranger", str(family3["child"])):
        registry.ancestry(x)
    registry.family("child"), registry.descendants("parent"), registry.tree(), registry.tree("child")
    registry.candidates("child"), registry.candidates(str(family3["parent"]))
    assert _dump(registry) == before


def test_ancestry_of_a_new_path_needs_add(registry, family3, tmp_path):
    registry.index_one(family3["parent"], name="parent")
    registry.index_one(family3["stranger"], name="stranger")
    registry.resolve()
    before = _dump(registry)
    with pytest.raises(ModelNotFoundError, match=r"is not in the registry .*mothertree ancestry .* --add"):
        registry.ancestry(str(family3["child"]))
    assert _dump(registry) == before


def test_ancestry_add_resolves_only_what_the_new_model_touches(registry, family3, tmp_path):
    registry.index_one(family3["parent"], name="parent")
    registry.resolve()
    # An unrelated model indexed but not resolved: placing the new upload must not resolve it.
    registry.index_one(family3["stranger"], name="stranger")
    view = registry.ancestry(str(family3["child"]), add=True)
    assert view.model == "llama-child" and "parent" in view.models
    assert registry.ancestry("stranger").notes == ("not resolved yet: run mothertree resolve",)
    # Adding again is a read: the path is known by its source.
    before = _dump(registry)
    assert registry.ancestry(str(family3["child"]), add=True).model == "llama-child"
    assert _dump(registry) == before


def test_candidates_of_a_path_write_nothing_unless_add(registry, family3):
    registry.index_one(family3["parent"], name="parent")
    before = _dump(registry)
    result = registry.candidates(str(family3["child"]))
    assert [c.name for c in result.candidates][:1] == ["parent"]
    assert _dump(registry) == before
    added = registry.candidates(str(family3["child"]), add=True)
    assert added.model == "llama-child" and [m.name for m in registry.models()] == ["llama-child", "parent"]


def test_reports_and_sql_are_methods(registry, family3):
    registry.index_one(family3["parent"], name="parent")
    assert registry.query("SELECT name FROM models").rows == (("parent",),)
    assert registry.report("architectures").records()[0]["models"] == 1
    assert registry.report("undeclared-derivatives", parent="parent").rows == ()


# ------------------------------------------------------------------ CLI
def test_cli_resolve_dry_run_and_ancestry_add(cli, family3, tmp_path):
    for name in ("parent", "stranger"):
        assert cli("index", str(family3[name]), "--name", name)[0] == 0
    code, out, _ = cli("--json", "resolve", "--dry-run")
    plan = json.loads(out)
    assert code == 0 and sorted(plan["models"]) == ["parent", "stranger"] and plan["deletes"] == {}
    code, out, _ = cli("resolve", "--dry-run")
    assert code == 0 and "Dry run: nothing written" in out
    code, out, _ = cli("--json", "ancestry", "parent")
    assert json.loads(out)["notes"] == ["not resolved yet: run mothertree resolve"]
    code, out, err = cli("ancestry", str(family3["child"]))
    assert code == 1 and "--add" in err
    code, out, _ = cli("--json", "ancestry", str(family3["child"]), "--add")
    doc = json.loads(out)
    assert code == 0 and doc["model"] == "llama-child" and "parent" in [m["name"] for m in doc["models"]]
    code, out, _ = cli("--json", "resolve", "--full", "--dry-run")
    assert json.loads(out)["deletes"]["pair_tests"] >= 1
    code, out, _ = cli("--json", "tree", "--of", "parent")
    assert {m["name"] for m in json.loads(out)["models"]} == {"parent", "llama-child"}
    code, out2, _ = cli("--json", "tree", "--family", "parent")
    assert json.loads(out2) == json.loads(out)
