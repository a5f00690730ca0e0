"""Shared typer options, so every command spells them the same way."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
DbOpt = Annotated[
    Optional[str],
    typer.Option("--db", help="Database URL or SQLite path (default: MOTHERTREE_DB, else the registry home)."),
]
ModelArg = Annotated[str, typer.Argument(help="Model name in the registry.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="Where fingerprints are computed: auto, cpu or cuda.")]
