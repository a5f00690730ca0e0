"""resolve and the lineage queries: on both databases with tiny models, and on the zoo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mothertree.registry import Registry


def _derive(src: Path, dst: Path, seed: int, scale: float = 0.2) -> Path:
    shutil.copytree(src, dst)
    state = load_file(src / "model.safetensors")
    g = torch.Generator().manual_seed(seed)
    state = {k: v + scale * v.std() * torch.randn(v.shape, generator=g) if v.ndim == 2 else v for k, v in state.items()}
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.fixture
def small_family(tiny_models, tmp_path):
    child = _derive(tiny_models["llama"], tmp_path / "llama-child", seed=1)
    return {"parent": tiny_models["llama"], "child": child, "stranger": tiny_models["llama-other"]}


def test_resolve_on_both_databases(registry, small_family):
    for name, path in small_family.items():
        registry.index_one(path, name=name)
    report = registry.resolve()
    assert report.models_resolved == 3 and report.pairs_tested >= 2
    fam = registry.family("parent")
    assert set(fam.models) == {"parent", "child"}
    assert [(e.parent, e.child) for e in fam.edges] in ([("parent", "child")], [("child", "parent")])
    assert registry.family("stranger").notes == ("no relatives: a singleton",)
    root = fam.roots[0]
    assert registry.ancestry(root).notes == ("a root: no parent found",)
    edge = fam.edges[0]
    assert edge.p_value_log10 < -6 and 0 <= edge.direction_confidence <= 1
    # Idempotent: nothing new to test, same edges.
    again = registry.resolve()
    assert again.pairs_tested == 0 and again.edges == report.edges
    # A full re-solve gives the same answer.
    full = registry.resolve(full=True)
    assert full.edges == report.edges and full.models_resolved == 3


def test_ancestry_of_a_root_and_of_a_new_path(registry, small_family, tmp_path):
    registry.index_one(small_family["stranger"], name="stranger")
    registry.resolve()
    view = registry.ancestry("stranger")
    assert view.edges == () and view.notes == ("a singleton: no relatives found",)
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"\x00" * 4)
    from mothertree.registry.errors import UnreadableWeightsError

    before = registry.models()
    with pytest.raises(UnreadableWeightsError, match="too short for a safetensors header"):
        registry.ancestry(str(bad), add=True)
    assert registry.models() == before


def test_tree_cli_formats(cli, small_family):
    for name, path in small_family.items():
        assert cli("index", str(path), "--name", name)[0] == 0
    code, out, _ = cli("--json", "resolve")
    assert code == 0 and json.loads(out)["models_resolved"] == 3
    code, out, _ = cli("tree", "--format", "json")
    doc = json.loads(out)
    assert {m["name"] for m in doc["models"]} == {"parent", "child", "stranger"}
    e = doc["edges"][0]
    assert set(e) >= {"parent", "child", "relation", "p_value_log10", "direction_confidence", "method"}
    code, out, _ = cli("tree", "--format", "mermaid")
    assert out.startswith("flowchart TD") and "-->|" in out
    code, out, _ = cli("tree", "--format", "dot")
    assert out.startswith("digraph lineage {")
    code, out, _ = cli("--json", "descendants", e["parent"])
    assert [x["child"] for x in json.loads(out)["edges"]] == [e["child"]]
    code, out, _ = cli("--json", "test", "parent", "child")
    doc = json.loads(out)
    assert doc["a"] == "parent" and doc["dependent"] and doc["p_value_log10"] < -6
    code, out, _ = cli("--json", "test", "parent", "stranger")
    assert json.loads(out)["dependent"] is False


# ---------------------------------------------------------------- the zoo
@pytest.fixture(scope="module")
def resolved_zoo(zoo, tmp_path_factory):
    reg = Registry(str(tmp_path_factory.mktemp("zoo-registry") / "zoo.db"))
    for m in zoo.models:
        reg.index_one(m.path, name=m.name)
    report = reg.resolve()
    edges = {(e.parent, e.child): e for e in reg.tree().edges}
    yield reg, zoo, report, edges
    reg.close()


@pytest.mark.slow
def test_zoo_no_edge_between_families(resolved_zoo):
    _, zoo, _, edges = resolved_zoo
    fam = {m.name: m.family for m in zoo.models}
    assert [k for k in edges if fam[k[0]] != fam[k[1]]] == []


@pytest.mark.slow
def test_zoo_every_derivation_is_in_its_family(resolved_zoo):
    reg, zoo, _, _ = resolved_zoo
    for name, members in zoo.families().items():
        assert set(reg.family(name).models) == set(members), name


@pytest.mark.slow
def test_zoo_edge_accuracy(resolved_zoo):
    from mothertree.bench.bench_lineage import score

    _, zoo, _, edges = resolved_zoo
    s = score(zoo, [e.to_dict() for e in edges.values()])
    assert s.directed_accuracy >= 0.9, s.wrong
    assert s.relation_accuracy >= 0.9, s.wrong


@pytest.mark.slow
def test_zoo_structured_children(resolved_zoo):
    _, zoo, _, edges = resolved_zoo
    for m in zoo.models:
        if m.relation == "merge":
            for p in m.parents:
                assert edges[(p, m.name)].relation == "merge"
        if m.relation in ("quantized", "adapter"):
            assert (m.parents[0], m.name) in edges, m.name
        if m.relation == "pruned" and m.block_map:
            e = edges[(m.parents[0], m.name)]
            assert e.relation == "pruned"


@pytest.mark.slow
def test_zoo_incremental_placement(resolved_zoo, tmp_path):
    reg, zoo, _, _ = resolved_zoo
    child = _derive(Path(zoo.get("llama-a-ft").path), tmp_path / "late-upload", seed=7, scale=0.05)
    reg.index_one(child, name="late-upload")
    report = reg.resolve()
    assert report.models_resolved == 1 and 0 < report.pairs_tested <= 10 + 3
    view = reg.ancestry("late-upload")
    assert "llama-a-ft" in view.models
    reg.remove("late-upload")


def test_paths_never_overwrite_other_models(registry, small_family, tmp_path):
    from mothertree.registry.errors import ModelNotFoundError

    registry.index_one(small_family["parent"], name="llama")
    registry.resolve()
    impostor = shutil.copytree(small_family["stranger"], tmp_path / "llama")
    # Another path whose folder is also called "llama" is not known (ancestry reads only) and, once
    # added, gets its own name, never a revision of "llama".
    with pytest.raises(ModelNotFoundError, match="--add"):
        registry.ancestry(str(impostor))
    view = registry.ancestry(str(impostor), add=True)
    assert view.model == f"{tmp_path.name}/llama"
    assert registry.model("llama").model.revision == 1
    # An indexed path is recognised by its source, and is not its own candidate.
    cands = registry.candidates(str(small_family["parent"]))
    assert cands.model == "llama" and "llama" not in [c.name for c in cands.candidates]


def test_revision_and_move_keep_the_lineage_true(registry, small_family, tmp_path):
    for name, path in small_family.items():
        registry.index_one(path, name=name)
    grandchild = _derive(small_family["child"], tmp_path / "grandchild", seed=5)
    registry.index_one(grandchild, name="grandchild")
    registry.resolve()
    assert set(registry.family("grandchild").models) == {"parent", "child", "grandchild"}
    # "child" gets unrelated weights: its old family is re-solved without it.
    registry.index_one(small_family["stranger"], name="child")
    registry.resolve()
    assert set(registry.family("grandchild").models) == {"parent", "grandchild"}
    # Unchanged weights at a new place: the new source is recorded.
    moved = shutil.copytree(small_family["parent"], tmp_path / "moved-parent")
    assert registry.index_one(moved, name="parent").status == "unchanged"
    assert registry.model("parent").model.source == str(moved)
