"""Benchmark fingerprints: retrieval quality on the zoo, throughput, query latency.

Three measurements, printed as one markdown section for ``bench/RESULTS.md``:

1. **Retrieval on the zoo.** Every zoo model is indexed; for each one,
   recall@5 of its true relatives (same ``family``: fine-tunes, LoRA, int8,
   pruned, permuted, merged, re-serialised copies) among
   :meth:`Registry.candidates`, plus the lowest relative score and the
   highest score of any other family (roots trained on the same corpus from
   other seeds included) against :data:`THRESHOLD`.
2. **Throughput.** Fingerprinting (reading + sketching, no statistics) in
   MB/s of stored weights beside a raw read (every tensor materialised) of
   the same files in the same run, on the zoo and on one larger synthetic
   bf16 Llama-shaped checkpoint.
3. **Query latency** of the FAISS store with 10k and 100k synthetic model
   vectors (random unit vectors written to SQL, indexes built from SQL).

Run: ``python -m mothertree.bench.bench_fingerprints [--device cpu] [--sizes 10000 100000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["retrieval", "throughput", "latency", "main"]


def retrieval(zoo_dir: Path, *, device: str) -> dict:
    """Recall@5 per zoo model and the score gap between relatives and strangers."""
    from ..registry import Registry
    from ..registry._candidates import THRESHOLD
    from .zoo import load_zoo

    zoo = load_zoo(zoo_dir)
    family = {m.name: m.family for m in zoo.models}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        reg = Registry(f"sqlite:///{tmp}/bench.db")
        t0 = time.perf_counter()
        for m in zoo.models:
            reg.index_one(m.path, name=m.name, device=device)
        index_s = time.perf_counter() - t0
        for m in zoo.models:
            result = reg.candidates(m.name, k=len(zoo.models))
            relatives = {n for n, f in family.items() if f == family[m.name] and n != m.name}
            top5 = [c.name for c in result.candidates[:5]]
            rel = [c.score for c in result.candidates if c.name in relatives]
            other = [c.score for c in result.candidates if c.name not in relatives]
            rows.append({
                "model": m.name,
                "relation": m.relation,
                "relatives": len(relatives),
                "recall_at_5": (len(relatives & set(top5)) / min(5, len(relatives))) if relatives else None,
                "min_relative_score": min(rel) if rel else None,
                "max_other_score": max(other) if other else None,
            })
        reg.close()
    rel_scores = [r["min_relative_score"] for r in rows if r["min_relative_score"] is not None]
    other_scores = [r["max_other_score"] for r in rows if r["max_other_score"] is not None]
    recalls = [r["recall_at_5"] for r in rows if r["recall_at_5"] is not None]
    return {
        "models": len(rows),
        "index_seconds": index_s,
        "mean_recall_at_5": float(np.mean(recalls)),
        "min_recall_at_5": float(min(recalls)),
        "min_relative_score": min(rel_scores),
        "max_other_score": max(other_scores),
        "threshold": THRESHOLD,
        "others_above_threshold": sum(s >= THRESHOLD for s in other_scores),
        "relatives_below_threshold": sum(s < THRESHOLD for s in rel_scores),
        "per_model": rows,
    }


def _raw_read(path: Path) -> float:
    from ..indexer import iter_tensors, open_source

    src = open_source(path)
    t0 = time.perf_counter()
    for _, t in iter_tensors(src):
        t.clone()  # every byte copied into memory once; nothing else is done
    return time.perf_counter() - t0


def _fingerprint_only(path: Path, device: str) -> float:
    """Read and sketch every identity tensor, as ``scan_model``'s visitor sees it, without statistics."""
    from ..indexer import iter_tensors, open_source, read_header
    from ..indexer.fingerprints import Fingerprinter
    from ..indexer.roles import assign_role, canonical_parts, detect_architecture

    src = open_source(path)
    t0 = time.perf_counter()
    infos = read_header(src)
    architecture = detect_architecture(src.config, infos)
    fp = Fingerprinter(device=device, config=src.config)
    for name, t in iter_tensors(src, infos):
        a = assign_role(name, architecture)
        if a.learned and a.role != "other":
            for role, part in canonical_parts(a, t, architecture=architecture, config=src.config).items():
                fp.visit(role, a.block, a.part, part)
    fp.finish()
    return time.perf_counter() - t0


