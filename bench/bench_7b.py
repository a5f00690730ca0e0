"""Benchmark a Llama-2-7B-shaped pair end to end through the CLI, with peak anonymous memory.

Generates a base model and a child (base + small noise on every matrix) in the
Hugging Face sharded layout (``config.json``, ``model.safetensors.index.json``,
``model-0000k-of-0000n.safetensors``; bf16; hidden 4096, MLP 11008, vocabulary
32000, 32 heads), then times, each as its own ``mothertree`` process on a
fresh SQLite registry, with the process's peak ``RssAnon`` (anonymous memory:
mapped file pages are page cache and do not count) and peak ``VmRSS`` polled
from ``/proc/<pid>/status``:

1. ``index BASE``;
2. ``ancestry CHILD --add`` (indexes the child and places it as a new upload);
3. ``test BASE CHILD`` (blocks read, log10 p);
4. ``resolve --full`` (re-tests and re-places the pair);

plus a cold read of the child's files (page cache dropped when permitted,
else stated as warm) and the reference core on one block (float64 cosine and a
full assignment of the 11008 units of ``mlp.up``, as the paper's reference
implementation does per block). ``--blocks 4`` keeps the 7B width with 4
blocks, for per-block figures and a projection to 32 blocks and to 70B.

Run: ``python -m mothertree.bench.bench_7b --blocks 4 --dir /work/bench7b``.
Needs ~0.55 GB of disk per block and model (27 GB for the full pair); nothing
here runs in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["generate_pair", "measure", "main"]

HIDDEN, MLP, VOCAB, HEADS = 4096, 11008, 32000, 32


def _config(blocks: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": MLP, "num_hidden_layers": blocks, "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS, "vocab_size": VOCAB, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False, "dtype": "bfloat16",
        "bos_token_id": 1, "eos_token_id": 2,
    }


def _tensors(blocks: int):
    """``(name, shape)`` of every tensor, in a Llama checkpoint's order, grouped by shard."""
    shards = [[("model.embed_tokens.weight", (VOCAB, HIDDEN))]]
    for i in range(blocks):
        p = f"model.layers.{i}."
        shards.append([
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.k_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.v_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
            (p + "mlp.gate_proj.weight", (MLP, HIDDEN)),
            (p + "mlp.up_proj.weight", (MLP, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, MLP)),
        ])
    shards.append([("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))])
    return shards


def generate_pair(root: Path, blocks: int, noise: float = 0.05) -> tuple[Path, Path]:
    """Write ``root/base`` and ``root/child`` (child = base + ``noise`` x std Gaussian noise per matrix).

    One shard per block (plus the embedding and the head), written tensor by
    tensor group so at most one block is in memory.
    """
    import torch
    from safetensors.torch import save_file

    base, child = root / "base", root / "child"
    shards = _tensors(blocks)
    n = len(shards)
    for d in (base, child):
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(_config(blocks), indent=1))
    g = torch.Generator().manual_seed(0)
    gn = torch.Generator().manual_seed(1)
    weight_map = {}
    for k, group in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{n:05d}.safetensors"
        if (base / fname).is_file() and (child / fname).is_file():
            weight_map.update({name: fname for name, _ in group})
            continue
        tb, tc = {}, {}
        for name, shape in group:
            if len(shape) == 1:
                t = torch.ones(shape) + 0.01 * torch.randn(shape, generator=g)
                tb[name], tc[name] = t.bfloat16(), t.bfloat16()
                continue
            t = torch.randn(shape, generator=g).mul_(0.02)
            tb[name] = t.bfloat16()
            t.add_(torch.randn(shape, generator=gn), alpha=0.02 * noise)
            tc[name] = t.bfloat16()
            del t
            weight_map[name] = fname
        for name, _ in group:
            weight_map[name] = fname
        save_file(tb, str(base / (fname + ".tmp")), metadata={"format": "pt"})
        save_file(tc, str(child / (fname + ".tmp")), metadata={"format": "pt"})
        os.replace(base / (fname + ".tmp"), base / fname)
        os.replace(child / (fname + ".tmp"), child / fname)
        del tb, tc
    index = {"metadata": {}, "weight_map": weight_map}
    for d in (base, child):
        (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return base, child


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


def measure(cmd: list[str], env: dict[str, str]) -> dict:
    """Run ``cmd``; wall time, exit code, stdout, and peak RssAnon / VmRSS polled every 50 ms."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"VmRSS": 0, "RssAnon": 0}
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            for k, v in _status(proc.pid).items():
                if k in peak:
                    peak[k] = max(peak[k], v)
            time.sleep(0.05)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    return {
        "cmd": " ".join(cmd[1:]), "rc": proc.returncode, "wall_s": time.perf_counter() - t0,
        "peak_rss_anon_bytes": peak["RssAnon"], "peak_vm_rss_bytes": peak["VmRSS"],
        "stdout": out, "stderr_tail": err[-2000:],
    }


def cold_read(folder: Path) -> dict:
    """Seconds to read every file of ``folder`` after dropping the page cache (when permitted)."""
    dropped = False
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        dropped = True
    except OSError:
        pass
    files = sorted(folder.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    t0 = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.read(64 << 20):
                pass
    s = time.perf_counter() - t0
    return {"bytes": size, "seconds": s, "mb_per_s": size / s / 1e6, "cache_dropped": dropped}


def reference_core(folder: Path) -> dict:
    """The reference implementation's per-block core on block 0: float64 cosine + full assignment."""
    import numpy as np
    import torch
    from safetensors import safe_open
    from scipy.optimize import linear_sum_assignment

    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    name = "model.layers.0.mlp.up_proj.weight"
    with safe_open(str(folder / index[name]), "pt") as fh:
        a = fh.get_tensor(name).double()
    b = a + 0.05 * a.std() * torch.randn(a.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t0 = time.perf_counter()
    an = a / a.norm(dim=1, keepdim=True)
    bn = b / b.norm(dim=1, keepdim=True)
    c = (an @ bn.T).numpy()
    t1 = time.perf_counter()
    linear_sum_assignment(c, maximize=True)
    t2 = time.perf_counter()
    del a, b, an, bn, c
    return {"cosine_s": t1 - t0, "assignment_s": t2 - t1, "total_s": t2 - t0, "units": MLP, "np": np.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=32)
    ap.add_argument("--dir", type=Path, default=Path("/work/bench7b"))
    ap.add_argument("--noise", type=float, default=0.05, help="child noise, as a fraction of each matrix's std")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference core timing")
    ap.add_argument("--clean", action="store_true", help="delete the generated models at the end")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON results here")
    args = ap.parse_args(argv)
    root = args.dir / f"llama7b-{args.blocks}blocks"
    t0 = time.perf_counter()
    base, child = generate_pair(root, args.blocks, args.noise)
    gen_s = time.perf_counter() - t0
    exe = str(Path(sys.executable).with_name("mothertree"))
    db = root / "registry.db"
    for p in (db, root / "registry.db.vectors", root / "home", root / "test.db", root / "test.db.vectors",
              root / "home-test"):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    env = dict(os.environ, MOTHERTREE_HOME=str(root / "home"), MOTHERTREE_DB=f"sqlite:///{db}")
    results = {"blocks": args.blocks, "generate_s": gen_s,
               "child_bytes": sum(f.stat().st_size for f in child.glob("*.safetensors"))}
    results["cold_read_child"] = cold_read(child)
    steps = [
        ("index_base", [exe, "index", str(base), "--name", "base", "--json"]),
        ("ancestry_child", [exe, "ancestry", str(child), "--add", "--json"]),
        ("test", [exe, "test", str(base), str(child), "--json"]),
        ("resolve_full", [exe, "resolve", "--full", "--json"]),
    ]
    fresh = dict(env, MOTHERTREE_HOME=str(root / "home-test"), MOTHERTREE_DB=f"sqlite:///{root / 'test.db'}")
    for key, cmd in steps:
        r = measure(cmd, fresh if key == "test" else env)  # test: by paths, nothing stored to reuse
        results[key] = r
        print(f"{key}: rc={r['rc']} {r['wall_s']:.1f} s, peak RssAnon {r['peak_rss_anon_bytes'] / 2**30:.2f} GiB, "
              f"peak VmRSS {r['peak_vm_rss_bytes'] / 2**30:.2f} GiB", flush=True)
        if r["rc"] != 0:
            print(r["stderr_tail"], file=sys.stderr)
    try:
        t = json.loads(results["test"]["stdout"])
        results["test_summary"] = {k: t.get(k) for k in ("method", "p_value_log10", "dependent", "blocks_read", "notes")}
        anc = json.loads(results["ancestry_child"]["stdout"])
        results["ancestry_summary"] = {"edges": [(e["parent"], e["child"], e["relation"], e["p_value_log10"])
                                                 for e in anc.get("edges", [])], "notes": anc.get("notes")}
    except (ValueError, KeyError) as exc:
        results["summary_error"] = str(exc)
    if not args.no_reference:
        results["reference_core_block0"] = reference_core(base)
    results["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for key, _ in steps:
        results[key].pop("stdout", None)
    print(json.dumps(results, indent=1, default=str))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))
    if args.clean:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
