"""A resolve's pair tests in one process vs as Ray tasks, on the demo family.

Usage::

    python -m mothertree.bench.bench_ray_pairs [--num-cpus 2]

Indexes the demo's nine models (from the test zoo cache, which holds them) into two fresh SQLite
registries, resolves one in this process and the other with ``RayPairRunner`` on a local Ray, and
prints the wall times (Ray start-up apart) and whether the stored pair tests are the same.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from ..registry import RayPairRunner, Registry
from .demo import demo_models_of
from .zoo import build_zoo, default_zoo_dir


def _pair_rows(reg: Registry) -> dict:
    rows = reg.query(
        "SELECT a.name AS a, b.name AS b, t.method, t.p_value_log10, t.dependent FROM pair_tests t "
        "JOIN models a ON a.id = t.a_id JOIN models b ON b.id = t.b_id"
    ).rows
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    args = ap.parse_args(argv)
    import ray

    zoo = demo_models_of(build_zoo(default_zoo_dir("test"), preset="test"))
    out: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
                 "models": len(zoo.models), "num_cpus": args.num_cpus}
    with tempfile.TemporaryDirectory(prefix="mt-bench-ray-") as tmp:
        regs = {}
        for label in ("local", "ray"):
            reg = regs[label] = Registry(str(Path(tmp) / f"{label}.db"))
            for m in zoo.models:
                reg.index_one(m.path, name=m.name)
        t0 = time.perf_counter()
        local = regs["local"].resolve()
        out["local_resolve_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=128 * 2**20)
        out["ray_start_s"] = round(time.perf_counter() - t0, 1)
        try:
            t0 = time.perf_counter()
            remote = regs["ray"].resolve(pair_runner=RayPairRunner(regs["ray"].home))
            out["ray_resolve_s"] = round(time.perf_counter() - t0, 1)
        finally:
            ray.shutdown()
        out["pairs_tested"] = [local.pairs_tested, remote.pairs_tested]
        out["same_pair_tests"] = _pair_rows(regs["local"]) == _pair_rows(regs["ray"])
        for reg in regs.values():
            reg.close()
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
