"""How many CPU threads torch's and BLAS's kernels use: one by default, every core for torch's few large ones.

mothertree's statistics are mostly many small kernels (norms, moments,
sorted samples, 64–1024-wide products) interleaved with Python. On a
multi-threaded pool each of them ends at a barrier that needs every pool
thread to be scheduled; when anything else wants a core (mothertree's own
reader and digest threads, a database, another process) the barrier waits
for a scheduler time slice. Measured on a 2-core machine (bench/RESULTS.md,
"Threads"): an independence test of two 128-wide models took 0.64 s on one
thread and 2.2 s on two with the machine otherwise idle, 0.69 s and 10.9 s
beside one other busy process. numpy's and scipy's OpenBLAS pools behave
the same (a whole resolve of 20 small models: 58 s with one BLAS thread,
160 s with two beside one busy process), so they are held to the same
count through ``threadpoolctl``. Large torch kernels (a chunk of a 7B-shaped
matrix) amortise the barrier and still gain from more cores, so they ask
for them with :func:`wide`.

Standard library only at import time; torch, numpy, scipy and threadpoolctl
are imported when a function runs. The registry calls :func:`configure` with ``MOTHERTREE_THREADS``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

__all__ = ["WIDE_ELEMENTS", "configure", "wide"]

#: A kernel over at least this many elements runs on every core (it amortises the pool's barrier).
WIDE_ELEMENTS = 1 << 22

_baseline: int | None = None  # torch's threads for small kernels, once configured
_blas: int | None = None  # the BLAS limit in force (threadpoolctl scans loaded libraries: done once)


def configure(threads: int = 1) -> int:
    """Set torch's and BLAS's threads for small kernels; ``0`` keeps the libraries' own. Returns torch's count.

    Idempotent and cheap: every read of a model calls it, so a process that
    builds several registries (a service, a worker, the tests) ends up with
    one setting.
    """
    global _baseline, _blas
    if threads < 0:
        raise ValueError(f"threads must be 0 (the libraries' default) or a positive count, got {threads}")
    import numpy  # noqa: F401  (a BLAS is limited only once it is loaded)
    import scipy.linalg  # noqa: F401
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
        if _blas != threads:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=threads, user_api="blas")
            _blas = threads
    _baseline = torch.get_num_threads()
    return _baseline


@contextmanager
def wide(elements: int) -> Iterator[None]:
    """Run the enclosed kernels on every core when they touch at least :data:`WIDE_ELEMENTS` elements.

    Outside a configured process (a user calling ``lineage`` directly), or
    for small work, this changes nothing.
    """
    if _baseline is None or elements < WIDE_ELEMENTS:
        yield
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores <= _baseline:
        yield
        return
    torch.set_num_threads(cores)
    try:
        yield
    finally:
        torch.set_num_threads(_baseline)