def _synthetic_llama(folder: Path, *, hidden: int, intermediate: int, layers: int, vocab: int) -> Path:
    """A random bf16 Llama-shaped checkpoint written directly (no model object)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    state = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g)}
    for b in range(layers):
        p = f"model.layers.{b}."
        for n in "qkvo":
            state[f"{p}self_attn.{n}_proj.weight"] = torch.randn(hidden, hidden, generator=g)
        state[f"{p}mlp.gate_proj.weight"] = torch.randn(intermediate, hidden, generator=g)
        state[f"{p}mlp.up_proj.weight"] = torch.randn(intermediate, hidden, generator=g)
        state[f"{p}mlp.down_proj.weight"] = torch.randn(hidden, intermediate, generator=g)
        state[f"{p}input_layernorm.weight"] = torch.ones(hidden)
        state[f"{p}post_attention_layernorm.weight"] = torch.ones(hidden)
    state["model.norm.weight"] = torch.ones(hidden)
    state["lm_head.weight"] = torch.randn(vocab, hidden, generator=g)
    save_file({k: v.bfloat16() for k, v in state.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": hidden, "intermediate_size": intermediate,
        "num_hidden_layers": layers, "num_attention_heads": hidden // 64, "num_key_value_heads": hidden // 64,
        "vocab_size": vocab,
    }))
    return folder


def _drop_page_cache() -> None:
    """Evict file pages so the next read comes from the disk (Linux, needs root)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError as exc:
        raise SystemExit(f"--cold needs root on Linux to write /proc/sys/vm/drop_caches ({exc})") from None


def throughput(paths: Sequence[Path], *, device: str, repeats: int = 3, cold: bool = False) -> dict:
    """MB/s of stored weights: raw read versus read + fingerprint (best of ``repeats``).

    Warm: files already in the page cache, so "raw read" is a memory copy.
    Cold: the page cache is dropped before every timed pass, so both sides
    include reading the disk, as a first indexing run does.
    """
    from ..indexer import open_source

    size = sum(open_source(p).size_bytes for p in paths)

    def timed(fn) -> float:
        best = float("inf")
        for _ in range(repeats):
            if cold:
                _drop_page_cache()
            best = min(best, sum(fn(p) for p in paths))
        return best

    raw = timed(_raw_read)
    fp = timed(lambda p: _fingerprint_only(p, device))
    return {
        "models": len(paths),
        "mb": size / 1e6,
        "raw_read_mb_s": size / 1e6 / raw,
        "fingerprint_mb_s": size / 1e6 / fp,
        "ratio": raw / fp,
    }


def latency(
    n: int, *, dim: int, queries: int = 200, k: int = 10, seed: int = 0, flat_limit: int | None = None
) -> dict:
    """Median and p95 query time of the model-level store holding ``n`` random vectors.

    ``flat_limit`` overrides the store's exact-search limit (to time IVF at sizes below it).
    """
    from ..registry._vectors import FLAT_LIMIT

    from ..registry import Registry
    from ..registry._schema import Fingerprint, Model

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        reg = Registry(f"sqlite:///{tmp}/latency.db")
        now = datetime.now(timezone.utc)
        with reg.engine.begin() as conn:
            conn.execute(Model.__table__.insert(), [
                {"id": i + 1, "name": f"m{i}", "source": "-", "file_format": "safetensors", "architecture": "x",
                 "num_parameters": 0, "content_digest": "0", "indexed_at": now, "revision": 1,
                 "status": "indexed"}
                for i in range(n)
            ])
            for start in range(0, n, 10_000):
                vecs = rng.standard_normal((min(10_000, n - start), dim)).astype(np.float32)
                vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                conn.execute(Fingerprint.__table__.insert(), [
                    {"model_id": start + i + 1, "kind": "aligned", "level": "model", "dim": dim,
                     "vector": v.tobytes()}
                    for i, v in enumerate(vecs)
                ])
        reg.vectors.flat_limit = flat_limit or FLAT_LIMIT
        t0 = time.perf_counter()
        (info,) = reg.vectors.rebuild()
        build_s = time.perf_counter() - t0
        reopened = Registry(reg.url)
        reopened.vectors.flat_limit = flat_limit or FLAT_LIMIT
        t0 = time.perf_counter()
        reopened.vectors.check()
        open_s = time.perf_counter() - t0
        q = rng.standard_normal((queries, dim)).astype(np.float32)
        times = []
        for row in q:
            t0 = time.perf_counter()
            reopened.vectors.search(("aligned", "model", dim), row[None, :], k)
            times.append(time.perf_counter() - t0)
        reopened.close()
        reg.close()
    return {
        "vectors": n,
        "index_type": info.index_type,
        "build_seconds": build_s,
        "open_check_seconds": open_s,
        "median_ms": 1000 * float(np.median(times)),
        "p95_ms": 1000 * float(np.percentile(times, 95)),
    }


