"""Lineage recovery on the zoo: families, directed edges, relation types, MoTHer baseline.

Usage::

    python -m mothertree.bench.bench_lineage --preset test
    python -m mothertree.bench.bench_lineage --preset mother --mother-baseline

Indexes the zoo into a fresh SQLite registry with **no timestamps**, runs
``resolve`` and scores the stored edges against the zoo's ground truth.
"""

from __future__ import annotations

import argparse
import math
import platform
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .zoo import Zoo, build_zoo, default_zoo_dir


@dataclass(frozen=True)
class LineageScore:
    true_edges: int
    directed_correct: int
    undirected_correct: int
    relation_correct: int
    cross_family_edges: int
    found_edges: int
    merge_parents_found: int
    merge_parents_true: int
    wrong: tuple[str, ...]

    @property
    def directed_accuracy(self) -> float:
        return self.directed_correct / self.true_edges

    @property
    def relation_accuracy(self) -> float:
        return self.relation_correct / self.true_edges


def score(zoo: Zoo, edges: list[dict[str, Any]]) -> LineageScore:
    """Compare found edges (dicts with parent, child, relation) with the zoo's truth."""
    fam = {m.name: m.family for m in zoo.models}
    truth = {(p, c): r for p, c, r in zoo.edges()}
    found = {(e["parent"], e["child"]): e["relation"] for e in edges}
    directed = sum(k in found for k in truth)
    undirected = sum(k in found or k[::-1] in found for k in truth)
    relation = sum(found.get(k, found.get(k[::-1])) == r for k, r in truth.items())
    cross = sum(fam.get(p) != fam.get(c) for p, c in found)
    merges = [(p, m.name) for m in zoo.models if m.relation == "merge" for p in m.parents]
    wrong = tuple(
        f"{p}->{c} ({r}): " + (f"found as {found[(p, c)]}" if (p, c) in found else "reversed" if (c, p) in found else "missing")
        for (p, c), r in truth.items() if (p, c) not in found or found[(p, c)] != r
    ) + tuple(f"extra {p}->{c} ({r})" for (p, c), r in found.items() if (p, c) not in truth and (c, p) not in truth)
    return LineageScore(
        len(truth), directed, undirected, relation, cross, len(found),
        sum(k in found for k in merges), len(merges), wrong,
    )


def mother_baseline(zoo: Zoo, lam: float = 0.3, metric: str = "maxabs") -> list[dict[str, Any]]:
    """A plain MoTHer re-implementation: attention-matrix distance, kurtosis direction, arborescence.

    ``metric="maxabs"`` is MoTHer's full-fine-tuning distance (max absolute
    difference after min-max scaling, max over layers); ``"l2"`` swaps in the
    Frobenius distance so the baseline is not judged on its metric alone.
    Trees are separated the MoTHer way, by Ward clustering with the true number of trees given.
    """
    import networkx as nx
    import numpy as np
    import torch
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.stats import kurtosis

    from ..indexer.weights import load_weight_map

    names = [m.name for m in zoo.models]
    maps = {n: load_weight_map(zoo.get(n).path) for n in names}
    keys = sorted({k for w in maps.values() for k in w if k[0] in ("attn.q", "attn.k", "attn.v", "attn.o")
                   and w[k].shape[0] == w[k].shape[1]}, key=str)
    keys = [k for k in keys if all(k in w and w[k].shape == maps[names[0]][k].shape for w in maps.values())]
    stack = {k: torch.stack([maps[n][k] for n in names]) for k in keys}
    lo = {k: s.amin() for k, s in stack.items()}
    hi = {k: s.amax() for k, s in stack.items()}
    n = len(names)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            if metric == "maxabs":
                v = max(float(((stack[k][i] - stack[k][j]).abs() / (hi[k] - lo[k])).max()) for k in keys)
            else:
                v = sum(float((stack[k][i] - stack[k][j]).pow(2).sum()) for k in keys) ** 0.5
            d[i, j] = d[j, i] = v
    kurt = [sum(float(kurtosis(maps[nm][k].reshape(-1).numpy())) for k in keys if k[0] == "attn.o") for nm in names]
    n_trees = len(set(m.family for m in zoo.models))
    cond = d[np.triu_indices(n, 1)]
    labels = fcluster(linkage(cond, "ward"), n_trees, "maxclust")
    out = []
    for lab in set(labels):
        idx = [i for i in range(n) if labels[i] == lab]
        if len(idx) < 2:
            continue
        sub = d[np.ix_(idx, idx)]
        mean = sub[np.triu_indices(len(idx), 1)].mean()
        g = nx.DiGraph()
        for a in idx:
            for b in idx:
                if a != b:
                    g.add_edge(a, b, weight=d[a, b] + lam * mean * (kurt[b] > kurt[a]))
        arb = nx.minimum_spanning_arborescence(g)
        out += [{"parent": names[a], "child": names[b], "relation": "finetune"} for a, b in arb.edges()]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="test")
    ap.add_argument("--mother-baseline", action="store_true")
    ap.add_argument("--timestamps", action="store_true", help="give the registry the zoo's creation times")
    args = ap.parse_args()
    from ..registry import Registry

    t0 = time.perf_counter()
    zoo = build_zoo(default_zoo_dir(args.preset), preset=args.preset)
    t_zoo = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp, Registry(str(Path(tmp) / "bench.db")) as reg:
        t0 = time.perf_counter()
        for m in zoo.models:
            created = datetime.fromisoformat(m.created_at.replace("Z", "+00:00")) if args.timestamps else None
            reg.index_one(m.path, name=m.name, created_at=created)
        t_index = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = reg.resolve()
        t_resolve = time.perf_counter() - t0
        edges = [e.to_dict() for e in reg.tree().edges]
    s = score(zoo, edges)
    print(f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}; date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"Command: python -m mothertree.bench.bench_lineage --preset {args.preset}"
          + (" --timestamps" if args.timestamps else "") + (" --mother-baseline" if args.mother_baseline else ""))
    print(f"{len(zoo.models)} models; zoo {t_zoo:.1f}s, index {t_index:.1f}s, resolve {t_resolve:.1f}s "
          f"({report.pairs_tested} pairs tested)")
    print()
    print("| method | true edges | directed acc. | undirected | relation acc. | cross-family edges | merge parents |")
    print("|---|---|---|---|---|---|---|")
    print(f"| mothertree | {s.true_edges} | {s.directed_accuracy:.3f} | {s.undirected_correct / s.true_edges:.3f} | "
          f"{s.relation_accuracy:.3f} | {s.cross_family_edges} | {s.merge_parents_found}/{s.merge_parents_true} |")
    if args.mother_baseline:
        for metric in ("maxabs", "l2"):
            b = score(zoo, mother_baseline(zoo, metric=metric))
            print(f"| MoTHer (re-impl., {metric}) | {b.true_edges} | {b.directed_accuracy:.3f} | "
                  f"{b.undirected_correct / b.true_edges:.3f} | n/a | {b.cross_family_edges} | "
                  f"{b.merge_parents_found}/{b.merge_parents_true} |")
    print()
    for w in s.wrong:
        print(f"- {w}")


if __name__ == "__main__":
    main()
