"""Independence tests on the zoo: power on every dependent pair, calibration on independent ones.

Usage::

    python -m mothertree.bench.bench_zoo_tests [--calibration-roots 10]

- power: every pair of models in one zoo family (ancestor/descendant and
  siblings; permuted, pruned, LoRA, quantized, merged, re-initialised block)
  must give log10 p < -6;
- calibration: every pair of independent roots (same corpus, different seeds;
  Llama and GPT-2) plus every cross-family pair of the zoo: Kolmogorov-Smirnov
  test of p-value uniformity and the false-positive rate at alpha = 0.01;
- localization: the pruned child's block map against the zoo's truth.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from datetime import datetime, timezone

from .zoo import build_calibration_roots, build_zoo, default_zoo_dir


def _loader():
    from ..indexer.forward import load_forward_model, seeded_inputs
    from ..indexer.weights import load_weight_map
    from ..indexer.activations import collect_mlp_activations
    from ..lineage import block_activations

    cache = {}

    def load(path: str):
        if path not in cache:
            fm = load_forward_model(path)
            ids = seeded_inputs(fm.vocab_size, 8, 64, seed=0)
            cache[path] = (load_weight_map(path), block_activations(collect_mlp_activations(fm.model, fm.mlp_modules, ids)))
        return cache[path]

    return load


def _pair_runner(load):
    """``run(a, b) -> (IndependenceResult, seconds)``: one pair's test at alpha 0.01, timed without the loading."""
    from ..lineage import independence_test

    def run(a: str, b: str):
        wa, xa = load(a)
        wb, xb = load(b)
        t0 = time.perf_counter()
        r = independence_test(wa, wb, activations_a=xa, activations_b=xb, alpha=0.01, rng=0)
        return r, time.perf_counter() - t0

    return run


def _dependent_pairs(zoo, run) -> list[tuple]:
    """``(a, b, log10 p, method, seconds)`` for every pair of models in one zoo family: the power set."""
    dependent = []
    for members in zoo.families().values():
        for a, b in itertools.combinations(members, 2):
            r, dt = run(zoo.get(a).path, zoo.get(b).path)
            dependent.append((a, b, r.p_value_log10, r.method, dt))
    return dependent


def _independent_pairs(zoo, calib, run) -> list[tuple]:
    """``(a, b, log10 p, method, seconds)`` for every pair of independent roots: the calibration set.

    Only pairs of one architecture are tested (the zoo's roots of different
    families, and the calibration roots), since the tests compare like with like.
    """
    independent = []
    by_arch = {}
    for m in zoo.models:
        by_arch.setdefault(m.arch, []).append(m)
    for ms in by_arch.values():
        for x, y in itertools.combinations(ms, 2):
            if x.family != y.family and x.relation == "root" and y.relation == "root":
                r, dt = run(x.path, y.path)
                independent.append((x.name, y.name, r.p_value_log10, r.method, dt))
    for cz in calib:
        for x, y in itertools.combinations(cz.models, 2):
            r, dt = run(x.path, y.path)
            independent.append((x.name, y.name, r.p_value_log10, r.method, dt))
    return independent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibration-roots", type=int, default=10, help="independent roots per architecture")
    args = ap.parse_args()
    zoo = build_zoo(default_zoo_dir("test"), preset="test")
    calib = [
        build_calibration_roots(default_zoo_dir(f"calibration-{arch}"), n=args.calibration_roots, arch=arch)
        for arch in ("llama", "gpt2")
    ]
    run = _pair_runner(_loader())
    dependent = _dependent_pairs(zoo, run)
    independent = _independent_pairs(zoo, calib, run)
    print(f"Machine: {platform.machine()}, 2-core CPU class; date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"Command: python -m mothertree.bench.bench_zoo_tests --calibration-roots {args.calibration_roots}")
    print()
    _print_power_and_calibration(dependent, independent, n_families=len(zoo.families()))
    for m in [m for m in zoo.models if m.relation == "pruned" and m.block_map]:
        r, _ = run(zoo.get(m.parents[0]).path, m.path)
        truth = tuple((pb, cb) for cb, pb in m.block_map)
        print(f"Localization {m.parents[0]} -> {m.name}: block map {list(r.block_map)} "
              f"(truth {list(truth)}): {'exact' if tuple(map(tuple, r.block_map)) == truth else 'WRONG'}")
    print()
    print("| pair | log10 p | method |")
    print("|---|---|---|")
    for a, b, lp, meth, _ in sorted(dependent, key=lambda t: -t[2])[:8]:
        print(f"| {a} ~ {b} | {lp:.1f} | {meth} |")


def _print_power_and_calibration(dependent: list[tuple], independent: list[tuple], *, n_families: int) -> None:
    """The power line (dependent pairs below 10^-6) and the calibration line (KS test of uniform p, false positives)."""
    import numpy as np
    from scipy.stats import kstest

    worst = max(dependent, key=lambda t: t[2])
    print(f"Power: {len(dependent)} dependent pairs in {n_families} families; "
          f"{sum(t[2] < -6 for t in dependent)} with log10 p < -6; weakest {worst[0]} ~ {worst[1]}: "
          f"log10 p = {worst[2]:.1f} ({worst[3]}); median test time {np.median([t[4] for t in dependent]):.2f} s")
    p = np.array([10.0 ** t[2] for t in independent])
    ks = kstest(p, "uniform")
    print(f"Calibration: {len(independent)} independent pairs; KS statistic {ks.statistic:.3f}, "
          f"KS p = {ks.pvalue:.3f}; false positives at alpha 0.01: {int((p <= 0.01).sum())} "
          f"({(p <= 0.01).mean():.1%}); smallest p = {p.min():.3g}")


if __name__ == "__main__":
    main()
