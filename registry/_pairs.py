"""Independence tests between registry models (or paths): the test and its stored row.

Tests that need no computation are answered at once: ``mothertree test A A``
(the same model twice, or identical weights), and a pair whose weights have
not changed since it was tested (by ``resolve`` or an earlier ``test``) gets
the stored result back instead of a recomputation. A new revision of either
model deletes its stored tests, so a stored row always describes the current
weights.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..progress import Progress, note_step
from ._connection import Connection
from ._models import iso, utc_now
from ._schema import Model, PairTest
from ._weights_cache import LoadedModel, WeightsCache
from .errors import ModelNotFoundError, NoComparableTensorsError, UnreadableWeightsError

__all__ = ["PairJob", "PairReport", "PairTester", "SAME_MODEL", "known_result", "store_result"]

#: ``method`` of the result for two names (or paths) that hold the very same weights.
SAME_MODEL = "identical"

_NULL = "the two models' weights are independent (independent initializations)"


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

    def test(
        self, a: str, b: str, *, method: str = "auto", alpha: float = 0.01,
        progress: Progress | None = None,
    ) -> PairReport:
        """Run the independence test between two models (names in the registry, or paths).

        The same model twice, or a stored ``auto`` test of unchanged weights, is
        answered without loading anything; a new ``auto`` test of two registry
        models is stored for the next ``test`` or ``resolve``.
        """
        with self.conn.session() as s:
            (na, *sa), (nb, *sb) = self.source_of(s, a), self.source_of(s, b)
            known = known_result(s, na, nb, tuple(sa), tuple(sb), method=method, alpha=alpha)
        if known is not None:  # the same model twice, or a stored test of unchanged weights
            return PairReport(na, nb, known)
        note_step(progress, f"step 1 of 3: loading {na} (weights, and a forward pass for phi_MATCH)")
        la = self.cache.load(*sa)
        note_step(progress, f"step 2 of 3: loading {nb}")
        lb = self.cache.load(*sb)
        note_step(progress, f"step 3 of 3: testing {na} ~ {nb} (method {method})")
        result = _test_loaded(la, lb, method=method, alpha=alpha, names=(na, nb))
        notes = tuple(dict.fromkeys(la.notes + lb.notes))
        if notes and not set(notes) <= set(result.notes):
            result = dataclasses.replace(result, notes=tuple(result.notes) + notes)
        if method == "auto":
            store_result(self.conn.session, na, nb, result)
        return PairReport(na, nb, result)

    def row(self, a: int, b: int, sources: dict, names: tuple[str, str], alpha: float) -> PairTest:
        """Run the automatic independence test on two registry models; the unsaved row."""
        return PairTest(**_auto_fields(self.cache, a, b, sources[a], sources[b], names, alpha))


@dataclass(frozen=True)
class PairJob:
    """One candidate pair of a resolve, with all a process needs to test it on its own.

    Plain data (ids, ``(source, digest)`` of each model, names, level), so the
    same test runs in the resolving process or in a Ray task on another
    machine; :meth:`run` returns the columns of the pair's stored row, which
    the resolving process writes.
    """

    a: int
    b: int
    source_a: tuple[str, str | None]
    source_b: tuple[str, str | None]
    names: tuple[str, str]
    alpha: float

    def run(self, cache: WeightsCache) -> dict[str, Any]:
        """The automatic test's row columns; a pair that cannot be tested gets method ``none``, never dependent."""
        try:
            return _auto_fields(cache, self.a, self.b, self.source_a, self.source_b, self.names, self.alpha)
        except (NoComparableTensorsError, UnreadableWeightsError, OSError) as exc:
            return dict(
                a_id=self.a, b_id=self.b, method="none", statistic=None, p_value_log10=0.0, dependent=False,
                details={"error": str(exc)}, computed_at=utc_now(),
            )


def _auto_fields(
    cache: WeightsCache, a: int, b: int, source_a: tuple[str, str | None], source_b: tuple[str, str | None],
    names: tuple[str, str], alpha: float,
) -> dict[str, Any]:
    """Columns of the ``pair_tests`` row of the automatic test between two registry models."""
    la, lb = cache.load(*source_a), cache.load(*source_b)
    res = _test_loaded(la, lb, method="auto", alpha=alpha, names=names)
    return dict(
        a_id=a, b_id=b, method=res.method, statistic=_finite(res.statistic),
        p_value_log10=float(res.p_value_log10), dependent=bool(res.dependent),
        details={"block_map": [list(x) for x in res.block_map], "notes": list(res.notes)},
        computed_at=utc_now(),
    )


def _result(**kw: Any):
    from ..lineage import IndependenceResult

    return IndependenceResult(null=_NULL, **kw)


