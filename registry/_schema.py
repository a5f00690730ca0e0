"""The lineage database schema as typed SQLAlchemy 2 ORM classes.

The tables are created only by the Alembic migrations in ``migrations/``;
these classes describe them for queries. SQL is the source of truth for
everything, FAISS files included.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Model(Base):
    """One indexed model (its current revision)."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(512), unique=True)
    source: Mapped[str] = mapped_column(Text)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    file_format: Mapped[str] = mapped_column(String(32))
    family: Mapped[str] = mapped_column(String(64))
    architecture: Mapped[str | None] = mapped_column(String(128))
    model_type: Mapped[str | None] = mapped_column(String(64))
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    num_blocks: Mapped[int | None] = mapped_column(Integer)
    hidden_size: Mapped[int | None] = mapped_column(Integer)
    mlp_width: Mapped[int | None] = mapped_column(Integer)
    vocab_size: Mapped[int | None] = mapped_column(Integer)
    num_parameters: Mapped[int] = mapped_column(BigInteger)
    dtype: Mapped[str | None] = mapped_column(String(32))
    content_digest: Mapped[str] = mapped_column(String(64), index=True)
    declared_base_models: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(32), default="indexed")

    tensors: Mapped[list[Tensor]] = relationship(
        back_populates="model", cascade="all, delete-orphan", passive_deletes=True
    )
    revisions: Mapped[list[ModelRevision]] = relationship(
        back_populates="model", cascade="all, delete-orphan", passive_deletes=True
    )


class Tensor(Base):
    """One stored parameter of a model, with its role and weight statistics."""

    __tablename__ = "tensors"
    __table_args__ = (
        UniqueConstraint("model_id", "name"),
        Index("ix_tensors_model_role", "model_id", "role"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(512))
    role: Mapped[str] = mapped_column(String(32))
    block: Mapped[int | None] = mapped_column(Integer)
    part: Mapped[str] = mapped_column(String(16))
    shape: Mapped[list[int]] = mapped_column(JSON)
    dtype: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    mean: Mapped[float | None] = mapped_column(Float)
    std: Mapped[float | None] = mapped_column(Float)
    kurtosis: Mapped[float | None] = mapped_column(Float)
    distinct_values: Mapped[int | None] = mapped_column(Integer)
    sample_size: Mapped[int | None] = mapped_column(Integer)

    model: Mapped[Model] = relationship(back_populates="tensors")


class ModelRevision(Base):
    """Every content digest a model name has had, oldest first."""

    __tablename__ = "model_revisions"
    __table_args__ = (UniqueConstraint("model_id", "revision"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(Integer)
    content_digest: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(Text)
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    model: Mapped[Model] = relationship(back_populates="revisions")
