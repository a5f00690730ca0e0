"""Independence tests that need no computation: the same model twice, or a stored result.

``mothertree test A A`` answers at once, and a pair whose weights have not
changed since it was tested (by ``resolve`` or an earlier ``test``) gets the
stored result back instead of a recomputation. A new revision of either model
deletes its stored tests, so a stored row always describes the current weights.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ._models import iso
from ._schema import Model, PairTest

__all__ = ["SAME_MODEL", "known_result", "store_result"]

#: ``method`` of the result for two names (or paths) that hold the very same weights.
SAME_MODEL = "identical"

_NULL = "the two models' weights are independent (independent initializations)"


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
    from datetime import datetime, timezone

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
            stat = result.statistic
            s.add(PairTest(
                a_id=lo, b_id=hi, method=result.method,
                statistic=float(stat) if stat is not None and math.isfinite(stat) else None,
                p_value_log10=float(result.p_value_log10), dependent=bool(result.dependent),
                details={"block_map": block_map, "notes": list(result.notes)},
                computed_at=datetime.now(timezone.utc),
            ))
        return True
    except IntegrityError:  # a concurrent resolve stored it first
        return False
