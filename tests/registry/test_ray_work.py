"""Work on Ray: a placement's pair tests as tasks give the rows of the same tests run in-process; a Ray
worker's tasks read, the driver writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from mothertree.registry import RayPairRunner, Registry
from mothertree.registry._schema import Edge, Fingerprint, Model, PairTest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def tuned_llama(tiny_models, tmp_path_factory) -> Path:
    """The tiny Llama, every weight nudged by small seeded noise: a fine-tune of it."""
    import torch
    from safetensors.torch import load_file, save_file

    src = tiny_models["llama"]
    out = tmp_path_factory.mktemp("tuned") / "llama-tuned"
    out.mkdir()
    g = torch.Generator().manual_seed(3)
    state = {k: (v + 0.02 * v.std() * torch.randn(v.shape, generator=g)).contiguous()
             for k, v in load_file(src / "model.safetensors").items()}
    save_file(state, out / "model.safetensors")
    (out / "config.json").write_text((src / "config.json").read_text())
    return out


def _stored(reg: Registry) -> tuple[dict, set]:
    """Pair tests by model names (every column but ids and time) and edges by names."""
    a, b = aliased(Model), aliased(Model)
    with reg.session() as s:
        tests = {
            (na, nb): (t.method, t.statistic, t.p_value_log10, t.q_value_log10, t.dependent, t.details)
            for t, na, nb in s.execute(
                select(PairTest, a.name, b.name).join(a, a.id == PairTest.a_id).join(b, b.id == PairTest.b_id)
            )
        }
        edges = {
            (p, c, e.relation, e.method, e.p_value_log10)
            for e, p, c in s.execute(
                select(Edge, a.name, b.name).join(a, a.id == Edge.parent_id).join(b, b.id == Edge.child_id)
            )
        }
    return tests, edges


def test_tasks_ask_for_a_gpu_only_on_a_cluster_that_has_one(monkeypatch):
    from mothertree.registry._ray import gpu_options

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 8.0})
    assert gpu_options() == {"num_gpus": 1}
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    assert gpu_options() == {}


@pytest.mark.slow  # a local Ray starts in 10-30 s on the shared 2-core machine
def test_pair_tests_as_ray_tasks_store_what_the_local_path_stores(
    registry, tiny_models, tuned_llama, local_ray,
):
    for name, path in (("base", tiny_models["llama"]), ("other", tiny_models["llama-other"]), ("tuned", tuned_llama)):
        registry.index_one(path, name=name, device="cpu")
    local = registry.resolve()
    tests_local, edges_local = _stored(registry)
    shutil.rmtree(registry.home / "activations", ignore_errors=True)  # the tasks compute their own
    said: list[str] = []
    remote = registry.resolve(full=True, progress=lambda e: said.append(e.text), pair_runner=RayPairRunner(registry.home))
    assert any("as Ray tasks" in m for m in said), said
    tests_ray, edges_ray = _stored(registry)
    assert remote.pairs_tested == local.pairs_tested >= 2
    assert tests_ray == tests_local
    assert any(t[4] for t in tests_local.values()) and not all(t[4] for t in tests_local.values())
    assert edges_ray == edges_local  # direction from the weights alone (no timestamps): either way, the same
    assert {frozenset((p, c)) for p, c, *_ in edges_local} == {frozenset(("base", "tuned"))}


@pytest.mark.slow
def test_a_ray_worker_indexes_path_jobs_in_tasks_and_writes_them_itself(
    registry, tiny_models, tuned_llama, local_ray,
):
    from mothertree.registry import jobs

    base, _ = jobs.enqueue(registry, "path", str(tiny_models["llama"]))
    tuned, _ = jobs.enqueue(registry, "path", str(tuned_llama))
    report = jobs.work_ray(registry, idle_exit=True, poll_s=0.2)
    by_id = {j.id: j for j in report.jobs}
    assert {j.status for j in report.jobs} == {"done"}, [j.error for j in report.jobs]
    assert by_id[base.id].result["model"] == "llama" and by_id[tuned.id].result["model"] == "llama-tuned"
    # The two tasks race; whichever model is written second is placed against the first (pair tests as tasks).
    assert report.jobs[-1].result["pairs_tested"] >= 1, [j.result for j in report.jobs]
    edges = {frozenset((e.parent, e.child)) for e in registry.tree().edges}
    assert edges == {frozenset(("llama", "llama-tuned"))}
    infos = registry.vectors.check()
    with registry.session() as s:
        assert sum(i.vectors for i in infos) == s.scalar(select(func.count()).select_from(Fingerprint))
    assert registry.vectors.drift() == () and not registry.vectors.notices  # added by the driver, never repaired
