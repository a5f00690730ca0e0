"""Result types of the model-level registry operations."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..serialize import Serializable
from ._schema import Model

__all__ = ["IndexResult", "IndexReport", "ModelSummary", "ModelDetail", "iso", "utc_now", "as_utc"]


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC (the one clock of the registry)."""
    return datetime.now(timezone.utc)


def as_utc(dt: datetime | None) -> datetime | None:
    """``dt`` as an aware UTC datetime (SQLite hands back naive datetimes; they were stored as UTC)."""
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def iso(dt: datetime | None) -> str | None:
    """ISO-8601 in UTC, ``Z`` suffix."""
    dt = as_utc(dt)
    return None if dt is None else dt.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class IndexResult:
    """What indexing one path did: ``indexed`` (new), ``revised`` (new revision) or ``unchanged``."""

    name: str
    path: str
    status: str
    revision: int
    num_tensors: int
    role_counts: tuple[tuple[str, int], ...]
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "status": self.status,
            "revision": self.revision,
            "num_tensors": self.num_tensors,
            "role_counts": dict(self.role_counts),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class IndexReport:
    """A batch of paths: the models indexed and, per failed path, its error."""

    results: tuple[IndexResult, ...]
    errors: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": [r.to_dict() for r in self.results],
            "errors": [{"path": p, "error": e} for p, e in self.errors],
        }


@dataclass(frozen=True)
class ModelSummary:
    name: str
    architecture: str
    model_class: str | None
    file_format: str
    num_blocks: int | None
    hidden_size: int | None
    mlp_width: int | None
    vocab_size: int | None
    num_parameters: int
    dtype: str | None
    revision: int
    role_counts: tuple[tuple[str, int], ...]
    declared_base_models: tuple[str, ...]
    created_at: str | None
    indexed_at: str | None
    source: str
    status: str

    @classmethod
    def from_row(cls, m: Model, role_counts: dict[str, int]) -> "ModelSummary":
        return cls(
            name=m.name,
            architecture=m.architecture,
            model_class=m.model_class,
            file_format=m.file_format,
            num_blocks=m.num_blocks,
            hidden_size=m.hidden_size,
            mlp_width=m.mlp_width,
            vocab_size=m.vocab_size,
            num_parameters=m.num_parameters,
            dtype=m.dtype,
            revision=m.revision,
            role_counts=tuple(sorted(role_counts.items())),
            declared_base_models=tuple(m.declared_base_models or ()),
            created_at=iso(m.created_at),
            indexed_at=iso(m.indexed_at),
            source=m.source,
            status=m.status,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["role_counts"] = dict(self.role_counts)
        d["declared_base_models"] = list(self.declared_base_models)
        return d


@dataclass(frozen=True)
class TensorSummary(Serializable):
    name: str
    role: str
    block: int | None
    part: str
    shape: tuple[int, ...]
    dtype: str
    size_bytes: int
    digest: str
    mean: float | None
    std: float | None
    kurtosis: float | None
    distinct_values: int | None


@dataclass(frozen=True)
class ModelDetail:
    model: ModelSummary
    content_digest: str
    config: dict[str, Any] | None
    tensors: tuple[TensorSummary, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.model.to_dict(),
            "content_digest": self.content_digest,
            "config": self.config,
            "tensors": [t.to_dict() for t in self.tensors],
        }
