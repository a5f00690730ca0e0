"""The FAISS store stays in step with SQL; candidates find relatives and not strangers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, select

from mothertree.registry import Registry
from mothertree.registry._candidates import THRESHOLD
from mothertree.registry._faiss_index import index_ids
from mothertree.registry._schema import Fingerprint, Model
from mothertree.registry._vectors import VectorStore


@pytest.fixture(scope="module")
def permuted_llama(tiny_models, tmp_path_factory) -> Path:
    """The tiny Llama with MLP units and heads permuted in every block (same function)."""
    import torch
    from safetensors.torch import load_file, save_file

    src = tiny_models["llama"]
    out = tmp_path_factory.mktemp("perm") / "llama-permuted"
    out.mkdir()
    state = load_file(src / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    for b in range(2):
        p = f"model.layers.{b}."
        units = torch.randperm(64, generator=g)
        dims = (torch.randperm(4, generator=g)[:, None] * 8 + torch.arange(8)).reshape(-1)
        for n in "qkv":
            state[f"{p}self_attn.{n}_proj.weight"] = state[f"{p}self_attn.{n}_proj.weight"][dims].contiguous()
        state[f"{p}self_attn.o_proj.weight"] = state[f"{p}self_attn.o_proj.weight"][:, dims].contiguous()
        for n in ("gate", "up"):
            state[f"{p}mlp.{n}_proj.weight"] = state[f"{p}mlp.{n}_proj.weight"][units].contiguous()
        state[f"{p}mlp.down_proj.weight"] = state[f"{p}mlp.down_proj.weight"][:, units].contiguous()
    save_file(state, out / "model.safetensors")
    (out / "config.json").write_text((src / "config.json").read_text())
    return out


def _sql_ids(reg: Registry, kind: str, level: str) -> list[int]:
    with reg.session() as s:
        return sorted(s.scalars(select(Fingerprint.id).where(Fingerprint.kind == kind, Fingerprint.level == level)))


def _assert_in_step(reg: Registry) -> None:
    keys = reg.vectors.keys()
    assert {(k, lv) for k, lv, _ in keys} == {(k, lv) for k in ("aligned", "invariant") for lv in ("model", "layer")}
    for key in keys:
        loaded = reg.vectors._ensure(key)
        assert sorted(index_ids(loaded.index).tolist()) == _sql_ids(reg, key[0], key[1])


def _index_three(reg: Registry, tiny_models, permuted_llama) -> None:
    reg.index_one(tiny_models["llama"], name="llama", device="cpu")
    reg.index_one(tiny_models["llama-other"], name="llama-other", device="cpu")
    reg.index_one(permuted_llama, name="llama-permuted", device="cpu")


def test_candidates_rank_relatives_above_strangers(registry, tiny_models, permuted_llama):
    _index_three(registry, tiny_models, permuted_llama)
    registry.index_one(tiny_models["gpt2"], name="gpt2", device="cpu")
    result = registry.candidates("llama", k=5)
    names = [c.name for c in result.candidates]
    assert names[0] == "llama-permuted" and "llama" not in names
    top = result.candidates[0]
    assert top.above_threshold and top.invariant_score > 0.99 and top.aligned_score < top.invariant_score
    assert all(not c.above_threshold for c in result.candidates[1:])
    assert result.threshold == THRESHOLD
    d = result.to_dict()
    assert set(d) == {"model", "candidates"} and d["model"] == "llama"
    blocks = {(m["block"], m["role"]): m for m in d["candidates"][0]["layers"]}
    assert set(blocks) == {(None, "embed"), (0, "attn"), (0, "mlp"), (1, "attn"), (1, "mlp")}
    assert blocks[(1, "mlp")]["other_block"] == 1 and blocks[(1, "mlp")]["kind"] == "invariant"
    assert blocks[(1, "mlp")]["score"] > 0.99
    _assert_in_step(registry)


def test_path_is_fingerprinted_on_the_fly_unless_added(registry, tiny_models, permuted_llama):
    registry.index_one(tiny_models["llama"], name="llama", device="cpu")
    before = _sql_ids(registry, "aligned", "model")
    result = registry.candidates(str(permuted_llama), k=3)
    assert result.model == "llama-permuted" and not result.stored
    assert [c.name for c in result.candidates] == ["llama"] and result.candidates[0].above_threshold
    assert _sql_ids(registry, "aligned", "model") == before
    added = registry.candidates(str(permuted_llama), k=3, add=True)
    assert added.stored and [c.name for c in added.candidates] == ["llama"]
    assert len(_sql_ids(registry, "aligned", "model")) == 2


def test_remove_deletes_rows_and_vectors(registry, tiny_models, permuted_llama):
    _index_three(registry, tiny_models, permuted_llama)
    with registry.session() as s:
        mid = s.scalar(select(Model.id).where(Model.name == "llama-permuted"))
        gone = set(s.scalars(select(Fingerprint.id).where(Fingerprint.model_id == mid)))
    registry.remove("llama-permuted")
    _assert_in_step(registry)
    for key in registry.vectors.keys():
        assert not gone & set(index_ids(registry.vectors._ensure(key).index).tolist())
    assert [c.name for c in registry.candidates("llama").candidates] == ["llama-other"]
    reopened = Registry(registry.url)
    _assert_in_step(reopened)
    reopened.close()


def test_revision_replaces_vectors(registry, tiny_models):
    registry.index_one(tiny_models["llama"], name="m", device="cpu")
    old = _sql_ids(registry, "aligned", "layer")
    assert registry.index_one(tiny_models["llama-other"], name="m", device="cpu").status == "revised"
    new = _sql_ids(registry, "aligned", "layer")
    assert len(new) == len(old) and not set(old) & set(new)
    _assert_in_step(registry)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_damaged_files_are_rebuilt_from_sql_on_open(registry, tiny_models, permuted_llama, damage):
    _index_three(registry, tiny_models, permuted_llama)
    files = sorted(registry.home.glob("*.faiss"))
    assert len(files) == 4
    for f in files:
        if damage == "missing":
            f.unlink()
        else:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    reopened = Registry(registry.url)
    with pytest.warns(RuntimeWarning, match="rebuilt from SQL"):
        result = reopened.candidates("llama")
    assert result.candidates[0].name == "llama-permuted" and result.notices
    _assert_in_step(reopened)
    reopened.close()


def test_crash_between_commit_and_faiss_write_is_repaired(registry, tiny_models, permuted_llama):
    _index_three(registry, tiny_models, permuted_llama)
    script = textwrap.dedent(
        f"""
        import os
        from mothertree.registry import Registry
        from mothertree.registry._vectors import VectorStore
        VectorStore.update = lambda self, **change: os._exit(3)   # dies right after the SQL commit
        Registry({registry.url!r}).index_one({str(tiny_models["gpt2"])!r}, name="gpt2", device="cpu")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    reopened = Registry(registry.url)
    assert "gpt2" in {m.name for m in reopened.models()}
    with pytest.warns(RuntimeWarning, match="out of step"):
        result = reopened.candidates("gpt2", k=5)
    assert {c.name for c in result.candidates} == {"llama", "llama-other", "llama-permuted"}
    _assert_in_step(reopened)
    reopened.close()


