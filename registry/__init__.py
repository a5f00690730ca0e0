"""The lineage registry: schema, sessions, FAISS store, lineage queries and reports."""

from . import errors, settings
from ._models import IndexReport, IndexResult, ModelDetail, ModelSummary
from ._demo import DemoResult, run_demo
from ._registry import Registry
from .errors import MothertreeError

__all__ = [
    "Registry",
    "DemoResult",
    "run_demo",
    "IndexReport",
    "IndexResult",
    "ModelDetail",
    "ModelSummary",
    "MothertreeError",
    "errors",
    "settings",
]
