"""Imports point one way: ``cli -> registry -> indexer, lineage``, checked on every module's syntax tree.

- ``lineage`` imports nothing of ours but the stdlib-only shared modules of the
  ``mothertree`` package (the vocabulary of roles and products);
- ``indexer`` imports those, and of ``registry`` only ``registry.errors``;
- ``registry`` never imports ``cli`` or ``bench``;
- nothing imports ``cli``; no module imports a private (``_name``) of another
  package, and within ``lineage`` no module reaches for another's privates.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cli", "registry", "indexer", "lineage", "bench", "mothertree")
#: What each package may import of ours (besides itself).
ALLOWED = {
    "lineage": {"mothertree"},
    "indexer": {"mothertree", "registry.errors"},
    "registry": {"mothertree", "indexer", "lineage", "migrations"},
    "bench": {"mothertree", "indexer", "lineage", "registry"},
    "cli": {"mothertree", "registry", "bench.demo"},
    "mothertree": set(),
}


def _modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


SUBPACKAGES = ("cli", "registry", "indexer", "lineage", "bench", "migrations")
#: Known exceptions, each with its reason.
REACHES_ALLOWED = {
    # The synthetic-store benchmark writes raw fingerprint rows to time FAISS at scale.
    ("bench/bench_fingerprints.py", "registry._schema"),
    ("bench/bench_fingerprints.py", "registry._candidates"),
    ("bench/bench_fingerprints.py", "registry._vectors"),
}


def _qualify(name: str) -> str:
    """``lineage.x`` for our subpackages, ``mothertree.x`` for the shared kernel."""
    return name if name.split(".")[0] in SUBPACKAGES or name.startswith("mothertree") else f"mothertree.{name}"


def _targets(path: Path, node: ast.AST) -> list[str]:
    """Our modules (or module members) that ``node`` imports, as dotted paths from the repository root."""
    if isinstance(node, ast.Import):
        return [_qualify(a.name.split(".", 1)[1]) for a in node.names if a.name.startswith("mothertree.")]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level == 0:
        if not (node.module or "").startswith("mothertree"):
            return []
        base = node.module.split(".", 1)[1] if "." in node.module else ""
        parts = [base] if base else []
    else:
        here = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
        up = here[: len(here) - (node.level - 1)]
        parts = [*up, *([node.module] if node.module else [])]
        if up[:1] == ["mothertree"]:
            parts = parts[1:]
    base = ".".join(p for p in parts if p)
    if not node.module:
        return [_qualify(f"{base}.{a.name}" if base else a.name) for a in node.names]
    return [_qualify(base)]


def _allowed(package: str, target: str) -> bool:
    head = target.split(".")[0]
    return head == package or any(target == ok or target.startswith(ok + ".") for ok in ALLOWED[package])


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package):
    bad = []
    for path, tree in _modules(package):
        if path == ROOT / "mothertree" / "__main__.py":
            continue  # ``python -m mothertree`` runs the command line
        for node in ast.walk(tree):
            for target in _targets(path, node):
                if not _allowed(package, target):
                    bad.append(f"{path.relative_to(ROOT)}: imports {target}")
    assert bad == []


def test_no_private_reaches_across_modules():
    """No module imports a private name (``_x``) defined in another module, nor another package's private module."""
    bad = []
    for package in PACKAGES:
        for path, tree in _modules(package):
            rel = str(path.relative_to(ROOT))
            for node in ast.walk(tree):
                for target in _targets(path, node):
                    head = target.split(".")[0]
                    if head != package and any(p.startswith("_") for p in target.split(".")[1:]):
                        if (rel, target) not in REACHES_ALLOWED:
                            bad.append(f"{rel}: imports {target}")
                if isinstance(node, ast.ImportFrom) and node.module:
                    for a in node.names:
                        if a.name.startswith("_") and not a.name.startswith("__"):
                            bad.append(f"{rel}: imports {a.name} from {node.module}")
    assert bad == []


#: Shared-kernel modules that drive a third-party library from inside their functions (never at import).
LAZY_THIRD_PARTY = {"threads.py": {"torch", "numpy", "scipy", "threadpoolctl"}}


def test_the_shared_kernel_is_stdlib_only():
    """Importing the kernel costs only the standard library; ``threads`` sets the libraries' threads when called."""
    for path in sorted((ROOT / "mothertree").glob("*.py")):
        tree = ast.parse(path.read_text())
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            lazy = id(node) not in top_level and LAZY_THIRD_PARTY.get(path.name, set())
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for m in mods:
                top = m.split(".")[0]
                assert top in sys.stdlib_module_names or top in ("__future__", "mothertree") or top in (lazy or ()), \
                    f"{path}: {m}"


def test_registry_has_no_import_cycle():
    """Module-level imports among ``registry`` modules form no cycle (TYPE_CHECKING imports included)."""
    import networkx as nx

    g = nx.DiGraph()
    for path, tree in _modules("registry"):
        me = path.stem
        for node in tree.body:
            blocks = [node]
            if isinstance(node, ast.If):  # if TYPE_CHECKING:
                blocks = node.body
            for n in blocks:
                if isinstance(n, ast.ImportFrom) and n.level == 1:
                    targets = [n.module] if n.module else [a.name for a in n.names]
                    for t in targets:
                        g.add_edge(me, t.split(".")[0])
    assert list(nx.simple_cycles(g)) == []


def test_the_checker_sees_violations():
    """The resolver maps relative and absolute imports to the same module paths."""
    p = ROOT / "lineage" / "x.py"
    assert _targets(p, ast.parse("from ..registry._db import x").body[0]) == ["registry._db"]
    assert _targets(p, ast.parse("from ..vocabulary import ROLES").body[0]) == ["mothertree.vocabulary"]
    assert _targets(p, ast.parse("from mothertree.indexer import y").body[0]) == ["indexer"]
    assert _targets(ROOT / "cli" / "a.py", ast.parse("from . import _render").body[0]) == ["cli._render"]
    assert not _allowed("lineage", "indexer") and not _allowed("indexer", "registry._db")
    assert _allowed("indexer", "registry.errors") and not _allowed("registry", "bench.zoo")