def _markdown(ret: dict, thr: list[tuple[str, dict]], lat: list[dict], device: str) -> str:
    lines = [
        "## Fingerprints and candidates (`bench/bench_fingerprints.py`)",
        "",
        f"Device: {device}. Sketch dimension 1024 (32 x 32), two kinds (aligned, invariant).",
        "",
        f"**Retrieval on the test zoo** ({ret['models']} models, indexed in {ret['index_seconds']:.1f} s):",
        f"mean recall@5 of true relatives {ret['mean_recall_at_5']:.3f} (minimum {ret['min_recall_at_5']:.3f}); "
        f"lowest relative score {ret['min_relative_score']:.3f}; highest score of another family "
        f"{ret['max_other_score']:.3f}; threshold {ret['threshold']}: "
        f"{ret['others_above_threshold']} stranger(s) above it, "
        f"{ret['relatives_below_threshold']} relative(s) below it.",
        "",
        "| model | relation | relatives | recall@5 | min relative score | max other score |",
        "|---|---|---|---|---|---|",
    ]
    for r in ret["per_model"]:
        fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        lines.append(f"| {r['model']} | {r['relation']} | {r['relatives']} | {fmt(r['recall_at_5'])} | "
                     f"{fmt(r['min_relative_score'])} | {fmt(r['max_other_score'])} |")
    lines += ["", "**Throughput** (best of 3; warm = files in the page cache, cold = page cache dropped before each pass):", "",
              "| files | models | MB | raw read MB/s | fingerprint MB/s | fingerprint / raw |", "|---|---|---|---|---|---|"]
    for label, t in thr:
        lines.append(f"| {label} | {t['models']} | {t['mb']:.1f} | {t['raw_read_mb_s']:.0f} | "
                     f"{t['fingerprint_mb_s']:.0f} | {t['ratio']:.2f} |")
    lines += ["", "**Query latency** (model level, k = 10, 200 queries, one at a time):", "",
              "| vectors | index | build s | open check s | median ms | p95 ms |", "|---|---|---|---|---|---|"]
    for r in lat:
        lines.append(f"| {r['vectors']} | {r['index_type']} | {r['build_seconds']:.1f} | "
                     f"{r['open_check_seconds']:.2f} | {r['median_ms']:.1f} | {r['p95_ms']:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    from ..indexer.fingerprints import DIM, resolve_device
    from .zoo import build_zoo, default_zoo_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--json", action="store_true", help="print the raw numbers as JSON instead")
    ap.add_argument("--cold", action="store_true", help="also measure with the page cache dropped (Linux, root)")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    zoo = build_zoo(default_zoo_dir("test"), preset="test")
    ret = retrieval(zoo.root, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        big = _synthetic_llama(Path(tmp) / "big", hidden=1024, intermediate=2816, layers=4, vocab=32000)
        thr = [
            ("test zoo, warm", throughput([m.path for m in zoo.models], device=device)),
            ("synthetic bf16 Llama (d=1024, 4 blocks), warm", throughput([big], device=device)),
        ]
        if args.cold:
            thr += [
                ("test zoo, cold", throughput([m.path for m in zoo.models], device=device, cold=True)),
                ("synthetic bf16 Llama (d=1024, 4 blocks), cold", throughput([big], device=device, cold=True)),
            ]
    lat = [latency(n, dim=DIM) for n in args.sizes]
    lat += [latency(n, dim=DIM, flat_limit=n - 1) for n in args.sizes if n > 1000]
    if args.json:
        print(json.dumps({"retrieval": ret, "throughput": dict(thr), "latency": lat}, indent=2))
    else:
        print(_markdown(ret, thr, lat, device))


if __name__ == "__main__":
    main()
