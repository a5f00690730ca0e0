"""Independence tests between registry models (or paths): the test and its stored row."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ._connection import Connection
from ._models import utc_now
from ._schema import Model, PairTest
from ._weights_cache import LoadedModel, WeightsCache
from .errors import ModelNotFoundError, NoComparableTensorsError

__all__ = ["PairReport", "PairTester"]


@dataclass(frozen=True)
class PairReport:
    """One independence test between two models, with their names."""

    a: str
    b: str
    result: Any  # lineage.IndependenceResult

    def to_dict(self) -> dict[str, Any]:
        d = self.result.to_dict()
        return {"a": self.a, "b": self.b, **d}


class PairTester:
    """Runs independence tests on models read through one :class:`WeightsCache`."""

    def __init__(self, conn: Connection, cache: WeightsCache) -> None:
        self.conn = conn
        self.cache = cache

    def source_of(self, s: Session, name_or_path: str) -> tuple[str, str, str | None]:
        """``(name, source, content digest)`` of a registry name, or of a path (digest unknown)."""
        m = s.scalar(select(Model).where(Model.name == name_or_path))
        if m is not None:
            return m.name, m.source, m.content_digest
        if Path(name_or_path).exists():
            return name_or_path, name_or_path, None
        raise ModelNotFoundError(name_or_path, self.conn.display_url)

    def test(self, a: str, b: str, *, method: str = "auto", alpha: float = 0.01) -> PairReport:
        """Run the independence test between two models (names in the registry, or paths)."""
        with self.conn.session() as s:
            (na, *sa), (nb, *sb) = self.source_of(s, a), self.source_of(s, b)
        la, lb = self.cache.load(*sa), self.cache.load(*sb)
        result = _test_loaded(la, lb, method=method, alpha=alpha, names=(na, nb))
        notes = tuple(dict.fromkeys(la.notes + lb.notes))
        if notes and not set(notes) <= set(result.notes):
            result = dataclasses.replace(result, notes=tuple(result.notes) + notes)
        return PairReport(na, nb, result)

    def row(self, a: int, b: int, sources: dict, names: tuple[str, str], alpha: float) -> PairTest:
        """Run the automatic independence test on two registry models; the unsaved row."""
        la, lb = self.cache.load(*sources[a]), self.cache.load(*sources[b])
        res = _test_loaded(la, lb, method="auto", alpha=alpha, names=names)
        return PairTest(
            a_id=a, b_id=b, method=res.method, statistic=_finite(res.statistic),
            p_value_log10=float(res.p_value_log10), dependent=bool(res.dependent),
            details={"block_map": [list(x) for x in res.block_map], "notes": list(res.notes)},
            computed_at=utc_now(),
        )


def failed_row(a: int, b: int, exc: Exception) -> PairTest:
    """The row of a pair that could not be tested: method ``none``, never dependent."""
    return PairTest(
        a_id=a, b_id=b, method="none", statistic=None, p_value_log10=0.0, dependent=False,
        details={"error": str(exc)}, computed_at=utc_now(),
    )


def _test_loaded(a: LoadedModel, b: LoadedModel, *, method: str, alpha: float, names: tuple[str, str]):
    from ..lineage import block_activations, independence_test

    acts_a = acts_b = None
    if (
        a.activations and b.activations
        and (a.activations["vocab"], a.activations["seq_len"]) == (b.activations["vocab"], b.activations["seq_len"])
    ):
        acts_a, acts_b = block_activations(a.activations["blocks"]), block_activations(b.activations["blocks"])
    try:
        return independence_test(
            a.weights, b.weights, method=method, activations_a=acts_a, activations_b=acts_b, alpha=alpha,
        )
    except ValueError as exc:
        raise NoComparableTensorsError(names[0], names[1], str(exc)) from None


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None
