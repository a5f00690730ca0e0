"""The lineage registry: schema, sessions, FAISS store, lineage queries and reports.

Everything the ``mothertree`` command does is a call on :class:`Registry` or
one of the functions here (hub crawling, reports, the demo).
"""

from . import errors, reports, settings
from ._demo import DemoResult, run_demo
from ._hub import HubIndexResult, HubReport, RetryPolicy, crawl_hub, index_cache, index_hub
from ._lineage import EdgeView, LineageView, PairReport, ResolveReport
from ._models import IndexReport, IndexResult, ModelDetail, ModelSummary
from ._registry import Registry
from .errors import MothertreeError
from .reports import NamedReport, QueryResult, run_report, run_sql

__all__ = [
    "Registry",
    "DemoResult",
    "run_demo",
    "IndexReport",
    "IndexResult",
    "ModelDetail",
    "ModelSummary",
    "PairReport",
    "ResolveReport",
    "EdgeView",
    "LineageView",
    "HubIndexResult",
    "HubReport",
    "RetryPolicy",
    "index_hub",
    "crawl_hub",
    "index_cache",
    "NamedReport",
    "QueryResult",
    "run_report",
    "run_sql",
    "MothertreeError",
    "errors",
    "reports",
    "settings",
]
