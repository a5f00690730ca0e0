"""Human renderings of lineage views: rich trees, Mermaid and Graphviz DOT."""

from __future__ import annotations

from typing import Any, Callable

from rich.console import Console
from rich.tree import Tree


def _label(e: dict[str, Any]) -> str:
    return (
        f"{e['relation']}, log10 p {e['p_value_log10']:.1f}, "
        f"direction {e['direction_confidence']:.2f}, {e['method']}"
    )


def edge_line(e: dict[str, Any]) -> str:
    return f"{e['parent']} -> {e['child']}  ({_label(e)})"


def rich_forest(view: dict[str, Any], mark: Callable[[dict[str, Any]], str] | None = None) -> list[Tree]:
    """One rich Tree per root; a merge child appears under each of its parents."""
    kids: dict[str, list[dict[str, Any]]] = {}
    for e in view["edges"]:
        kids.setdefault(e["parent"], []).append(e)
    trees = []

    def grow(node: Tree, name: str, seen: frozenset[str]) -> None:
        for e in sorted(kids.get(name, []), key=lambda e: e["child"]):
            if e["child"] in seen:
                continue
            suffix = f" {mark(e)}" if mark else ""
            child = node.add(f"[bold]{e['child']}[/bold]  [dim]{_label(e)}[/dim]{suffix}")
            grow(child, e["child"], seen | {e["child"]})

    for root in view["roots"]:
        t = Tree(f"[bold]{root}[/bold]")
        grow(t, root, frozenset({root}))
        trees.append(t)
    return trees


def print_view(c: Console, view: dict[str, Any], mark=None) -> None:
    for t in rich_forest(view, mark):
        c.print(t)
    for n in view.get("notes", []):
        c.print(f"[dim]{n}[/dim]")


def _ident(name: str) -> str:
    return "n_" + "".join(ch if ch.isalnum() else "_" for ch in name)


def mermaid(view: dict[str, Any]) -> str:
    lines = ["flowchart TD"]
    for m in view["models"]:
        lines.append(f'    {_ident(m["name"])}["{m["name"]}"]')
    for e in view["edges"]:
        lines.append(f'    {_ident(e["parent"])} -->|{e["relation"]}| {_ident(e["child"])}')
    return "\n".join(lines)


def dot(view: dict[str, Any]) -> str:
    lines = ["digraph lineage {", "    rankdir=TB;"]
    for m in view["models"]:
        lines.append(f'    "{m["name"]}";')
    for e in view["edges"]:
        lines.append(
            f'    "{e["parent"]}" -> "{e["child"]}" [label="{e["relation"]} ({e["direction_confidence"]:.2f})"];'
        )
    lines.append("}")
    return "\n".join(lines)


def print_plan(c: Console, plan: dict[str, Any]) -> None:
    """A resolve plan (``ResolvePlan.to_dict()``), for humans."""
    kind = "full" if plan["full"] else "incremental"
    c.print(f"Resolve plan ({kind}, k={plan['k']}, FDR alpha {plan['alpha']}): {len(plan['models'])} model(s) to resolve")
    if plan["deletes"]:
        c.print("  forget first: " + ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in plan["deletes"].items()))
    c.print(f"  {len(plan['pairs'])} pair(s) to test")
    for p in plan["pairs"]:
        c.print(f"    {p['a']} ~ {p['b']}")
    c.print(f"  {len(plan['families'])} famil(ies) that may be re-solved")
    for f in plan["families"]:
        c.print("    " + ", ".join(f))
    c.print("Dry run: nothing written. Apply it with: mothertree resolve" + (" --full" if plan["full"] else ""))