def test_reindex_fingerprints_old_models_and_rebuilds(registry, tiny_models, permuted_llama):
    _index_three(registry, tiny_models, permuted_llama)
    with registry.session() as s:
        mid = s.scalar(select(Model.id).where(Model.name == "llama"))
        VectorStore.delete_rows(s, mid)  # as if indexed before fingerprints existed
    plan = registry.plan_reindex(device="cpu")
    assert plan.unfingerprinted == ("llama",) and plan.bytes_to_read > 0
    assert {(i.kind, i.level) for i in plan.indexes} == {
        (k, lv) for k in ("aligned", "invariant") for lv in ("model", "layer")
    }
    report = plan.execute()
    assert report.fingerprinted == ("llama",) and report.warnings == ()
    assert all(i.index_type == "flat" and i.size_bytes > 0 for i in report.indexes)
    assert registry.candidates("llama").candidates[0].name == "llama-permuted"
    _assert_in_step(registry)


def _synthetic(reg: Registry, n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` random unit vectors as model-level fingerprints of ``n`` placeholder models."""
    from datetime import datetime, timezone

    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    now = datetime.now(timezone.utc)
    with reg.session() as s:
        models = [
            Model(name=f"m{i}", source="-", file_format="safetensors", architecture="llama", num_parameters=0,
                  content_digest=f"{i:064d}", indexed_at=now)
            for i in range(n)
        ]
        s.add_all(models)
        s.flush()
        s.add_all(
            Fingerprint(model_id=m.id, kind="aligned", level="model", dim=dim, vector=v.tobytes())
            for m, v in zip(models, vecs)
        )
    return vecs


def test_ivf_results_match_brute_force(registry):
    vecs = _synthetic(registry, 2000, 64, seed=0)
    store = VectorStore(registry._sessions, registry.home, flat_limit=500)
    (info,) = store.rebuild()
    assert info.index_type == "ivf" and info.vectors == 2000
    rng = np.random.default_rng(1)
    targets = rng.choice(2000, size=50, replace=False)
    queries = vecs[targets] + 0.05 * rng.standard_normal((50, 64)).astype(np.float32)
    scores, ids = store.search(("aligned", "model", 64), queries, 5)
    with registry.session() as s:
        rows = dict(s.execute(select(Fingerprint.id, Fingerprint.vector)).all())
    order = sorted(rows)
    truth = np.stack([np.frombuffer(rows[i], np.float32) for i in order])
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    brute = qn @ truth.T
    best = np.array(order)[brute.argmax(axis=1)]
    assert np.array_equal(ids[:, 0], best)  # near duplicates: IVF finds exactly the brute-force top 1
    for q in range(50):  # every returned score is the exact cosine of its id
        for score, fid in zip(scores[q], ids[q]):
            assert score == pytest.approx(brute[q, order.index(fid)], abs=1e-5)
    # Removing from an IVF index: rows deleted in SQL first, then from FAISS.
    key = ("aligned", "model", 64)
    with registry.session() as s:
        s.execute(delete(Fingerprint).where(Fingerprint.id.in_(ids[:10, 0].tolist())))
    store.update(remove=ids[:10, 0].tolist())
    _, again = store.search(key, queries[:10], 1)
    assert not set(again[:, 0]) & set(ids[:10, 0])
    assert sorted(index_ids(store._ensure(key).index).tolist()) == _sql_ids(registry, "aligned", "model")
    # A removal SQL does not know about leaves the index out of step: it is rebuilt, with a warning.
    with pytest.warns(RuntimeWarning, match="out of step"):
        store.update(remove=ids[10:20, 0].tolist())
    _, kept = store.search(key, queries[10:20], 1)
    assert np.array_equal(kept[:, 0], ids[10:20, 0])
