"""kill -9 at random moments during ``index`` and during the late phase of ``resolve``.

Each trial kills a real subprocess with SIGKILL, then checks the registry:
SQL integrity (SQLite's integrity and foreign-key checks, no model without
tensors, no orphan rows) and FAISS ids = SQL ids (:meth:`VectorStore.drift`).
A stale FAISS file is the one inconsistency a kill may leave (between the SQL
commit and the file write): it must be *detected* by that check, and the next
run must complete and leave no inconsistency at all.

Run::

    python -m mothertree.bench.bench_kill9 --index-kills 50 --resolve-kills 20
    python -m mothertree.bench.bench_kill9 --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

With ``--postgres`` every trial gets a fresh database created through that server (the URL's
database is only used to connect for ``CREATE DATABASE``/``DROP DATABASE``), as SQLite gets a
fresh file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["make_models", "check_registry", "kill_index_trial", "kill_resolve_trial"]

_CONFIG = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 64,
}


def _state(seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    st = {"model.embed_tokens.weight": r(64, 32), "lm_head.weight": r(64, 32), "model.norm.weight": torch.ones(32)}
    for i in range(2):
        p = f"model.layers.{i}."
        for n in ("q", "k", "v", "o"):
            st[p + f"self_attn.{n}_proj.weight"] = r(32, 32)
        st[p + "mlp.gate_proj.weight"], st[p + "mlp.up_proj.weight"] = r(64, 32), r(64, 32)
        st[p + "mlp.down_proj.weight"] = r(32, 64)
        st[p + "input_layernorm.weight"] = torch.ones(32)
        st[p + "post_attention_layernorm.weight"] = torch.ones(32)
    return st


def make_models(root: Path) -> dict[str, Path]:
    """Three tiny llama-layout models: a parent, its fine-tuned child and a stranger."""
    import torch
    from safetensors.torch import save_file

    out = {}
    parent = _state(0)
    g = torch.Generator().manual_seed(9)
    child = {k: v + 0.02 * torch.randn(v.shape, generator=g) if v.ndim == 2 else v for k, v in parent.items()}
    for name, st in (("parent", parent), ("child", child), ("stranger", _state(1))):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        save_file(st, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(_CONFIG))
        out[name] = folder
    return out


def check_registry(url: str) -> list[str]:
    """Every inconsistency found: SQL integrity first, then FAISS ids vs SQL ids."""
    from sqlalchemy import text

    from mothertree.registry import Registry

    problems = []
    reg = Registry(url)
    try:
        with reg.engine.connect() as c:
            if reg.engine.dialect.name == "sqlite":
                ok = c.execute(text("PRAGMA integrity_check")).scalar()
                if ok != "ok":
                    problems.append(f"sqlite integrity_check: {ok}")
                fk = c.execute(text("PRAGMA foreign_key_check")).fetchall()
                if fk:
                    problems.append(f"foreign_key_check: {len(fk)} rows")
            empty = c.execute(text(
                "SELECT name FROM models m WHERE NOT EXISTS (SELECT 1 FROM tensors t WHERE t.model_id = m.id)"
            )).scalars().all()
            if empty:
                problems.append(f"models without tensors: {empty}")
            for table in ("tensors", "fingerprints", "model_revisions"):
                n = c.execute(text(
                    f"SELECT count(*) FROM {table} x WHERE NOT EXISTS (SELECT 1 FROM models m WHERE m.id = x.model_id)"
                )).scalar()
                if n:
                    problems.append(f"{n} orphan row(s) in {table}")
        problems += [f"FAISS: {d}" for d in reg.vectors.drift()]
    finally:
        reg.close()
    return problems


_INDEX = """
import sys
from pathlib import Path
from mothertree.registry import Registry
reg = Registry(sys.argv[1])
print("ready", flush=True)
for p in sys.argv[2:]:
    reg.index_one(p, name=Path(p).name, device="cpu")
