"""Property: any mutated safetensors header gives a clean one-line error or a valid model,
in bounded time and memory. ``bench/bench_fuzz.py`` runs the same cases at 10,000."""

from __future__ import annotations

import resource
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mothertree.bench.bench_fuzz import make_case, run_case

_START_RSS = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rnd=st.randoms(use_true_random=False))
def test_mutated_headers_are_refused_cleanly_or_read_validly(rnd, tmp_path):
    data = make_case(rnd)
    t0 = time.monotonic()
    outcome = run_case(data, tmp_path)
    assert outcome in ("ok", "error"), (outcome, data[:400])
    assert time.monotonic() - t0 < 30  # generous on a shared machine; the bench holds it to 10 s
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - _START_RSS) / 1024
    assert grown_mib < 1024, grown_mib
