"""Time the exact independence test on Llama-7B-shaped MLP blocks, and check its verdicts.

Synthetic pairs built directly in torch (no transformers): each block is an
``mlp.up`` matrix of shape ``[intermediate, hidden]`` (Llama-7B: 11008 x 4096).
The dependent pair is the first model plus small Gaussian noise (a
fine-tune); the independent pair draws the second model from another seed.
Prints a markdown table for ``bench/RESULTS.md``.

Run: ``python -m mothertree.bench.bench_independence [--blocks 2] [--max-units 256 1024]``
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from datetime import datetime, timezone

import torch

from ..lineage.independence import exact_test


def _model(seed: int, blocks: int, hidden: int, intermediate: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {("mlp.up", i): torch.randn(intermediate, hidden, generator=g) / math.sqrt(hidden) for i in range(blocks)}


def _noisy(w: dict, scale: float, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * v.std() * torch.randn(v.shape, generator=g) for k, v in w.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=11008)
    ap.add_argument("--noise", type=float, default=0.1, help="fine-tune noise, relative to each tensor's std")
    ap.add_argument("--max-units", type=int, nargs="+", default=[256, 1024, 4096],
                    help="units matched per block; 0 = all")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    a = _model(0, args.blocks, args.hidden, args.intermediate)
    pairs = {"dependent (noise %.2g)" % args.noise: _noisy(a, args.noise, 1),
             "independent": _model(2, args.blocks, args.hidden, args.intermediate)}
    build_s = time.perf_counter() - t0
    rows = []
    for max_units in args.max_units:
        for name, b in pairs.items():
            t = time.perf_counter()
            r = exact_test(a, b, max_units=max_units or None, rng=0)
            rows.append((name, max_units or args.intermediate, time.perf_counter() - t, r.p_value_log10, r.dependent))
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), no GPU used")
    print(f"Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    print(f"Command: python -m mothertree.bench.bench_independence --blocks {args.blocks} --hidden {args.hidden} "
          f"--intermediate {args.intermediate} --noise {args.noise} --max-units {' '.join(map(str, args.max_units))}")
    print(f"Shapes: {args.blocks} blocks of mlp.up [{args.intermediate}, {args.hidden}]; "
          f"generating the matrices took {build_s:.1f} s\n")
    print("| pair | units matched per block | seconds (whole test) | log10 p | dependent at 0.01 |")
    print("|---|---:|---:|---:|---|")
    for name, units, secs, lp, dep in rows:
        print(f"| {name} | {units} | {secs:.2f} | {lp:.1f} | {dep} |")


if __name__ == "__main__":
    main()