print("done", flush=True)
"""

_RESOLVE = """
import sys
from mothertree.registry import Registry
reg = Registry(sys.argv[1])
print("ready", flush=True)
reg.resolve(full=len(sys.argv) > 2)
print("done", flush=True)
"""


def _start(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-W", "ignore", "-c", script, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"child did not start: {line!r} {proc.stderr.read()[-2000:]}")


def _run(script: str, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", script, *args], capture_output=True, text=True)
    if proc.returncode != 0 or "done" not in proc.stdout:
        raise RuntimeError(f"re-run failed: {proc.stderr[-2000:]}")


def kill_index_trial(url: str, models: dict[str, Path], rnd: random.Random, max_delay: float = 2.0) -> dict:
    """Kill an ``index`` of every model after a random delay; check; re-run; check again."""
    paths = [str(p) for p in models.values()]
    proc = _start(_INDEX, url, *paths)
    _wait_ready(proc)
    time.sleep(rnd.uniform(0, max_delay))
    finished = proc.poll() is not None
    if not finished:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    after_kill = check_registry(url)
    _run(_INDEX, url, *paths)
    after_rerun = check_registry(url)
    return {"killed": not finished, "after_kill": after_kill, "after_rerun": after_rerun}


def _pair_tests(url: str) -> int:
    from sqlalchemy import create_engine, text

    eng = create_engine(url)
    try:
        with eng.connect() as c:
            return int(c.execute(text("SELECT count(*) FROM pair_tests")).scalar())
    finally:
        eng.dispose()


def kill_resolve_trial(url: str, rnd: random.Random, max_delay: float = 0.5, timeout: float = 120.0) -> dict:
    """Kill a full ``resolve`` once pair tests are stored (its late phase); check; re-run; check again."""
    proc = _start(_RESOLVE, url, "full")
    _wait_ready(proc)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if _pair_tests(url) > 0:
            break
        time.sleep(0.02)
    time.sleep(rnd.uniform(0, max_delay))
    finished = proc.poll() is not None
    if not finished:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    after_kill = check_registry(url)
    _run(_RESOLVE, url)
    after_rerun = check_registry(url)
    from mothertree.registry import Registry

    reg = Registry(url)
    try:
        family = set(reg.family("parent").models)
    finally:
        reg.close()
    if family != {"parent", "child"}:
        after_rerun.append(f"family of parent after re-run is {sorted(family)}")
    return {"killed": not finished, "after_kill": after_kill, "after_rerun": after_rerun}


@contextmanager
def _fresh_database(tmp: str, label: str, postgres: str | None) -> Iterator[str]:
    """A new empty database for one trial: an SQLite file in ``tmp``, or a PostgreSQL database
    created through the ``postgres`` server URL and dropped afterwards."""
    if postgres is None:
        yield f"sqlite:///{tmp}/{label}.db"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"mt_kill9_{label.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(postgres).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index-kills", type=int, default=50)
    ap.add_argument("--resolve-kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--postgres", default=None, metavar="URL",
                    help="PostgreSQL server URL: a fresh database per trial (default: a fresh SQLite file per trial)")
    args = ap.parse_args(argv)
    rnd = random.Random(args.seed)
    out = {"index": [], "resolve": []}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        # The FAISS files of a server database live in the registry home: keep them in tmp too
        # (the children inherit the environment).
        os.environ["MOTHERTREE_HOME"] = str(Path(tmp) / "home")
        models = make_models(Path(tmp) / "models")
        for i in range(args.index_kills):
            with _fresh_database(tmp, f"index-{i}", args.postgres) as url:
                out["index"].append(kill_index_trial(url, models, rnd))
            print(json.dumps({"index": i, **out["index"][-1]}), file=sys.stderr, flush=True)
        with _fresh_database(tmp, "resolve", args.postgres) as url:
            _run(_INDEX, url, *(str(p) for p in models.values()))
            for i in range(args.resolve_kills):
                out["resolve"].append(kill_resolve_trial(url, rnd))
                print(json.dumps({"resolve": i, **out["resolve"][-1]}), file=sys.stderr, flush=True)

    def summary(trials):
        return {
            "trials": len(trials), "killed": sum(t["killed"] for t in trials),
            "inconsistent_after_kill_detected": sum(bool(t["after_kill"]) for t in trials),
            "kinds_after_kill": sorted({p.split(":")[0] for t in trials for p in t["after_kill"]}),
            "inconsistent_after_rerun": sum(bool(t["after_rerun"]) for t in trials),
            "examples": [t["after_rerun"] for t in trials if t["after_rerun"]][:3],
        }

    result = {"database": "postgresql" if args.postgres else "sqlite",
              "index": summary(out["index"]), "resolve": summary(out["resolve"]),
              "wall_s": round(time.monotonic() - t0, 1)}
    print(json.dumps(result, indent=2))
    return 0 if not (result["index"]["inconsistent_after_rerun"] or result["resolve"]["inconsistent_after_rerun"]) else 1


if __name__ == "__main__":
    sys.exit(main())
