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
