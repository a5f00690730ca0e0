"""Migrations up and down, and indexing that is all-or-nothing, on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import func, inspect, select, text

from mothertree.registry import Registry
from mothertree.registry._db import head_revision, make_engine
from mothertree.registry._schema import Model, ModelRevision, Tensor
from mothertree.registry.errors import ModelNotFoundError, UnreadableWeightsError


def test_migrations_up_and_down(db_url):
    reg = Registry(db_url, upgrade=False)
    assert "models" not in inspect(reg.engine).get_table_names()
    assert reg.upgrade() == head_revision()
    assert {"models", "tensors", "model_revisions"} <= set(inspect(reg.engine).get_table_names())
    assert reg.downgrade("base") is None
    assert {"models", "tensors"}.isdisjoint(inspect(reg.engine).get_table_names())
    assert reg.upgrade() == head_revision()
    reg.close()


def test_first_use_migrates(db_url):
    with Registry(db_url) as reg:
        assert reg.models() == ()


def test_sqlite_pragmas(tmp_path):
    eng = make_engine(str(tmp_path / "x.db"))
    with eng.connect() as c:
        assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def _counts(reg):
    with reg.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (Model, Tensor, ModelRevision))


def test_index_unchanged_and_revised(registry, tiny_models, tmp_path):
    first = registry.index_one(tiny_models["llama"], name="m")
    assert (first.status, first.revision) == ("indexed", 1)
    assert dict(first.role_counts)["mlp.up"] == 2
    again = registry.index_one(tiny_models["llama-bin"], name="m")  # same weights, other format
    assert again.status == "unchanged"
    before = _counts(registry)
    changed = registry.index_one(tiny_models["llama-other"], name="m")
    assert (changed.status, changed.revision) == ("revised", 2)
    m, t, r = _counts(registry)
    assert (m, t, r) == (before[0], before[1], before[2] + 1)
    assert registry.model("m").model.revision == 2


def test_bad_input_leaves_database_unchanged(registry, tiny_models, tmp_path):
    registry.index_one(tiny_models["gpt2"])
    before = _counts(registry)
    bad = tmp_path / "bad"
    shutil.copytree(tiny_models["llama"], bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(UnreadableWeightsError, match="truncated"):
        registry.index_one(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnreadableWeightsError, match="no weights found"):
        registry.index_one(empty)
    assert _counts(registry) == before


def test_crash_mid_index_rolls_back(registry, tiny_models, monkeypatch):
    """A failure after some tensor rows are added must leave no trace of the model."""
    import mothertree.registry._indexing as mod

    real = mod.ModelRevision

    def boom(**kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mod, "ModelRevision", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        registry.index_one(tiny_models["llama"])
    monkeypatch.setattr(mod, "ModelRevision", real)
    assert _counts(registry) == (0, 0, 0)


def test_keep_going_batch(registry, tiny_models, tmp_path):
    report = registry.index([tiny_models["gpt2"], tmp_path / "missing"], keep_going=True)
    assert [r.name for r in report.results] == ["gpt2"]
    assert report.errors[0][0].endswith("missing")


def test_remove_cascades(registry, tiny_models):
    registry.index_one(tiny_models["llama"])
    registry.remove("llama")
    assert _counts(registry) == (0, 0, 0)
    with pytest.raises(ModelNotFoundError, match="Model 'llama' is not in the registry"):
        registry.remove("llama")
