"""Resolve a registry of many small models through the CLI: wall time, peak memory, edges recovered.

Generates ``--families`` independent Llama-shaped roots (seeded random
initialisations, hidden ``--hidden``, ``--blocks`` blocks) and derives
``--per-family - 1`` models from each: fine-tunes as chains and siblings (the
parent plus seeded noise on every matrix, a fresh draw per child), a bf16
cast (a conversion) and a LoRA-style low-rank update. Each model is a Hugging
Face folder (``config.json`` + ``model.safetensors``). Then, each as its own
``mothertree`` process on a fresh SQLite registry, with peak ``RssAnon``:

1. ``index FOLDER`` (the folder of model folders);
2. ``resolve``;

and the stored edges are scored against the generated truth (undirected:
no timestamps are given, the roots are random initialisations that differ
only by noise, so direction evidence is weak by design; what this measures is
the cost of a registry of 100 models and that families never mix).

Run: ``python -m mothertree.bench.bench_resolve --families 20 --per-family 5 --dir /tmp/mt-resolve``.
Nothing here runs in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .bench_7b import measure

__all__ = ["generate", "main"]


def _config(hidden: int, blocks: int, vocab: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": 2 * hidden + hidden // 2, "num_hidden_layers": blocks, "num_attention_heads": 4,
        "num_key_value_heads": 4, "vocab_size": vocab, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
        "hidden_act": "silu", "tie_word_embeddings": False, "dtype": "float32",
    }


def _root(cfg: dict, seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    h, m, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    out = {"model.embed_tokens.weight": torch.randn(v, h, generator=g) * 0.02,
           "model.norm.weight": torch.ones(h), "lm_head.weight": torch.randn(v, h, generator=g) * 0.02}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for name, shape in [("self_attn.q_proj", (h, h)), ("self_attn.k_proj", (h, h)), ("self_attn.v_proj", (h, h)),
                            ("self_attn.o_proj", (h, h)), ("mlp.gate_proj", (m, h)), ("mlp.up_proj", (m, h)),
                            ("mlp.down_proj", (h, m))]:
            out[p + name + ".weight"] = torch.randn(shape, generator=g) / shape[1] ** 0.5
        out[p + "input_layernorm.weight"] = torch.ones(h)
        out[p + "post_attention_layernorm.weight"] = torch.ones(h)
    return out


def _derive(parent: dict, how: str, seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in parent.items():
        if t.ndim != 2:
            out[name] = t.clone()
        elif how == "finetune":
            out[name] = t + 0.05 * t.std() * torch.randn(t.shape, generator=g)
        elif how == "cast":
            out[name] = t.bfloat16()
        elif how == "lora" and ("q_proj" in name or "v_proj" in name or "up_proj" in name):
            a = torch.randn(t.shape[0], 4, generator=g) * 0.02
            b = torch.randn(4, t.shape[1], generator=g) * 0.02
            out[name] = t + a @ b
        else:
            out[name] = t.clone()
    return out


#: Derived models of a family, in order: (name suffix, parent suffix, how).
_PLAN = [("ft", "", "finetune"), ("ft-ft", "ft", "finetune"), ("ft2", "", "finetune"), ("bf16", "ft", "cast"),
         ("lora", "", "lora"), ("ft2-ft", "ft2", "finetune"), ("ft3", "", "finetune"), ("ft-ft-ft", "ft-ft", "finetune"),
         ("lora2", "ft2", "lora")]


def generate(root: Path, families: int, per_family: int, hidden: int, blocks: int, vocab: int) -> list[tuple[str, str]]:
    """Write the models under ``root``; return the true ``(parent, child)`` edges."""
    from safetensors.torch import save_file

    if per_family - 1 > len(_PLAN):
        raise SystemExit(f"--per-family: at most {len(_PLAN) + 1}")
    cfg = _config(hidden, blocks, vocab)
    edges = []
    for f in range(families):
        weights = {"": _root(cfg, 1000 + f)}
        for k, (suffix, parent, how) in enumerate([("", None, None)] + _PLAN[: per_family - 1]):
            if parent is not None:
                weights[suffix] = _derive(weights[parent], how, 10_000 * f + k)
                edges.append((f"fam{f:02d}{'-' + parent if parent else ''}", f"fam{f:02d}-{suffix}"))
            name = f"fam{f:02d}{'-' + suffix if suffix else ''}"
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.json").write_text(json.dumps(cfg))
            save_file({n: t.contiguous() for n, t in weights[suffix].items()}, str(folder / "model.safetensors"))
    return edges


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", type=int, default=20)
    ap.add_argument("--per-family", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mt-resolve"))
    ap.add_argument("--out", type=Path, default=None, help="write the JSON results here")
    args = ap.parse_args(argv)
    if args.dir.exists():
        shutil.rmtree(args.dir)
    models = args.dir / "models"
    t0 = time.perf_counter()
    truth = generate(models, args.families, args.per_family, args.hidden, args.blocks, args.vocab)
    gen_s = time.perf_counter() - t0
    exe = str(Path(sys.executable).with_name("mothertree"))
    env = dict(os.environ, MOTHERTREE_HOME=str(args.dir / "home"), MOTHERTREE_DB=f"sqlite:///{args.dir / 'r.db'}")
    results = {"models": args.families * args.per_family, "generate_s": gen_s}
    for key, cmd in [("index", [exe, "index", str(models), "--json"]), ("resolve", [exe, "resolve", "--json"]),
                     ("tree", [exe, "tree", "--json"])]:
        r = measure(cmd, env)
        results[key] = {k: r[k] for k in ("rc", "wall_s", "peak_rss_anon_bytes", "stderr_tail")}
        print(f"{key}: rc={r['rc']} {r['wall_s']:.1f} s, peak RssAnon {r['peak_rss_anon_bytes'] / 2**30:.2f} GiB",
              flush=True)
        if r["rc"]:
            print(r["stderr_tail"], file=sys.stderr)
        if key == "tree" and not r["rc"]:
            found = {(e["parent"], e["child"]) for e in json.loads(r["stdout"]).get("edges", [])}
            fam = lambda n: n[:5]  # noqa: E731 - the family prefix famNN
            results["score"] = {
                "true_edges": len(truth),
                "found_edges": len(found),
                "undirected_correct": sum((p, c) in found or (c, p) in found for p, c in truth),
                "directed_correct": sum((p, c) in found for p, c in truth),
                "cross_family_edges": sum(fam(p) != fam(c) for p, c in found),
            }
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs"
    results["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
