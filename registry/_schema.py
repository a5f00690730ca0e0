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
    Boolean,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


#: Python ``None`` stored as SQL NULL rather than the JSON text ``null``, so
#: ``IS NULL`` and reports see a missing value as missing.
_NullableJSON = JSON(none_as_null=True)


class Model(Base):
    """One indexed model (its current revision)."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(512), unique=True)
    source: Mapped[str] = mapped_column(Text)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    file_format: Mapped[str] = mapped_column(String(32))
    #: Role-map architecture (``llama``, ``gpt2``, ``bert``, ..., ``unknown``); lineage families are ``family_members``.
    architecture: Mapped[str] = mapped_column(String(64))
    #: The transformers class ``config.json`` names (``LlamaForCausalLM``), when it names one.
    model_class: Mapped[str | None] = mapped_column(String(128))
    model_type: Mapped[str | None] = mapped_column(String(64))
    config: Mapped[dict[str, Any] | None] = mapped_column(_NullableJSON)
    num_blocks: Mapped[int | None] = mapped_column(Integer)
    hidden_size: Mapped[int | None] = mapped_column(Integer)
    mlp_width: Mapped[int | None] = mapped_column(Integer)
    vocab_size: Mapped[int | None] = mapped_column(Integer)
    num_parameters: Mapped[int] = mapped_column(BigInteger)
    dtype: Mapped[str | None] = mapped_column(String(32))
    content_digest: Mapped[str] = mapped_column(String(64), index=True)
    declared_base_models: Mapped[list[str] | None] = mapped_column(_NullableJSON)
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(32), default="indexed")
    #: When ``resolve`` last placed this model in the lineage graph (None: not yet).
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Hub repository this model was indexed from (None for local folders).
    repo_id: Mapped[str | None] = mapped_column(String(256), index=True)
    #: Commit sha of the hub revision indexed; a crawl skips the repo while it is unchanged.
    hub_sha: Mapped[str | None] = mapped_column(String(64))
    hub_last_modified: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The card's ``base_model_relation`` (adapter, merge, quantized, finetune), as declared.
    declared_relation: Mapped[str | None] = mapped_column(String(32))

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
    #: Judged while indexing (identity weight matrices only; None: not judged): False when the
    #: tensor can carry no evidence of lineage, and tests leave it out (``lineage.degenerate_reason``).
    informative: Mapped[bool | None] = mapped_column(Boolean)
    degenerate_reason: Mapped[str | None] = mapped_column(Text)

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


class PairTest(Base):
    """One independence test between two models (``a_id < b_id``), dependent or not.

    Every tested pair is kept, not just the rejections: family-wise error control
    (Holm) needs the whole set of p-values the registry computed.
    """

    __tablename__ = "pair_tests"
    __table_args__ = (UniqueConstraint("a_id", "b_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    a_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    b_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(32))
    statistic: Mapped[float | None] = mapped_column(Float)
    p_value_log10: Mapped[float] = mapped_column(Float)
    q_value_log10: Mapped[float | None] = mapped_column(Float)
    dependent: Mapped[bool] = mapped_column(Boolean)
    details: Mapped[dict[str, Any] | None] = mapped_column(_NullableJSON)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Edge(Base):
    """A confirmed, typed, directed lineage edge with its evidence."""

    __tablename__ = "edges"
    __table_args__ = (UniqueConstraint("parent_id", "child_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    child_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    relation: Mapped[str] = mapped_column(String(32))
    relation_confidence: Mapped[float | None] = mapped_column(Float)
    direction_confidence: Mapped[float] = mapped_column(Float)
    p_value_log10: Mapped[float] = mapped_column(Float)
    q_value_log10: Mapped[float | None] = mapped_column(Float)
    statistic: Mapped[float | None] = mapped_column(Float)
    method: Mapped[str] = mapped_column(String(32))
    block_map: Mapped[list[list[int]] | None] = mapped_column(_NullableJSON)
    evidence: Mapped[dict[str, Any] | None] = mapped_column(_NullableJSON)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FamilyMember(Base):
    """Which family (connected component of confirmed dependence) a model belongs to."""

    __tablename__ = "family_members"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    family_id: Mapped[int] = mapped_column(Integer, index=True)
    is_root: Mapped[bool] = mapped_column(Boolean, default=False)


class ResolutionRun(Base):
    """One ``resolve`` run: its settings and what it did."""

    __tablename__ = "resolution_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    full: Mapped[bool] = mapped_column(Boolean)
    alpha: Mapped[float] = mapped_column(Float)
    pairs_tested: Mapped[int] = mapped_column(Integer, default=0)
    edges: Mapped[int] = mapped_column(Integer, default=0)
    families: Mapped[int] = mapped_column(Integer, default=0)


class Fingerprint(Base):
    """One fingerprint vector: a model's (``level="model"``) or one layer's.

    The vectors live here as float32 bytes so that the FAISS files beside
    the database can always be rebuilt from SQL; the row id is the FAISS id.
    Ids are never reused (``AUTOINCREMENT`` on SQLite, a sequence on
    PostgreSQL), so an index file whose id set equals the table's holds
    exactly the table's vectors.
    """

    __tablename__ = "fingerprints"
    __table_args__ = (
        Index("ix_fingerprints_search", "kind", "level", "dim"),
        Index("ix_fingerprints_model", "model_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    level: Mapped[str] = mapped_column(String(8))
    role: Mapped[str | None] = mapped_column(String(32))
    block: Mapped[int | None] = mapped_column(Integer)
    shape: Mapped[list[int] | None] = mapped_column(_NullableJSON)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class HubRepo(Base):
    """One hub repository the registry tried to index, and how that went.

    A crawl skips a repo whose ``sha`` is unchanged and whose ``status`` is
    ``indexed``, ``lite`` or ``unsupported``; a ``failed`` repo is tried again on the next run.
    ``attempts`` counts tries (retries included) for the current ``sha``.
    """

    __tablename__ = "hub_repos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo_id: Mapped[str] = mapped_column(String(256), unique=True)
    sha: Mapped[str | None] = mapped_column(String(64))
    last_modified: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    indexed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lite: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Bytes fetched from the hub for this index (weights, headers, config, card).
    bytes_transferred: Mapped[int | None] = mapped_column(BigInteger)
    #: Total size of the repo's weight files, for comparison with ``bytes_transferred``.
    file_size: Mapped[int | None] = mapped_column(BigInteger)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))


class CrawlCursor(Base):
    """Where a hub crawl (one author/search/filter query) stands.

    ``watermark`` is the newest ``lastModified`` below which every listed repo
    has been handled; it only moves when a crawl finishes the listing, so an
    interrupted crawl starts over from the old watermark and skips, by sha,
    the repos it already indexed.
    """

    __tablename__ = "crawl_cursors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    query_key: Mapped[str] = mapped_column(String(512), unique=True)
    query: Mapped[dict[str, Any]] = mapped_column(JSON)
    watermark: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    repos_listed: Mapped[int] = mapped_column(Integer, default=0)
    repos_indexed: Mapped[int] = mapped_column(Integer, default=0)
    repos_failed: Mapped[int] = mapped_column(Integer, default=0)


class Job(Base):
    """One durable unit of work for ``mothertree worker``: index and place a path or a hub revision.

    ``status`` goes ``queued`` -> ``running`` -> ``done`` or ``failed``. A
    running job whose ``lease_expires_at`` has passed belongs to a dead worker
    and may be claimed again; ``attempts`` counts claims, and a job that has
    used ``max_attempts`` stops as ``failed`` with its last ``error`` kept.
    ``dedup_key`` (``hub:REPO@SHA``) makes a webhook delivered twice one job.
    """

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(1024))
    revision: Mapped[str | None] = mapped_column(String(64))
    dedup_key: Mapped[str | None] = mapped_column(String(1100), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(_NullableJSON)
    worker: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
