"""Place every indexed PEFT adapter (``file_format == "peft"``) as the ``adapter`` child of its base.

A step of every resolve's execute (registry/_resolve.py): an adapter is never pair-tested (its
update is not a model's weights), it is fitted by shape to the indexed models
and decided by :func:`mothertree.lineage.adapters.place_adapter`. The edge's
``evidence`` says which candidate won and on what evidence, or that the
weights cannot tell.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, or_, select

from ._models import utc_now
from ._schema import Edge, FamilyMember, Model, Tensor
from .errors import MothertreeError

if TYPE_CHECKING:
    from ..lineage.adapters import AdapterPlacement
    from ._connection import Connection

__all__ = ["ADAPTER_FORMAT", "place_adapters"]

ADAPTER_FORMAT = "peft"


def _declared_matches(adapter: Model, models: list[Model]) -> list[str]:
    hints = [h for h in [(adapter.config or {}).get("base_model_name_or_path"), *(adapter.declared_base_models or [])]
             if isinstance(h, str) and h.strip()]
    out = []
    for m in models:
        keys = {m.name, m.source, m.repo_id or "", Path(m.source).name}
        for h in hints:
            if h in keys or h.rstrip("/") in keys or Path(h.rstrip("/")).name == m.name:
                out.append(m.name)
                break
    return out


def place_adapters(registry: "Connection") -> list[str]:
    """(Re)place every adapter; returns warnings (one line per adapter that fits nothing or failed)."""
    warnings: list[str] = []
    plan = _plan(registry)
    if not plan:
        return warnings
    results = []
    for a_id, a_name, a_source, shapes, declared, ids in plan:
        try:
            placement = _place_one(a_source, shapes, declared, ids)
        except (MothertreeError, OSError, ValueError) as exc:
            warnings.append(f"adapter {a_name} not placed: {exc}")
            continue
        if placement.base is None:
            warnings.append(f"adapter {a_name}: {placement.notes[0]}")
        results.append((a_id, placement, ids))
    _store(registry, results)
    return warnings


def _plan(registry: "Connection") -> list[tuple]:
    """Per adapter: its id, name and source, its candidates' tensor shapes, the declared ones, their ids and sources.

    Candidates are the non-adapter models of the adapter's architecture (every
    model when it is unknown): roots first, then by creation and name, the
    order ties fall back to.
    """
    with registry.session() as s:
        adapters = list(s.scalars(select(Model).where(Model.file_format == ADAPTER_FORMAT)))
        if not adapters:
            return []
        bases = list(s.scalars(select(Model).where(Model.file_format != ADAPTER_FORMAT)))
        roots = {fm.model_id for fm in s.scalars(select(FamilyMember)) if fm.is_root}
        bases.sort(key=lambda m: (m.id not in roots, m.created_at is None, str(m.created_at), m.name))
        plan = []
        for a in adapters:
            cands = [b for b in bases if a.architecture == "unknown" or b.architecture == a.architecture]
            shapes = {
                b.name: {t.name: tuple(t.shape) for t in s.scalars(select(Tensor).where(Tensor.model_id == b.id))}
                for b in cands
            }
            plan.append((a.id, a.name, a.source, shapes, _declared_matches(a, cands),
                         {b.name: (b.id, b.source) for b in cands}))
    return plan


def _place_one(a_source: str, shapes: dict, declared: list[str], ids: dict) -> "AdapterPlacement":
    """Read one adapter's update (and DoRA magnitudes) and decide its base among the candidates."""
    from ..indexer.readers import iter_tensors, open_source, read_header
    from ..indexer.readers import peft as peft_reader
    from ..lineage.adapters import MAGNITUDE_SUFFIX, place_adapter

    src = open_source(a_source)
    infos = read_header(src)
    layout = peft_reader.adapter_layout(src.files[0])
    ev_names = [n for n, e in layout.items() if e["kind"] in ("full", "magnitude")]
    evidence = dict(iter_tensors(src, {n: infos[n] for n in ev_names})) if ev_names else {}
    dora_names = [n.removesuffix(MAGNITUDE_SUFFIX) + ".weight" for n in ev_names if n.endswith(MAGNITUDE_SUFFIX)]
    dora = dict(iter_tensors(src, {n: infos[n] for n in dora_names if n in infos})) if dora_names else {}
    return place_adapter(
        {n: i.shape for n, i in infos.items()}, shapes, evidence=evidence,
        candidate_tensors=_candidate_tensors(ev_names, shapes, ids) if evidence else {},
        declared=declared, dora_updates=dora,
    )


def _candidate_tensors(ev_names: list[str], shapes: dict, ids: dict) -> dict[str, dict]:
    """Each candidate's tensors that the adapter's full-weight evidence names (matched by name)."""
    from ..indexer.readers import iter_tensors, open_source, read_header
    from ..lineage.adapters import MAGNITUDE_SUFFIX, match_names

    want = sorted({n.removesuffix(MAGNITUDE_SUFFIX) + ".weight" if n.endswith(MAGNITUDE_SUFFIX) else n
                   for n in ev_names})
    out = {}
    for cname, (_cid, csource) in ids.items():
        if cname not in shapes:
            continue
        m = match_names(want, list(shapes[cname]))
        csrc = open_source(csource)
        cinfos = read_header(csrc)
        sub = {n: cinfos[n] for n in set(m.values()) if n in cinfos}
        out[cname] = dict(iter_tensors(csrc, sub)) if sub else {}
    return out


def _store(registry: "Connection", results: list[tuple]) -> None:
    """Replace each placed adapter's edges and family membership: a child of its base, or a root."""
    now = utc_now()
    with registry.session() as s:
        for a_id, placement, ids in results:
            s.execute(delete(Edge).where(or_(Edge.child_id == a_id, Edge.parent_id == a_id)))
            s.execute(delete(FamilyMember).where(FamilyMember.model_id == a_id))
            if placement.base is None:
                s.add(FamilyMember(model_id=a_id, family_id=a_id, is_root=True))
                continue
            base_id = ids[placement.base][0]
            fm = s.get(FamilyMember, base_id)
            if fm is None:
                fm = FamilyMember(model_id=base_id, family_id=base_id, is_root=True)
                s.add(fm)
            s.add(FamilyMember(model_id=a_id, family_id=fm.family_id, is_root=False))
            s.add(Edge(
                parent_id=base_id, child_id=a_id, relation="adapter", relation_confidence=placement.confidence,
                direction_confidence=1.0, p_value_log10=0.0, q_value_log10=None, statistic=None,
                method=f"adapter-{placement.decided_by}", block_map=None,
                evidence={"adapter": placement.to_dict()}, computed_at=now,
            ))
