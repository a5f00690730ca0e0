"""``mothertree worker`` through the CLI: runs queued jobs and reports them as JSON."""

from __future__ import annotations

import json

from mothertree.registry import Registry
from mothertree.registry import jobs


def test_worker_runs_the_queue_and_exits_when_idle(cli, tiny_models):
    with Registry() as reg:  # the default registry of the cli fixture's MOTHERTREE_HOME
        job, _ = jobs.enqueue(reg, "path", str(tiny_models["gpt2"]))
    code, out, _ = cli("worker", "--idle-exit", "--json")
    assert code == 0
    doc = json.loads(out)
    assert [(j["id"], j["status"], j["result"]["model"]) for j in doc["jobs"]] == [(job.id, "done", "gpt2")]
    code, out, _ = cli("show", "gpt2", "--json")
    assert code == 0 and json.loads(out)["name"] == "gpt2"


def test_worker_address_needs_ray(cli):
    code, out, err = cli("worker", "ray://head:10001")
    assert code == 2 and "an ADDRESS needs --ray" in err
