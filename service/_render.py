"""Lineage views as Mermaid, Graphviz DOT and server-side HTML (no JavaScript needed)."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote


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


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def tree_html(view: dict[str, Any], highlight: str | None = None) -> str:
    """Nested lists, one per root; a merge child appears under each of its parents."""
    kids: dict[str, list[dict[str, Any]]] = {}
    for e in view["edges"]:
        kids.setdefault(e["parent"], []).append(e)

    def node(name: str, edge: dict[str, Any] | None, seen: frozenset[str]) -> str:
        cls = ' class="focus"' if name == highlight else ""
        label = f'<span{cls} data-model="{escape(name)}">{escape(name)}</span>'
        if edge is not None:
            label += (f' <small>{escape(edge["relation"])}, log10 p {_fmt(edge["p_value_log10"], ".1f")}, '
                      f'direction {_fmt(edge["direction_confidence"])}</small>')
        inner = "".join(
            node(e["child"], e, seen | {e["child"]})
            for e in sorted(kids.get(name, []), key=lambda e: e["child"]) if e["child"] not in seen
        )
        return f"<li>{label}{f'<ul>{inner}</ul>' if inner else ''}</li>"

    return '<ul class="tree">' + "".join(node(r, None, frozenset({r})) for r in view["roots"]) + "</ul>"


def evidence_html(view: dict[str, Any]) -> str:
    if not view["edges"]:
        return "<p>" + escape("; ".join(view.get("notes", [])) or "no parents") + "</p>"
    head = ("<tr><th>parent</th><th>child</th><th>relation</th><th>log10 p</th><th>log10 q</th>"
            "<th>direction confidence</th><th>relation confidence</th><th>method</th></tr>")
    rows = "".join(
        f"<tr><td>{escape(e['parent'])}</td><td>{escape(e['child'])}</td><td>{escape(e['relation'])}</td>"
        f"<td>{_fmt(e['p_value_log10'], '.1f')}</td><td>{_fmt(e['q_value_log10'], '.1f')}</td>"
        f"<td>{_fmt(e['direction_confidence'])}</td><td>{_fmt(e['relation_confidence'])}</td>"
        f"<td>{escape(str(e['method']))}</td></tr>"
        for e in view["edges"]
    )
    return f'<table class="evidence">{head}{rows}</table>'


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}
ul.tree,ul.tree ul{list-style:none;padding-left:1.4em;border-left:1px solid #bbb}
ul.tree li{margin:.3em 0}.focus{font-weight:bold;background:#ffe9a8}
table.evidence{border-collapse:collapse}table.evidence td,table.evidence th{border:1px solid #ccc;padding:.2em .5em}
pre{background:#f4f4f4;padding:1em;overflow:auto}
"""


def page(models: list[str], model: str | None, family: dict[str, Any] | None, ancestry: dict[str, Any] | None,
         error: str | None = None) -> str:
    options = "".join(
        f'<option value="{escape(m)}"{" selected" if m == model else ""}>{escape(m)}</option>' for m in models
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mothertree",
        f"{(' – ' + escape(model)) if model else ''}</title><style>{_STYLE}</style></head><body>",
        "<h1>mothertree</h1>",
        f'<form method="get" action="/"><label>model <select name="model">{options}</select></label> '
        '<button type="submit">show</button></form>',
    ]
    if error:
        parts.append(f'<p class="error">{escape(error)}</p>')
    if not models:
        parts.append("<p>The registry is empty. Index models with <code>mothertree index PATH</code> "
                     "or <code>POST /v1/jobs</code>.</p>")
    if model and family is not None and ancestry is not None:
        parts += [
            f'<h2>Family of {escape(model)}</h2><div id="family">{tree_html(family, model)}</div>',
            "".join(f"<p><em>{escape(n)}</em></p>" for n in family.get("notes", [])),
            f'<h2>Ancestry evidence</h2><div id="ancestry">{evidence_html(ancestry)}</div>',
            "<h2>Mermaid</h2><p>Paste into any Mermaid renderer (GitHub renders it in Markdown), or fetch "
            f'<a href="/v1/tree?family={escape(quote(model))}&amp;format=mermaid">/v1/tree?format=mermaid</a>.</p>',
            f'<pre id="mermaid">{escape(mermaid(family))}</pre>',
        ]
    parts.append('<p><a href="/docs">API documentation</a></p></body></html>')
    return "".join(parts)
