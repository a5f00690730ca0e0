"""mothertree: a model provenance registry that reads the weights.

The implementation lives in four subpackages, imported one way
(``cli -> registry -> indexer, lineage``):

- :mod:`mothertree.indexer` reads weight files, maps parameter names to roles
  and computes fingerprints;
- :mod:`mothertree.lineage` holds the statistics (independence tests, edge
  typing, direction, family recovery) as pure functions on tensors;
- :mod:`mothertree.registry` owns the lineage database, the FAISS store, the
  queries and the reports;
- :mod:`mothertree.cli` is the ``mothertree`` command, a thin layer over
  :mod:`mothertree.registry`.

Beside them, two standard-library-only modules every package may import:
:mod:`mothertree.vocabulary` (role and product names, spelled once) and
:mod:`mothertree.serialize` (results to JSON, one NaN/inf rule).
``tests/test_imports.py`` enforces the direction module by module.
"""

__version__ = "0.1.0"
