"""Which FAISS index for a hub-sized registry? Synthetic vectors at the real sketch dimension.

Run: ``nice -n 10 python -m mothertree.bench.bench_faiss_scale [--sizes 100000,300000] [--full 1000000]``

The data imitates model-level fingerprints: unit vectors of ``DIM`` (1024, the
sketch dimension of :mod:`mothertree.indexer.fingerprints`) in families of 10
(a family centre plus noise: a member has cosine ~0.78 with its centre and
~0.6 with a sibling, strangers ~0, as relatives and strangers score on the
zoo). Vectors are generated chunk by chunk from seeds, so a million of them
never sit in memory at once; exact top-10 neighbours of the queries (new
uploads: fresh members of existing families) are computed by streaming the
same chunks. For every index and size the script reports build time (train +
add), memory (serialised size), recall@10 against exact search, single-query
latency, and the cost of placing one new upload (search, ``add_with_ids``,
and rewriting the whole index file, which is what :class:`VectorStore` does
after every commit).

Prints one JSON object per measurement on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

DIM = 1024
CHUNK = 10_000
FAMILY = 10
NOISE = 0.8


def _chunk(c: int, dim: int = DIM) -> np.ndarray:
    """Vectors ``c*CHUNK .. (c+1)*CHUNK``: families of ``FAMILY`` around seeded centres."""
    rng = np.random.default_rng(1_000_003 + c)
    centres = rng.standard_normal((CHUNK // FAMILY, dim), dtype=np.float32)
    v = np.repeat(centres, FAMILY, axis=0)
    v += NOISE * rng.standard_normal((CHUNK, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def _queries(n_vectors: int, n: int, dim: int = DIM) -> np.ndarray:
    """``n`` new uploads: fresh members of random existing families."""
    rng = np.random.default_rng(7)
    out = np.empty((n, dim), np.float32)
    for i, fam in enumerate(rng.choice(n_vectors // FAMILY, size=n, replace=False)):
        c, f = divmod(int(fam) * FAMILY, CHUNK)
        centre = np.random.default_rng(1_000_003 + c).standard_normal((CHUNK // FAMILY, dim), dtype=np.float32)[f // FAMILY]
        q = centre + NOISE * rng.standard_normal(dim, dtype=np.float32)
        out[i] = q / np.linalg.norm(q)
    return out


def _exact(n_vectors: int, q: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact top-``k`` ids by inner product, streamed over the chunks."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for c in range(n_vectors // CHUNK):
        s = q @ _chunk(c, q.shape[1]).T
        ids = np.arange(c * CHUNK, (c + 1) * CHUNK)
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, np.broadcast_to(ids, s.shape)], axis=1)
        top = np.argpartition(-all_s, k, axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, top, 1)
        best_i = np.take_along_axis(all_i, top, 1)
    return best_i


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _build(spec: str, n_vectors: int, train_n: int):
    import faiss

    t0 = time.perf_counter()
    index = faiss.index_factory(DIM, spec, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        chunks = n_vectors // CHUNK
        per = -(-train_n // chunks)  # every chunk contributes: the sample covers all families' regions
        sample = np.concatenate([_chunk(c)[np.linspace(0, CHUNK - 1, per).astype(int)] for c in range(chunks)])
        index.train(sample)
        del sample
    t_train = time.perf_counter() - t0
    for c in range(n_vectors // CHUNK):
        index.add_with_ids(_chunk(c), np.arange(c * CHUNK, (c + 1) * CHUNK, dtype=np.int64))
    return index, t_train, time.perf_counter() - t0


def measure(spec: str, n_vectors: int, *, nprobe: int | None, n_queries: int, train_n: int, truth=None, q=None) -> dict:
    import faiss

    if q is None:
        q = _queries(n_vectors, n_queries)
    if truth is None:
        truth = _exact(n_vectors, q)
    index, t_train, t_build = _build(spec, n_vectors, train_n)
    ivf = faiss.try_extract_index_ivf(index) if "IVF" in spec else None
    if ivf is not None and nprobe is not None:
        ivf.nprobe = nprobe
    _, found = index.search(q, 10)
    recall = _recall(found, truth)
    t0 = time.perf_counter()
    for row in q[:50]:
        index.search(row[None, :], 10)
    latency_ms = (time.perf_counter() - t0) / min(50, len(q)) * 1000
    # Placing one upload: search its model vector, add it, rewrite the file (whole-file write).
    with tempfile.TemporaryDirectory(prefix="faiss-bench-") as tmp:
        path = os.path.join(tmp, "x.faiss")
        faiss.write_index(index, path)
        size = os.path.getsize(path)
        new = _queries(n_vectors, 1)
        t0 = time.perf_counter()
        index.search(new, 10)
        index.add_with_ids(new, np.array([n_vectors + 1], dtype=np.int64))
        t_add = time.perf_counter() - t0
        t0 = time.perf_counter()
        faiss.write_index(index, path)
        t_write = time.perf_counter() - t0
        mmap_ms = None
        if ivf is not None:
            mm = faiss.read_index(path, faiss.IO_FLAG_MMAP)
            if nprobe is not None:
                faiss.try_extract_index_ivf(mm).nprobe = nprobe
            t0 = time.perf_counter()
            for row in q[:50]:
                mm.search(row[None, :], 10)
            mmap_ms = (time.perf_counter() - t0) / min(50, len(q)) * 1000
    return {
        "index": spec, "n": n_vectors, "dim": DIM, "nprobe": nprobe, "train_s": round(t_train, 1),
        "build_s": round(t_build, 1), "size_mib": round(size / 2**20, 1), "rss_mib": round(_rss_mib()),
        "recall_at_10": round(recall, 3), "query_ms": round(latency_ms, 2),
        "query_mmap_ms": None if mmap_ms is None else round(mmap_ms, 2),
        "place_one_search_add_ms": round(t_add * 1000, 2), "place_one_rewrite_file_s": round(t_write, 3),
    }


def sweep(spec: str, n_vectors: int, *, nprobes: tuple[int, ...], n_queries: int, train_n: int,
          shortlist: int = 100) -> list[dict]:
    """Build once; recall@10 and latency per ``nprobe``, raw and after an exact re-rank of a
    ``shortlist`` (mothertree re-scores candidates on the exact vectors it keeps in SQL)."""
    import faiss

    q = _queries(n_vectors, n_queries)
    truth = _exact(n_vectors, q)
    index, t_train, t_build = _build(spec, n_vectors, train_n)
    ivf = faiss.try_extract_index_ivf(index)
    out = []
    for nprobe in nprobes:
        ivf.nprobe = nprobe
        t0 = time.perf_counter()
        for row in q[:50]:
            index.search(row[None, :], shortlist)
        latency_ms = (time.perf_counter() - t0) / min(50, len(q)) * 1000
        _, found = index.search(q, shortlist)
        exact_scores = np.full(found.shape, -np.inf, np.float32)
        for c in np.unique(found[found >= 0] // CHUNK):
            vecs = _chunk(int(c))
            mask = (found // CHUNK) == c
            qi, ki = np.nonzero(mask)
            exact_scores[qi, ki] = np.einsum("ij,ij->i", q[qi], vecs[found[qi, ki] - c * CHUNK])
        reranked = np.take_along_axis(found, np.argsort(-exact_scores, axis=1)[:, :10], 1)
        out.append({"index": spec, "n": n_vectors, "nprobe": nprobe, "train_s": round(t_train, 1),
                    "build_s": round(t_build, 1), "recall_at_10": round(_recall(found[:, :10], truth), 3),
                    f"recall_at_10_reranked_from_{shortlist}": round(_recall(reranked, truth), 3),
                    f"query_top{shortlist}_ms": round(latency_ms, 2)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000", help="Sizes for the comparison of index types.")
    ap.add_argument("--full", type=int, default=1_000_000, help="Size for the chosen index alone (0: skip).")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--sweep", type=int, default=0, help="Only: build IVF1024,PQ64np at this size once and "
                    "sweep nprobe with an exact re-rank of the top 100.")
    ap.add_argument("--threads", type=int, default=1, help="OpenMP threads (1: no spinning on a shared CPU).")
    args = ap.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(args.threads)

    def emit(d: dict) -> None:
        sys.stdout.write(json.dumps(d) + "\n")
        sys.stdout.flush()

    if args.sweep:
        for d in sweep("IVF1024,PQ64np", args.sweep, nprobes=(16, 64, 256), n_queries=args.queries, train_n=20_000):
            emit(d)
        return 0
    for n in [int(x) for x in args.sizes.split(",") if x]:
        q = _queries(n, args.queries)
        t0 = time.perf_counter()
        truth = _exact(n, q)
        emit({"n": n, "exact_ground_truth_s": round(time.perf_counter() - t0, 1)})
        nlist = 1 << round(math.log2(4 * math.sqrt(n)))
        specs = [("IDMap,Flat", None, 0), (f"IVF{nlist},Flat", max(8, nlist // 16), 39 * nlist),
                 (f"IVF{nlist},PQ64np", max(8, nlist // 16), min(20_000, 39 * nlist)),
                 ]
        if n > 100_000:
            specs = [s for s in specs if "PQ" in s[0]]
        for spec, nprobe, train_n in specs:
            emit(measure(spec, n, nprobe=nprobe, n_queries=args.queries, train_n=train_n, truth=truth, q=q))
    if args.full:
        n = args.full
        q = _queries(n, args.queries)
        t0 = time.perf_counter()
        truth = _exact(n, q)
        emit({"n": n, "exact_ground_truth_s": round(time.perf_counter() - t0, 1)})
        # nlist 1024 rather than 4*sqrt(N) = 4000: k-means on 2 shared cores (see RESULTS.md)
        emit(measure("IVF1024,PQ64np", n, nprobe=64, n_queries=args.queries, train_n=20_000, truth=truth, q=q))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
