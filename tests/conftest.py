"""Shared fixtures: databases on SQLite and PostgreSQL, tiny models, the zoo, a CLI runner."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

PG_URL = os.environ.get(
    "MOTHERTREE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _pg_admin():
    from sqlalchemy import create_engine

    return create_engine(PG_URL, isolation_level="AUTOCOMMIT")


def _pg_reachable() -> str | None:
    try:
        from sqlalchemy import text

        eng = _pg_admin()
        with eng.connect() as c:
            c.execute(text("SELECT 1"))
        eng.dispose()
        return None
    except Exception as exc:  # any failure means "no server": report why
        return f"PostgreSQL not reachable at {PG_URL}: {str(exc).splitlines()[0]}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty database: an SQLite file, or a new PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    why = _pg_reachable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    name = f"mt_test_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def registry(db_url, tmp_path, monkeypatch):
    from mothertree.registry import Registry

    monkeypatch.setenv("MOTHERTREE_HOME", str(tmp_path / "home"))
    reg = Registry(db_url)
    yield reg
    reg.close()


def _save_tiny(folder: Path, kind: str, seed: int = 0, as_bin: bool = False, **save_kwargs) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if kind == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, vocab_size=64, max_position_embeddings=32,
                tie_word_embeddings=False,
            )
        )
    else:
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32))
    model.save_pretrained(folder, **save_kwargs)
    if as_bin:  # transformers 5 always writes safetensors; write the pickle ourselves
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Untrained tiny models in every layout the readers handle (built once per session)."""
    root = tmp_path_factory.mktemp("tiny")
    out = {
        "llama": _save_tiny(root / "llama", "llama"),
        "llama-other": _save_tiny(root / "llama-other", "llama", seed=1),
        "gpt2": _save_tiny(root / "gpt2", "gpt2"),
        "llama-bin": _save_tiny(root / "llama-bin", "llama", as_bin=True),
        "llama-sharded": _save_tiny(root / "llama-sharded", "llama", max_shard_size="20KB"),
    }
    return out


@pytest.fixture(scope="session")
def zoo():
    """The ground-truth test zoo, cached across sessions in MOTHERTREE_ZOO_DIR or ./.zoo."""
    from mothertree.bench.zoo import build_zoo, default_zoo_dir

    return build_zoo(default_zoo_dir("test"), preset="test")


@pytest.fixture
def cli(monkeypatch, tmp_path):
    """Run the CLI in-process against a fresh SQLite registry; returns (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from mothertree.cli import app

    monkeypatch.setenv("MOTHERTREE_HOME", str(tmp_path / "clihome"))
    monkeypatch.delenv("MOTHERTREE_DB", raising=False)
    runner = CliRunner()

    def run(*args: str):
        res = runner.invoke(app, list(args), catch_exceptions=False)
        return res.exit_code, res.stdout, res.stderr

    return run


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of two CPUs for the tests of one module (the drivers' ``ensure_ray`` finds it started)."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 2**20)
        try:
            yield ray
        finally:
            ray.shutdown()
