"""Readers, layer roles, statistics and fingerprints: from files to records.

Public surface: :func:`open_source` / :func:`read_header` / :func:`iter_tensors`
(readers), :func:`scan_model` (one pass over a model), and the role map in
:mod:`mothertree.indexer.roles`.
"""

from ._scan import ModelScan, TensorRecord, scan_model
from .readers import TensorInfo, WeightSource, iter_tensors, model_paths, open_source, read_header

__all__ = [
    "ModelScan",
    "TensorRecord",
    "TensorInfo",
    "WeightSource",
    "scan_model",
    "open_source",
    "model_paths",
    "read_header",
    "iter_tensors",
]
