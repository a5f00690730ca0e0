"""kill -9 during ``index`` and late ``resolve``: SQL stays whole, FAISS drift is detected and the re-run repairs it.

``bench/bench_kill9.py`` runs the same trials 50 + 20 times; the suite runs a few.
"""

from __future__ import annotations

import random

import pytest

from mothertree.bench.bench_kill9 import check_registry, kill_index_trial, kill_resolve_trial, make_models

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kill_models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("kill9"))


def test_kill_during_index(db_url, kill_models):
    rnd = random.Random(1)
    for _ in range(3):
        trial = kill_index_trial(db_url, kill_models, rnd)
        assert not [p for p in trial["after_kill"] if not p.startswith("FAISS")], trial  # SQL is never broken
        assert trial["after_rerun"] == [], trial
    assert check_registry(db_url) == []


def test_kill_during_late_resolve(tmp_path, kill_models):
    from mothertree.bench.bench_kill9 import _INDEX, _run

    url = f"sqlite:///{tmp_path / 'r.db'}"
    _run(_INDEX, url, *(str(p) for p in kill_models.values()))
    rnd = random.Random(2)
    for _ in range(2):
        trial = kill_resolve_trial(url, rnd)
        assert trial["after_kill"] == [] and trial["after_rerun"] == [], trial
