"""Package-wide rules: cold imports stay light, imports point one way, docs cover commands and settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules_after(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_cli_import_is_cold():
    loaded = _modules_after("import mothertree.cli")
    assert loaded.isdisjoint({"torch", "faiss", "transformers", "scipy"}), loaded


def test_lineage_knows_no_sql_files_or_faiss():
    loaded = _modules_after("import mothertree.lineage")
    assert loaded.isdisjoint({"sqlalchemy", "faiss", "alembic", "safetensors"}), loaded


# The one-way import rule is enforced module by module in tests/test_imports.py.


def test_readme_documents_every_command_and_setting():
    from typer.main import get_command

    from mothertree.cli import app
    from mothertree.registry.settings import SETTINGS

    readme = (ROOT / "README.md").read_text()
    commands = get_command(app).commands
    missing = [name for name in commands if f"mothertree {name}" not in readme and f"`{name}" not in readme]
    assert missing == []
    assert [s.name for s in SETTINGS if s.name not in readme] == []


def test_cli_reference_is_current():
    from mothertree.cli._docs import cli_reference

    assert (ROOT / "docs" / "cli.md").read_text() == cli_reference(), (
        "docs/cli.md is stale: regenerate it with python -m mothertree.cli._docs > docs/cli.md"
    )


def test_docstring_examples_run():
    import doctest
    import importlib

    modules = [
        "mothertree.indexer.roles", "mothertree.indexer.stats", "mothertree.indexer.fingerprints",
        "mothertree.lineage.relations", "mothertree.lineage.direction", "mothertree.lineage.matching",
        "mothertree.lineage.multiple", "mothertree.lineage.independence", "mothertree.lineage.robust",
        "mothertree.lineage.family", "mothertree.lineage._validation", "mothertree.serialize", "mothertree.progress",
        "mothertree.indexer.hub", "mothertree.lineage._views",
    ]
    for name in modules:
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, f"{name}: {result.failed} failing example(s)"
