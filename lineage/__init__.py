"""The statistics of lineage: pure functions on tensors, frozen dataclasses out.

No SQL, no files, no FAISS here. Inputs are WeightMaps
(``(role, block) -> [out, in]`` float32 matrices) and per-block activations.

- independence tests (Zhu et al. 2025): :func:`independence_test`,
  :func:`exact_test`, :func:`match_test`, :func:`permutation_test`, localization;
- multiple testing: :func:`benjamini_hochberg`, :func:`holm`;
- edge typing: :func:`classify_relation`, :func:`merge_fit`;
- direction: :func:`orient`;
- family recovery: :func:`recover_family`;
- degenerate weights (no evidence of lineage): :func:`degenerate_reason`.
"""

from ._validation import degenerate_reason
from .direction import Direction, DirectionSignals, orient
from .independence import (
    IndependenceResult,
    exact_test,
    independence_test,
    match_test,
    permutation_test,
)
from .multiple import benjamini_hochberg, holm
from .relations import RELATIONS, MergeFit, RelationEvidence, classify_relation, merge_fit
from .robust import BlockActivations, Localization, block_activations, localize, monotone_block_map
from .tree import FamilyTree, PairEvidence, TreeEdge, recover_family

__all__ = [
    "Direction",
    "DirectionSignals",
    "orient",
    "IndependenceResult",
    "independence_test",
    "exact_test",
    "match_test",
    "permutation_test",
    "benjamini_hochberg",
    "holm",
    "RELATIONS",
    "MergeFit",
    "RelationEvidence",
    "classify_relation",
    "merge_fit",
    "BlockActivations",
    "block_activations",
    "Localization",
    "localize",
    "monotone_block_map",
    "FamilyTree",
    "PairEvidence",
    "TreeEdge",
    "recover_family",
    "degenerate_reason",
]
