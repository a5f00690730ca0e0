"""Degenerate models, scalar-only files and stale FAISS files, through the registry (SQLite and PostgreSQL)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mothertree.registry import Registry
from mothertree.registry.errors import RegistryError


def _zeros_copy(src, dst):
    shutil.copytree(src, dst)
    state = load_file(src / "model.safetensors")
    save_file({k: torch.zeros_like(v) for k, v in state.items()}, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_all_zeros_model_is_never_a_relative(registry, tiny_models, tmp_path):
    zeros = _zeros_copy(tiny_models["llama"], tmp_path / "zeros")
    registry.index_one(tiny_models["llama-other"], name="base")
    registry.index_one(zeros, name="zeros")
    report = registry.test("base", "zeros")
    assert not report.result.dependent and report.result.p_value == 1.0
    assert any("degenerate" in n for n in report.result.notes)
    registry.resolve()
    assert registry.family("zeros").edges == () and registry.family("base").edges == ()


def _rewritten_copy(src, dst, make):
    shutil.copytree(src, dst)
    state = load_file(src / "model.safetensors")
    save_file({k: make(v) for k, v in state.items()}, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


#: Degenerate copies of a model: all zeros, one constant, and its signs (tied values, and derived
#: from the base: without the check the signs alone would "prove" lineage).
_DEGENERATE_COPIES = {
    "zeros": torch.zeros_like,
    "constant": lambda v: torch.full_like(v, 0.37),
    "signs": lambda v: torch.sign(v) * 0.02,
}


@pytest.mark.parametrize("kind", sorted(_DEGENERATE_COPIES))
def test_a_streamed_degenerate_model_is_never_a_relative(registry, tiny_models, tmp_path, monkeypatch, kind):
    """Past the in-memory limit the weights stream: the verdicts stored at index time keep them out."""
    from mothertree.registry._schema import Tensor

    bad = _rewritten_copy(tiny_models["llama"], tmp_path / kind, _DEGENERATE_COPIES[kind])
    registry.index_one(tiny_models["llama"], name="base")
    registry.index_one(bad, name=kind)
    with registry.session() as s:
        judged = {t.name: t.informative for t in s.query(Tensor).filter(Tensor.informative.is_not(None))}
    assert judged and set(judged.values()) == {False}  # every identity matrix judged degenerate while indexing
    monkeypatch.setenv("MOTHERTREE_MAX_MEMORY", "1M")
    monkeypatch.setenv("MOTHERTREE_FORWARD_MAX_PARAMS", "1")  # weights only: the weights alone decide
    def never(_):
        raise AssertionError("judged again: the verdicts stored by index were not used")

    monkeypatch.setattr("mothertree.lineage.degenerate_reason", never)
    digest = registry.model(kind).content_digest
    loaded = registry._pairs.cache.load(str(bad), digest)  # both models now stream (past 1/16 of 1 MiB)
    assert not isinstance(loaded.weights, dict) and set(loaded.weights.degenerate) == set(loaded.weights)
    report = registry.test("base", kind)
    assert not report.result.dependent and report.result.p_value == 1.0
    assert any("tensors degenerate, excluded from the evidence" in n for n in report.result.notes)
    registry.resolve(full=True)
    assert registry.family(kind).edges == () and registry.family("base").edges == ()


def test_a_streamed_model_indexed_without_verdicts_is_judged_when_loaded(registry, tiny_models, tmp_path, monkeypatch):
    """A model indexed before the verdicts were stored (or a path) is read once and judged on load."""
    from sqlalchemy import update

    from mothertree.registry._schema import Tensor

    zeros = _zeros_copy(tiny_models["llama"], tmp_path / "zeros")
    registry.index_one(tiny_models["llama"], name="base")
    registry.index_one(zeros, name="zeros")
    with registry.session() as s:
        s.execute(update(Tensor).values(informative=None, degenerate_reason=None))
    monkeypatch.setenv("MOTHERTREE_MAX_MEMORY", "1M")
    report = registry.test("base", "zeros")
    assert not report.result.dependent and any("degenerate" in n for n in report.result.notes)
    g = torch.Generator().manual_seed(5)
    child = _rewritten_copy(tiny_models["llama"], tmp_path / "child", lambda v: v + 0.01 * torch.randn(v.shape, generator=g))
    report = registry.test("base", str(child))  # a path (judged on load) and a registry model, both streamed
    assert report.result.dependent and report.result.method != "identical"
    assert not any("degenerate" in n for n in report.result.notes)


def test_scalar_only_model_is_not_called_old(registry, tmp_path):
    save_file({"model.embed_tokens.weight": torch.tensor(1.0)}, tmp_path / "scalar.safetensors")
    registry.index_one(tmp_path / "scalar.safetensors", name="scalar")
    with pytest.raises(RegistryError, match="none of its 1 learned tensor") as info:
        registry.candidates("scalar")
    assert "indexed before they existed" not in str(info.value)


def _ids_equal(reg) -> bool:
    return reg.vectors.drift() == ()


def test_stale_faiss_file_is_reported_by_dry_run_and_repaired_by_reindex(registry, tiny_models, tmp_path):
    registry.index_one(tiny_models["llama"], name="a")
    stale = {p.name: p.read_bytes() for p in registry.home.glob("*.faiss")}
    registry.index_one(tiny_models["llama-other"], name="b")
    for name, data in stale.items():  # as if killed between the SQL commit and the FAISS write
        (registry.home / name).write_bytes(data)
    reopened = Registry(registry.url)
    plan = reopened.plan_reindex(device="cpu")
    assert plan.drift and all(d.problem == "ids differ" and d.missing_ids > 0 for d in plan.drift)
    assert "drift" in plan.to_dict() and "missing" in str(plan.drift[0])
    report = plan.execute()
    assert report.repaired == plan.drift and _ids_equal(reopened)
    reopened.close()


def test_missing_faiss_file_is_drift(registry, tiny_models):
    registry.index_one(tiny_models["llama"], name="a")
    victim = sorted(registry.home.glob("*.faiss"))[0]
    victim.unlink()
    drift = registry.vectors.drift()
    assert [d.problem for d in drift] == ["missing file"]
    registry.reindex(device="cpu")
    assert registry.vectors.drift() == ()
