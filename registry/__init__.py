"""The lineage registry: schema, sessions, FAISS store, lineage queries and reports.

Everything the ``mothertree`` command does is a method of :class:`Registry`
(hub crawling is :mod:`._hub`'s functions taking a registry; one repo at a time in :mod:`._hub_repo`).
"""

from . import errors, jobs, reports, settings
from ._db import head_revision as schema_head
from ._hub import HubIndexResult, HubReport, RetryPolicy, crawl_hub, index_cache, index_hub
from ._hub_ray import RayFanOut
from ._models import IndexReport, IndexResult, ModelDetail, ModelSummary
from ._naming import hub_ids, validate_name
from ._open import open_registry
from ._pairs import PairReport
from ._queries import EdgeView, LineageView
from ._ray import RayPairRunner
from ._registry import Registry
from ._resolve import ResolvePlan, ResolveReport
from .errors import MothertreeError
from .reports import NamedReport, QueryResult

__all__ = [
    "Registry",
    "open_registry",
    "schema_head",
    "hub_ids",
    "validate_name",
    "IndexReport",
    "IndexResult",
    "ModelDetail",
    "ModelSummary",
    "PairReport",
    "ResolvePlan",
    "ResolveReport",
    "RayPairRunner",
    "EdgeView",
    "LineageView",
    "HubIndexResult",
    "HubReport",
    "RetryPolicy",
    "index_hub",
    "crawl_hub",
    "RayFanOut",
    "index_cache",
    "NamedReport",
    "QueryResult",
    "MothertreeError",
    "errors",
    "jobs",
    "reports",
    "settings",
]
