"""``mothertree demo``: build a small family (here, in ``bench``), index it, resolve it, check it.

The registry never imports ``bench``: the model building lives here, and the
demo calls the registry like any user would.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..progress import Progress, note_step
from ..registry import Registry
from ..registry.settings import registry_home
from .zoo import PRESETS, Zoo, build_zoo, preset_digests

__all__ = ["DemoResult", "demo_models_of", "run_demo"]


@dataclass(frozen=True)
class DemoResult:
    """The demo's registry, what it indexed, the recovered tree and how it scores."""

    db: str
    zoo: str
    models: tuple[str, ...]
    tree: dict[str, Any]
    truth: tuple[tuple[str, str, str], ...]
    correct_edges: int
    true_edges: int

    @property
    def edge_accuracy(self) -> float:
        return self.correct_edges / self.true_edges if self.true_edges else 1.0

    def edge_is_right(self, parent: str, child: str) -> bool:
        return any(p == parent and c == child for p, c, _ in self.truth)

    def to_dict(self) -> dict[str, Any]:
        return {
            "db": self.db,
            "zoo": self.zoo,
            "models": list(self.models),
            "tree": self.tree,
            "truth": [{"parent": p, "child": c, "relation": r} for p, c, r in self.truth],
            "correct_edges": self.correct_edges,
            "true_edges": self.true_edges,
            "edge_accuracy": self.edge_accuracy,
        }


def run_demo(
    workdir: str | Path | None = None, *, zoo: Zoo | None = None, progress: Progress | None = None,
) -> DemoResult:
    """Build the demo zoo (cached), index it into a fresh registry and resolve its families.

    No timestamps are given to the registry: direction comes from the weights alone.
    ``zoo``: an already-built zoo of another preset that holds the demo's
    models weight for weight (the ``test`` zoo does); its demo models are
    indexed instead of building the demo's own zoo.
    """
    work = Path(workdir) if workdir else registry_home() / "demo"
    work.mkdir(parents=True, exist_ok=True)
    if zoo is None:
        note_step(progress, "building the demo model family (tiny transformers, trained for seconds)...")
        zoo = build_zoo(work / "zoo", preset="demo", progress=progress)
    else:
        zoo = demo_models_of(zoo)
    db = work / "demo.db"
    for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)
    shutil.rmtree(db.with_name(db.name + ".vectors"), ignore_errors=True)
    with Registry(str(db)) as reg:
        for m in zoo.models:
            note_step(progress, f"indexing {m.name}")
            reg.index_one(m.path, name=m.name)
        note_step(progress, "resolving families (candidates, independence tests, edge typing, direction)...")
        reg.resolve(progress=progress)
        tree = reg.tree().to_dict()
    truth = tuple(zoo.edges())
    found = {(e["parent"], e["child"]) for e in tree["edges"]}
    correct = sum((p, c) in found for p, c, _ in truth)
    return DemoResult(str(db), zoo.root, tuple(m.name for m in zoo.models), tree, truth, correct, len(truth))


def demo_models_of(zoo: Zoo) -> Zoo:
    """The demo's models out of a zoo built by another preset, which must hold them weight for weight."""
    want = preset_digests("demo")
    have = preset_digests(zoo.preset) if zoo.preset in PRESETS else {}
    missing = [n for n, key in want.items() if have.get(n) != key or n not in zoo.names]
    if missing:
        raise ValueError(
            f"the {zoo.preset!r} zoo at {zoo.root} does not hold the demo's models {', '.join(missing)}; "
            "build the demo's own zoo: run_demo() without zoo"
        )
    return dataclasses.replace(zoo, preset="demo", models=tuple(m for m in zoo.models if m.name in want))