def known_result(
    s: Session, na: str, nb: str, a: tuple[str, str | None], b: tuple[str, str | None], *, method: str, alpha: float
):
    """The result for ``na`` vs ``nb`` without testing, or ``None`` when a test must run.

    ``a`` and ``b`` are ``(source, content digest)``; the digest is ``None`` for a path.
    """
    if na == nb or a[0] == b[0] or (a[1] is not None and a[1] == b[1]):
        why = "the same model" if na == nb or a[0] == b[0] else "identical weights (same content digest)"
        return _result(
            statistic=math.nan, p_value=0.0, p_value_log10=-math.inf, method=SAME_MODEL, dependent=True,
            alpha=alpha, notes=(f"{why}: dependent by definition, no test run",),
        )
    if method != "auto" or a[1] is None or b[1] is None:
        return None
    ma = s.scalar(select(Model).where(Model.name == na))
    mb = s.scalar(select(Model).where(Model.name == nb))
    if ma is None or mb is None:
        return None
    lo, hi = sorted((ma.id, mb.id))
    row = s.scalar(select(PairTest).where(PairTest.a_id == lo, PairTest.b_id == hi))
    if row is None or row.method == "none":
        return None
    details = row.details or {}
    block_map = tuple(tuple(x) for x in details.get("block_map") or ())
    if ma.id != lo:
        block_map = tuple((y, x) for x, y in block_map)
    lp = float(row.p_value_log10)
    return _result(
        statistic=math.nan if row.statistic is None else float(row.statistic),
        p_value=10.0 ** lp if lp > -300 else 0.0, p_value_log10=lp, method=row.method,
        dependent=bool(lp < math.log10(alpha)), alpha=alpha, block_map=block_map,
        notes=tuple(details.get("notes") or ()) + (
            f"stored result of {iso(row.computed_at)} reused: both models' weights are unchanged since "
            "(per-block details are not stored)",
        ),
    )


def store_result(session_factory, na: str, nb: str, result) -> bool:
    """Keep an ``auto`` test of two registry models, so the next ``test`` or ``resolve`` reuses it."""
    try:
        with session_factory() as s:
            ma = s.scalar(select(Model).where(Model.name == na))
            mb = s.scalar(select(Model).where(Model.name == nb))
            if ma is None or mb is None or ma.id == mb.id:
                return False
            lo, hi = sorted((ma.id, mb.id))
            if s.scalar(select(PairTest.id).where(PairTest.a_id == lo, PairTest.b_id == hi)) is not None:
                return False
            block_map = [list(x) if ma.id == lo else [x[1], x[0]] for x in result.block_map]
            s.add(PairTest(
                a_id=lo, b_id=hi, method=result.method, statistic=_finite(result.statistic),
                p_value_log10=float(result.p_value_log10), dependent=bool(result.dependent),
                details={"block_map": block_map, "notes": list(result.notes)},
                computed_at=utc_now(),
            ))
        return True
    except IntegrityError:  # a concurrent resolve stored it first
        return False


def _test_loaded(a: LoadedModel, b: LoadedModel, *, method: str, alpha: float, names: tuple[str, str]):
    """The pair's test, read block by block with sequential early stopping (``docs/streaming.md``)."""
    from ..lineage import block_activations, independence_test
    from ._loading import LazyActivations

    def views(blocks: Any) -> Any:
        # lazy activations already yield BlockActivations, block by block, on first use
        return blocks if isinstance(blocks, LazyActivations) else block_activations(blocks)

    acts_a = acts_b = None
    if (
        a.activations and b.activations
        and (a.activations["vocab"], a.activations["seq_len"]) == (b.activations["vocab"], b.activations["seq_len"])
    ):
        acts_a, acts_b = views(a.activations["blocks"]), views(b.activations["blocks"])
    try:
        try:
            return independence_test(
                a.weights, b.weights, method=method, activations_a=acts_a, activations_b=acts_b, alpha=alpha,
                sequential=method in ("auto", "exact", "match"),
            )
        except (RuntimeError, IndexError, UnreadableWeightsError) as exc:
            # no forward pass after all (built on first use), or one that fails half-way:
            # the weights-only tests, with a notice
            if acts_a is None or method == "match":
                raise
            why = exc.problem if isinstance(exc, UnreadableWeightsError) else \
                f"the forward pass failed ({type(exc).__name__}: {exc})"
            res = independence_test(a.weights, b.weights, method=method, alpha=alpha,
                                    sequential=method in ("auto", "exact"))
            return dataclasses.replace(res, notes=res.notes + (f"weights-only tests: {why}",))
    except ValueError as exc:
        raise NoComparableTensorsError(names[0], names[1], str(exc)) from None


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None
