"""Package-wide rules: cold imports stay light, imports point one way, docs cover commands and settings."""

from __future__ import annotations

import ast
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


def _imports(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_imports_point_one_way():
    assert _imports("lineage") == set()
    assert _imports("indexer") <= {"registry"}  # registry.errors only, checked below
    for path in (ROOT / "indexer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2 and node.module and node.module.startswith("registry"):
                assert node.module == "registry.errors", f"{path}: imports {node.module}"
    assert "cli" not in _imports("registry")


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
    ]
    for name in modules:
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, f"{name}: {result.failed} failing example(s)"
