"""Every mothertree exception, in one place.

This module imports only the standard library, so :mod:`mothertree.indexer`
may raise these errors without depending on the rest of the registry. Each
error also inherits the built-in exception a caller would naturally catch
(``LookupError`` for a missing model, ``ValueError`` for unreadable bytes),
and carries the fields that locate the problem. Messages say what failed,
where, and what to do next.
"""

from __future__ import annotations

__all__ = [
    "MothertreeError",
    "ModelNotFoundError",
    "UnreadableWeightsError",
    "UnsupportedFormatError",
    "UnsafePickleError",
    "RegistryError",
    "ReadOnlyQueryError",
    "NoComparableTensorsError",
    "HubError",
    "InvalidNameError",
]


class MothertreeError(Exception):
    """Base class of every error mothertree raises on purpose."""


class ModelNotFoundError(MothertreeError, LookupError):
    """A model name that is not in the registry."""

    def __init__(self, name: str, db: str | None = None, *, hint: str = "Index it with: mothertree index PATH") -> None:
        self.name = name
        self.db = db
        where = f" at {db}" if db else ""
        super().__init__(f"Model '{name}' is not in the registry{where}. {hint}")


class UnreadableWeightsError(MothertreeError, ValueError):
    """A weight file that cannot be read: truncated, corrupt, or lying about itself."""

    def __init__(self, path: object, problem: str, *, tensor: str | None = None) -> None:
        self.path = str(path)
        self.problem = problem
        self.tensor = tensor
        what = f" (tensor '{tensor}')" if tensor else ""
        super().__init__(f"{self.path}{what}: {problem}")


class UnsupportedFormatError(UnreadableWeightsError):
    """A path that holds no weights in a format mothertree reads."""


class UnsafePickleError(UnreadableWeightsError):
    """A PyTorch pickle that asks to run code; mothertree never loads those."""


class RegistryError(MothertreeError, RuntimeError):
    """The registry itself is in a state that blocks the operation."""


class ReadOnlyQueryError(MothertreeError, PermissionError):
    """An ad-hoc SQL statement that would write; ``mothertree sql`` only reads."""


class NoComparableTensorsError(MothertreeError, ValueError):
    """Two models share no tensor that an independence test can compare."""

    def __init__(self, a: str, b: str, why: str) -> None:
        self.a, self.b = a, b
        super().__init__(f"Cannot compare '{a}' with '{b}': {why}")


class HubError(MothertreeError, ConnectionError):
    """A model hub request that failed after its retries."""

    def __init__(self, repo_id: str, problem: str) -> None:
        self.repo_id = repo_id
        super().__init__(f"Hub repo '{repo_id}': {problem}")


class InvalidNameError(MothertreeError, ValueError):
    """A registry name that is refused: control characters, too long, a path escape."""

    def __init__(self, name: str, problem: str) -> None:
        self.model_id = name
        super().__init__(f"{problem}. Choose another with: mothertree index PATH --name NAME")
