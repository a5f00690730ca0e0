"""The ``mothertree`` command: a thin typer layer over :mod:`mothertree.registry`."""

from ._app import app
from . import db, demo, hub, lineage, models, reports, serve, vectors, worker  # noqa: F401  (register commands)

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
