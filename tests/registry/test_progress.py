"""One progress protocol: indexing, tests, resolve and the CLI reporter all speak ProgressEvent."""

from __future__ import annotations

import io

from mothertree.progress import ProgressEvent
from mothertree.registry import Registry


def test_index_test_and_resolve_report_through_one_handler(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("MOTHERTREE_HOME", str(tmp_path / "home"))
    events: list[ProgressEvent] = []
    with Registry(f"sqlite:///{tmp_path / 'r.db'}") as reg:
        reg.index_one(tiny_models["llama"], name="mine", progress=events.append)
        reads = [e for e in events if e.is_read]
        assert reads and {e.label for e in reads} == {"mine"}  # the registry's name, not the folder's
        assert reads[-1].done == reads[-1].total > 0
        assert all(a.done <= b.done for a, b in zip(reads, reads[1:]))
        reg.index_one(tiny_models["llama-other"], name="other")
        events.clear()
        reg.test("mine", "other", progress=events.append)
        assert [e.text.split(":")[0] for e in events] == ["step 1 of 3", "step 2 of 3", "step 3 of 3"]
        assert not any(e.is_read for e in events)
        events.clear()
        reg.resolve(progress=events.append)
        assert events and all(isinstance(e, ProgressEvent) and e.text for e in events)


def test_the_cli_reporter_is_a_progress_handler():
    from rich.console import Console

    from mothertree.cli._output import Reporter

    buf = io.StringIO()
    rep = Reporter(Console(file=buf, width=200), every_s=0.0, first_s=0.0)
    rep(ProgressEvent("resolving"))
    rep(ProgressEvent("big: 500 of 1000 bytes", label="big", done=500, total=1000))
    lines = buf.getvalue().splitlines()
    assert lines[0] == "resolving"
    assert lines[1].startswith("big: 50% (500 B of 1.0 kB)")
