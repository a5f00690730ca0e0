"""The registry's connection: database URL, engine, sessions, and the folder beside it.

Every job module of the registry (indexing, resolve, queries, hub) takes a
:class:`Connection`; the :class:`~mothertree.registry.Registry` facade is one.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from . import _db
from ._schema import Model
from ._vectors import VectorStore
from .errors import ModelNotFoundError
from .settings import default_db_url, registry_home

__all__ = ["Connection"]


class Connection:
    """One database (and, beside it, the FAISS files)."""

    def __init__(self, url: str | None = None, *, upgrade: bool = True, force: bool = False) -> None:
        self.url = _db.normalise_url(url or default_db_url())
        self.engine = _db.make_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if upgrade and _db.current_revision(self.engine) != _db.head_revision():
            from ._open import refuse_foreign

            # never add tables to someone else's database (checked under the migration lock)
            _db.upgrade(self.engine, check=lambda: refuse_foreign(self.engine, force=force))
        #: FAISS indexes over the ``fingerprints`` table (checked against SQL on first use).
        self.vectors = VectorStore(self._sessions, self.home)

    @property
    def display_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    @property
    def home(self) -> Path:
        """Folder for files that live beside the database (the FAISS store).

        An SQLite registry keeps them next to its file (``x.db`` -> ``x.db.vectors/``);
        a server database keeps them in the registry home, one folder per database.
        """
        url = make_url(self.url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            p = Path(url.database)
            return p.with_name(p.name + ".vectors")
        key = f"{url.get_backend_name()}-{url.host or 'local'}-{url.port or ''}-{url.database or 'memory'}"
        return registry_home() / "vectors" / key.replace("/", "_")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any error."""
        with self._sessions() as s, s.begin():
            yield s

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def schema_revision(self) -> str | None:
        """The migration the database is at (``None`` for an empty database)."""
        return _db.current_revision(self.engine)

    def upgrade(self, revision: str = "head") -> str | None:
        return _db.upgrade(self.engine, revision)

    def downgrade(self, revision: str) -> str | None:
        return _db.downgrade(self.engine, revision)

    def model_row(self, s: Session, name: str) -> Model:
        """The ``models`` row named ``name`` (raises :class:`ModelNotFoundError`)."""
        m = s.scalar(select(Model).where(Model.name == name))
        if m is None:
            raise ModelNotFoundError(name, self.display_url)
        return m
