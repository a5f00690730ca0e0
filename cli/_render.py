"""Human renderings of lineage views: rich trees, Mermaid and Graphviz DOT."""

from __future__ import annotations

from typing import Any, Callable

from rich.console import Console
from rich.tree import Tree


def _safe(text: object) -> str:
    from ._output import safe

    return safe(text)


def _plain(text: object) -> str:
    """Control characters escaped, for output that is not rich markup (Mermaid, DOT)."""
    import re

    return re.sub(r"[\x00-\x1f\x7f-\x9f]", lambda m: m.group(0).encode("unicode_escape").decode(), str(text))


def _f(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def _label(e: dict[str, Any]) -> str:
    return (
        f"{e['relation']}, log10 p {_f(e['p_value_log10'], '.1f')}, "
        f"direction {_f(e['direction_confidence'], '.2f')}, {e['method']}"
    )


def edge_line(e: dict[str, Any]) -> str:
    return f"{_safe(e['parent'])} -> {_safe(e['child'])}  ({_label(e)})"


def _parents(view: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in view["edges"]:
        out.setdefault(e["child"], []).append(e["parent"])
    return out


def rich_forest(view: dict[str, Any], mark: Callable[[dict[str, Any]], str] | None = None) -> list[Tree]:
    """One rich Tree per root; a merge child appears under each of its parents."""
    kids: dict[str, list[dict[str, Any]]] = {}
    for e in view["edges"]:
        kids.setdefault(e["parent"], []).append(e)
    parents = _parents(view)
    trees = []

    def grow(node: Tree, name: str, seen: frozenset[str]) -> None:
        for e in sorted(kids.get(name, []), key=lambda e: e["child"]):
            if e["child"] in seen:
                continue
            suffix = f" {mark(e)}" if mark else ""
            ps = parents.get(e["child"], [])
            if len(ps) > 1:  # a merge: listed under each parent, and says so
                others = ", ".join(_safe(p) for p in sorted(ps) if p != name)
                suffix += f"  [italic]({len(ps)} parents; also under {others})[/italic]"
            child = node.add(f"[bold]{_safe(e['child'])}[/bold]  [dim]{_label(e)}[/dim]{suffix}")
            grow(child, e["child"], seen | {e["child"]})

    for root in view["roots"]:
        t = Tree(f"[bold]{_safe(root)}[/bold]")
        grow(t, root, frozenset({root}))
        trees.append(t)
    return trees


def print_view(c: Console, view: dict[str, Any], mark=None) -> None:
    if not view["models"] and view.get("model") is None:
        c.print("The registry has no models yet. Index some with: mothertree index PATH, then: mothertree resolve")
        return
    if not view["edges"] and view.get("model") is None:
        c.print(f"{len(view['models'])} model(s), no lineage edges yet. Find them with: mothertree resolve")
        return
    for t in rich_forest(view, mark):
        c.print(t)
    for n in view.get("notes", []):
        c.print(f"[dim]{_safe(n)}[/dim]")


def _ident(name: str) -> str:
    return "n_" + "".join(ch if ch.isalnum() else "_" for ch in name)


def mermaid(view: dict[str, Any]) -> str:
    lines = ["flowchart TD"]
    for m in view["models"]:
        label = _plain(m["name"]).replace('"', "#quot;")
        lines.append(f'    {_ident(m["name"])}["{label}"]')
    for e in view["edges"]:
        lines.append(f'    {_ident(e["parent"])} -->|{e["relation"]}| {_ident(e["child"])}')
    return "\n".join(lines)


def dot(view: dict[str, Any]) -> str:
    lines = ["digraph lineage {", "    rankdir=TB;"]

    def q(name: str) -> str:
        return '"' + _plain(name).replace("\\", "\\\\").replace('"', '\\"') + '"'

    for m in view["models"]:
        lines.append(f'    {q(m["name"])};')
    for e in view["edges"]:
        lines.append(
            f'    {q(e["parent"])} -> {q(e["child"])} [label="{e["relation"]} ({e["direction_confidence"]:.2f})"];'
        )
    lines.append("}")
    return "\n".join(lines)


# -- tables that stay readable at 80 columns ------------------------------------
def fit_table(
    console: Console,
    columns: list[tuple[str, int]],
    rows: list[list[str]],
    *,
    keep: int = 0,
    title: str | None = None,
):
    """A rich Table of ``rows`` that fits ``console.width`` without truncating column ``keep``.

    ``columns`` are ``(header, priority)``; while the table is wider than the
    console, the column with the lowest priority (never ``keep``) is dropped.
    Column ``keep`` (the name) is given its full width and never cut; the
    others fold rather than end in an ellipsis.
    """
    from rich.table import Table

    from ._output import safe

    shown = list(range(len(columns)))

    def natural(i: int) -> int:
        return max([len(columns[i][0])] + [len(r[i]) for r in rows])

    def width(idx: list[int]) -> int:
        return sum(natural(i) for i in idx) + 3 * len(idx) + 1

    while width(shown) > console.width and len(shown) > 1:
        droppable = [i for i in shown if i != keep]
        if not droppable:
            break
        shown.remove(min(droppable, key=lambda i: columns[i][1]))
    t = Table(title=title)
    for i in shown:
        if i == keep:
            t.add_column(columns[i][0], no_wrap=True, min_width=natural(i), overflow="fold")
        else:
            t.add_column(columns[i][0], overflow="fold")
    for r in rows:
        t.add_row(*(safe(r[i]) for i in shown))
    return t


def number(x: object, digits: int = 4) -> str:
    """A float for display: ``digits`` significant digits; other values as they are."""
    if isinstance(x, float):
        if x != x:
            return "nan"
        return f"{x:.{digits}g}"
    return "" if x is None else str(x)


def print_plan(c: Console, plan: dict[str, Any]) -> None:
    """A resolve plan (``ResolvePlan.to_dict()``), for humans."""
    kind = "full" if plan["full"] else "incremental"
    c.print(f"Resolve plan ({kind}, k={plan['k']}, Holm alpha {plan['alpha']}): {len(plan['models'])} model(s) to resolve")
    if plan["deletes"]:
        c.print("  forget first: " + ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in plan["deletes"].items()))
    c.print(f"  {len(plan['pairs'])} pair(s) to test")
    for p in plan["pairs"]:
        c.print(f"    {p['a']} ~ {p['b']}")
    c.print(f"  {len(plan['families'])} famil(ies) that may be re-solved")
    for f in plan["families"]:
        c.print("    " + ", ".join(f))
    c.print("Dry run: nothing written. Apply it with: mothertree resolve" + (" --full" if plan["full"] else ""))
