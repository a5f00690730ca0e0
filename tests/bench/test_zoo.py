"""The synthetic zoo's ground truth must match what is actually on disk.

Every benchmark trusts the manifest, so these tests check each relation
against the weights themselves: duplicates are bit-identical or compute the
same function, quantised copies sit on an int8 grid, pruned models keep the
recorded blocks and units, merges are the recorded average, LoRA deltas are
low-rank, and creation times increase along every edge.

The ``zoo`` fixture (``tests/conftest.py``, session-scoped) builds the
``test`` preset once (about 35 s on two cores) into
``default_zoo_dir("test")`` and reuses it across sessions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mothertree.bench import zoo as zoo_mod
from mothertree.bench.zoo import (
    MANIFEST_NAME,
    RELATIONS,
    BlockPermutation,
    Zoo,
    ZooModel,
    build_zoo,
    default_zoo_dir,
    load_zoo,
    make_corpus_batch,
)


def _weights(model: ZooModel) -> dict[str, torch.Tensor]:
    folder = Path(model.path)
    if model.format == "bin":
        return torch.load(folder / "pytorch_model.bin", weights_only=True)
    if model.format == "sharded":
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            out.update(load_file(str(folder / shard)))
        return out
    return load_file(str(folder / "model.safetensors"))


def _logits(model: ZooModel, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32).eval()
    with torch.no_grad():
        return net(input_ids=tokens).logits


def _tokens() -> torch.Tensor:
    return make_corpus_batch("A", torch.Generator().manual_seed(0), batch=2, seq_len=16)


# -- manifest ---------------------------------------------------------------


def test_manifest_round_trips(zoo: Zoo) -> None:
    assert Zoo.from_dict(zoo.to_dict()) == zoo
    on_disk = json.loads((Path(zoo.root) / MANIFEST_NAME).read_text())
    assert on_disk == zoo.to_dict()
    assert load_zoo(zoo.root) == zoo


def test_load_zoo_rebases_paths_of_a_moved_zoo(zoo: Zoo, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / MANIFEST_NAME).write_text((Path(zoo.root) / MANIFEST_NAME).read_text())
    loaded = load_zoo(moved)
    assert loaded.root == str(moved.resolve())
    assert loaded.get("llama-a").path == str(moved.resolve() / "llama-a")


def test_load_zoo_without_manifest_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="python -m mothertree.bench.zoo --root"):
        load_zoo(tmp_path)


def test_every_model_folder_exists_and_no_temporary_folder_is_left(zoo: Zoo) -> None:
    for model in zoo.models:
        assert (Path(model.path) / "config.json").is_file(), model.name
    assert not [p.name for p in Path(zoo.root).iterdir() if p.name.startswith(".tmp-")]


def test_ground_truth_fields_are_consistent(zoo: Zoo) -> None:
    names = set(zoo.names)
    assert len(names) == len(zoo.models)
    for model in zoo.models:
        assert model.relation in RELATIONS
        assert set(model.parents) <= names
        assert (model.relation == "root") == (not model.parents)
        assert (model.relation == "merge") == (len(model.parents) == 2)
        if model.merge_weights is not None:
            assert len(model.merge_weights) == len(model.parents)
            assert sum(model.merge_weights) == pytest.approx(1.0)
        for parent in model.parents:
            assert zoo.get(parent).family == model.family


def test_families_separate_independent_roots_on_the_same_corpus(zoo: Zoo) -> None:
    families = zoo.families()
    assert set(families) == {"llama-a", "llama-b", "llama-c", "gpt2-a", "gpt2-b"}
    assert zoo.get("llama-a").corpus == zoo.get("llama-b").corpus == "A"
    assert "llama-a-merge" in families["llama-a"]
    assert families["llama-b"] == ("llama-b",)


def test_edges_list_one_edge_per_parent(zoo: Zoo) -> None:
    edges = zoo.edges()
    assert ("llama-a-ft", "llama-a-merge", "merge") in edges
    assert ("llama-a-ft2", "llama-a-merge", "merge") in edges
    assert ("llama-a-ft", "llama-a-ft-ft", "finetune") in edges
    assert ("gpt2-a", "gpt2-a-lora", "adapter") in edges
    assert len(edges) == sum(len(m.parents) for m in zoo.models)


def test_timestamps_increase_along_every_edge(zoo: Zoo) -> None:
    for parent, child, _ in zoo.edges():
        assert zoo.get(parent).created_at < zoo.get(child).created_at, (parent, child)


def test_get_unknown_model_names_the_known_ones(zoo: Zoo) -> None:
    with pytest.raises(KeyError, match="No model 'nope'.*llama-a-ft"):
        zoo.get("nope")


# -- formats ------------------------------------------------------------------


def test_sharded_copy_has_several_shards_and_the_parents_exact_tensors(zoo: Zoo) -> None:
    folder = Path(zoo.get("llama-a-sharded").path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2
    assert all((folder / s).is_file() for s in shards)
    assert not (folder / "model.safetensors").exists()
    _assert_same_tensors(_weights(zoo.get("llama-a-sharded")), _weights(zoo.get("llama-a-ft")))


def test_bin_copy_loads_without_pickle_code_and_equals_the_parent(zoo: Zoo) -> None:
    model = zoo.get("llama-a-bin")
    assert model.format == "bin"
    assert not (Path(model.path) / "model.safetensors").exists()
    _assert_same_tensors(_weights(model), _weights(zoo.get("llama-a-ft")))


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


# -- relations against the weights -----------------------------------------------


@pytest.mark.parametrize("name", ["llama-a-permuted", "gpt2-a-permuted"])
def test_permuted_copy_computes_its_parents_function(zoo: Zoo, name: str) -> None:
    child = zoo.get(name)
    parent = zoo.get(child.parents[0])
    assert child.relation == "duplicate" and "permuted" in child.note
    tokens = _tokens()
    torch.testing.assert_close(_logits(child, tokens), _logits(parent, tokens), atol=1e-4, rtol=1e-4)
    # ...while its weights really moved: the same function, other tensors.
    key = (
        "model.layers.1.mlp.up_proj.weight" if child.arch == "llama"
        else "transformer.h.1.mlp.c_fc.weight"
    )
    assert not torch.equal(_weights(child)[key], _weights(parent)[key])


def test_permutation_ground_truth_maps_child_units_to_parent_units(zoo: Zoo) -> None:
    child = zoo.get("llama-a-permuted")
    w_child, w_parent = _weights(child), _weights(zoo.get(child.parents[0]))
    perm = child.permutation[1]
    assert isinstance(perm, BlockPermutation) and perm.block == 1
    up = "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(w_child[up], w_parent[up][list(perm.mlp_units)])
    q = "model.layers.1.self_attn.q_proj.weight"
    head_dim = w_parent[q].shape[0] // len(perm.heads)
    for h_child, h_parent in enumerate(perm.heads):
        assert torch.equal(
            w_child[q][h_child * head_dim:(h_child + 1) * head_dim],
            w_parent[q][h_parent * head_dim:(h_parent + 1) * head_dim],
        )


def _on_int8_grid(row: torch.Tensor) -> bool:
    """Levels within 0.25 of integers: float16 storage moves a level by up to ~0.12."""
    row = row.float()
    scale = row.abs().max() / 127
    levels = row / scale
    return bool(torch.unique(row).numel() <= 255 and (levels - levels.round()).abs().max() < 0.25)


@pytest.mark.parametrize("name", ["llama-a-ft-int8", "gpt2-a-ft-int8"])
def test_int8_copy_lies_on_a_per_output_channel_grid(zoo: Zoo, name: str) -> None:
    child = zoo.get(name)
    w_child, w_parent = _weights(child), _weights(zoo.get(child.parents[0]))
    assert child.dtype == "float16"
    matrices = [k for k, v in w_child.items() if v.ndim == 2]
    assert matrices
    for key in matrices:
        # GPT-2 Conv1D stores [in, out]; output channels are its columns.
        conv1d = child.arch == "gpt2" and key.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        c = w_child[key].T if conv1d else w_child[key]
        p = w_parent[key].T if conv1d else w_parent[key]
        assert all(_on_int8_grid(row) for row in c), key
        assert not all(_on_int8_grid(row) for row in p), key
        torch.testing.assert_close(c.float(), p, atol=float(p.abs().max()) / 127, rtol=0)


@pytest.mark.parametrize("name", ["llama-a-pruned", "gpt2-a-pruned"])
def test_depth_pruned_copy_keeps_the_recorded_blocks(zoo: Zoo, name: str) -> None:
    child = zoo.get(name)
    w_child, w_parent = _weights(child), _weights(zoo.get(child.parents[0]))
    config = json.loads((Path(child.path) / "config.json").read_text())
    assert config["num_hidden_layers" if child.arch == "llama" else "n_layer"] == 2
    assert child.block_map == ((0, 0), (1, 3))
    prefix = "model.layers." if child.arch == "llama" else "transformer.h."
    blocks = {int(k[len(prefix):].split(".")[0]) for k in w_child if k.startswith(prefix)}
    assert blocks == {0, 1}
    for c_block, p_block in child.block_map:
        for key in (k for k in w_child if k.startswith(f"{prefix}{c_block}.")):
            parent_key = f"{prefix}{p_block}." + key[len(f"{prefix}{c_block}."):]
            assert torch.equal(w_child[key], w_parent[parent_key]), key


def test_width_pruned_copy_keeps_the_recorded_units(zoo: Zoo) -> None:
    child = zoo.get("llama-a-pruned-width")
    w_child, w_parent = _weights(child), _weights(zoo.get(child.parents[0]))
    assert child.relation == "pruned" and len(child.kept_units) == 4
    for block, units in child.kept_units:
        p = f"model.layers.{block}.mlp."
        assert len(units) == 96 and list(units) == sorted(units)
        assert torch.equal(w_child[p + "up_proj.weight"], w_parent[p + "up_proj.weight"][list(units)])
        down = w_parent[p + "down_proj.weight"][:, list(units)]
        assert torch.equal(w_child[p + "down_proj.weight"], down)


def test_merge_is_the_recorded_weighted_average(zoo: Zoo) -> None:
    child = zoo.get("llama-a-merge")
    w_child = _weights(child)
    parents = [_weights(zoo.get(p)) for p in child.parents]
    assert child.merge_weights == (0.6, 0.4)
    for key, value in w_child.items():
        expected = sum(a * w[key] for a, w in zip(child.merge_weights, parents))
        torch.testing.assert_close(value, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "targeted"),
    [
        ("llama-a-lora", ("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj", "mlp.down_proj")),
        ("gpt2-a-lora", ("attn.c_attn", "mlp.c_fc")),
    ],
)
def test_lora_child_differs_only_in_targeted_matrices_by_a_low_rank_delta(
    zoo: Zoo, name: str, targeted: tuple[str, ...]
) -> None:
    child = zoo.get(name)
    w_child, w_parent = _weights(child), _weights(zoo.get(child.parents[0]))
    assert child.relation == "adapter"
    for key, value in w_child.items():
        if key.endswith(tuple(f"{t}.weight" for t in targeted)):
            delta = (value - w_parent[key]).double()
            assert torch.linalg.matrix_rank(delta, rtol=1e-5) == 4, key
        else:
            assert torch.equal(value, w_parent[key]), key


def test_finetunes_stay_close_to_their_parent_and_independent_roots_do_not(zoo: Zoo) -> None:
    key = "model.layers.1.mlp.up_proj.weight"

    def cosine(a: str, b: str) -> float:
        x, y = _weights(zoo.get(a))[key].flatten(), _weights(zoo.get(b))[key].flatten()
        return float(x @ y / (x.norm() * y.norm()))

    assert cosine("llama-a", "llama-a-ft") > 0.95
    assert cosine("llama-a-ft", "llama-a-ft-ft") > 0.95
    assert abs(cosine("llama-a", "llama-b")) < 0.1
    assert cosine("llama-a-ft", "llama-a-ft2") < cosine("llama-a", "llama-a-ft")


def test_reinitialised_block_loses_its_parent_while_the_others_keep_it(zoo: Zoo) -> None:
    child, parent = _weights(zoo.get("llama-a-reinit")), _weights(zoo.get("llama-a"))

    def cosine(block: int) -> float:
        key = f"model.layers.{block}.mlp.up_proj.weight"
        x, y = child[key].flatten(), parent[key].flatten()
        return float(x @ y / (x.norm() * y.norm()))

    assert abs(cosine(2)) < 0.1
    assert cosine(0) > 0.95 and cosine(3) > 0.95


# -- building -----------------------------------------------------------------------


def test_rebuilding_a_built_zoo_returns_at_once(zoo: Zoo) -> None:
    start = time.perf_counter()
    again = build_zoo(zoo.root, preset="test")
    assert time.perf_counter() - start < 2.0
    assert again == zoo


def test_builds_are_deterministic_and_leave_global_torch_state_alone(tmp_path: Path) -> None:
    rng, threads = torch.random.get_rng_state(), torch.get_num_threads()
    first = zoo_mod.build_calibration_roots(tmp_path / "one", n=2)
    second = zoo_mod.build_calibration_roots(tmp_path / "two", n=2)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert torch.get_num_threads() == threads
    assert first.names == ("calib-llama-00", "calib-llama-01")
    assert len(first.families()) == 2 and first.edges() == ()
    for a, b in zip(first.models, second.models):
        assert (Path(a.path) / "model.safetensors").read_bytes() == (
            Path(b.path) / "model.safetensors"
        ).read_bytes()
    assert not torch.equal(*(_weights(m)["model.embed_tokens.weight"] for m in first.models))


def test_half_written_folders_of_dead_builds_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / ".tmp-llama-a-999999999"
    alive = tmp_path / f".tmp-llama-a-{os.getpid()}"
    for folder in (dead, alive):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
    zoo_mod._remove_stale_temporaries(tmp_path)
    assert not dead.exists() and alive.exists()


def test_demo_preset_reuses_the_test_presets_models() -> None:
    assert zoo_mod.preset_digests("demo").items() <= zoo_mod.preset_digests("test").items()


def test_the_demo_takes_its_models_only_from_a_zoo_that_holds_them() -> None:
    from mothertree.bench.demo import demo_models_of

    test_names = tuple(zoo_mod.preset_digests("test"))
    built = zoo_mod.Zoo(root="/zoo", preset="test", models=tuple(
        zoo_mod.ZooModel(name=n, path=f"/zoo/{n}", family=n, arch="llama", parents=(), relation="root",
                         format="safetensors", created_at="2026-01-01T00:00:00Z") for n in test_names))
    demo = demo_models_of(built)
    assert demo.preset == "demo" and set(demo.names) == set(zoo_mod.preset_digests("demo"))
    calibration = dataclasses.replace(built, preset="calibration")
    with pytest.raises(ValueError, match="does not hold the demo's models llama-a, "):
        demo_models_of(calibration)


def test_mother_preset_is_one_tree_of_at_least_fifteen_llamas() -> None:
    recipes, _ = zoo_mod._preset("mother")
    assert len(recipes) >= 15
    assert {r.arch for r in recipes} == {"llama"}
    assert [r.name for r in recipes if not r.parents] == ["mother"]
    assert {r.op for r in recipes} == {"root", "finetune", "lora"}


def test_corpus_batches_are_reproducible_and_corpora_differ() -> None:
    a1 = make_corpus_batch("A", torch.Generator().manual_seed(3))
    a2 = make_corpus_batch("A", torch.Generator().manual_seed(3))
    b = make_corpus_batch("B", torch.Generator().manual_seed(3))
    assert a1.shape == (8, 32) and a1.dtype == torch.long
    assert torch.equal(a1, a2)
    assert not torch.equal(a1[:, 2:], b[:, 2:])


def test_bad_arguments_are_rejected_with_the_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="preset must be one of test, demo"):
        build_zoo(tmp_path, preset="huge")
    with pytest.raises(ValueError, match="arch must be 'llama', 'gpt2' or 'mixed'; got 'bert'"):
        zoo_mod.build_calibration_roots(tmp_path, n=4, arch="bert")
    with pytest.raises(ValueError, match="n must be at least 2"):
        zoo_mod.build_calibration_roots(tmp_path, n=1)
    with pytest.raises(ValueError, match="corpus must be one of A, B"):
        make_corpus_batch("Z", torch.Generator())


def test_default_zoo_dir_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MOTHERTREE_ZOO_DIR", str(tmp_path))
    assert default_zoo_dir() == tmp_path
    assert default_zoo_dir("demo") == tmp_path / "demo"
    monkeypatch.delenv("MOTHERTREE_ZOO_DIR")
    assert default_zoo_dir().name == ".zoo"
