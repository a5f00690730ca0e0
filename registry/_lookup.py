"""Find a model: a registry name or an indexed path, and its retrieval candidates. Reads only."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import select

from ._candidates import CandidatesResult, find_candidates, fingerprint_from_rows
from ._connection import Connection
from ._schema import Fingerprint, Model, Tensor
from .errors import ModelNotFoundError, RegistryError

__all__ = ["name_for", "stored_candidates", "path_candidates"]


def name_for(conn: Connection, name_or_path: str | os.PathLike) -> str | None:
    """The registry name of a model name or an indexed path; ``None`` for a path not indexed.

    A new path whose default name is already taken by other weights is not
    indexed, so ``None``: indexing gives it a name of its own (``_naming``).
    """
    with conn.session() as s:
        if s.scalar(select(Model.id).where(Model.name == str(name_or_path))) is not None:
            return str(name_or_path)
        if not Path(name_or_path).expanduser().exists():
            raise ModelNotFoundError(str(name_or_path), conn.display_url)
        from ..indexer import open_source
        from ._naming import absolute_path

        source = open_source(absolute_path(name_or_path))
        by_source = s.scalar(select(Model).where(Model.source == str(source.root)))
        if by_source is not None:
            return by_source.name
    return None


def stored_candidates(conn: Connection, name: str, *, k: int = 10) -> CandidatesResult:
    """Candidates of an indexed model, from its stored fingerprints."""
    with conn.session() as s:
        model = conn.model_row(s, name)
        rows = list(s.scalars(select(Fingerprint).where(Fingerprint.model_id == model.id)))
        if not rows:
            shapes = list(s.scalars(select(Tensor.shape).where(Tensor.model_id == model.id, Tensor.part != "buffer")))
            if not any(isinstance(sh, list) and len(sh) == 2 and 0 not in sh for sh in shapes):
                raise RegistryError(
                    f"Model '{name}' has no fingerprints: none of its {len(shapes)} learned tensor(s) is a "
                    "non-empty 2-D weight matrix, so there is nothing to compare it by"
                )
            raise RegistryError(
                f"Model '{name}' has no fingerprints (indexed before they existed). "
                "Compute them with: mothertree reindex"
            )
        return find_candidates(
            s, conn.vectors, fingerprint_from_rows(rows), name=name, exclude_model_id=model.id, k=k, stored=True,
        )


def path_candidates(conn: Connection, path: str | os.PathLike, *, k: int = 10, device: str = "auto") -> CandidatesResult:
    """Candidates of a model folder or file, fingerprinted in memory; nothing is stored."""
    from ..indexer import open_source
    from ..indexer.fingerprints import fingerprint_model
    from ._naming import absolute_path, default_name

    source = open_source(absolute_path(path))
    query = fingerprint_model(source.root, device=device)
    with conn.session() as s:
        return find_candidates(
            s, conn.vectors, query, name=default_name(source), exclude_model_id=None, k=k, stored=False,
        )
