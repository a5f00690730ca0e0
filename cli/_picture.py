"""Pictures of a lineage view without Graphviz: a layered layout, drawn as SVG (text) or PNG (Pillow).

Each model sits on the layer of its longest path from a root; inside a layer,
models are ordered by the mean position of their parents (then by name), so
edges mostly run straight down. A merge child has one arrow per parent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

__all__ = ["Layout", "layout", "svg", "png"]

_CHAR_W, _BOX_H, _LAYER_H, _GAP, _MARGIN = 7.4, 28, 96, 24, 20
_FONT = 12


def _clean(name: str) -> str:
    """Control characters shown as escapes (they must never reach a picture or a terminal raw)."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", lambda m: m.group(0).encode("unicode_escape").decode(), name)


@dataclass(frozen=True)
class Layout:
    """Boxes ``name -> (x, y, w, h)`` (top-left corner) and edges with their labels, in pixels."""

    width: int
    height: int
    boxes: dict[str, tuple[float, float, float, float]]
    edges: tuple[tuple[str, str, str], ...]


def layout(view: dict[str, Any]) -> Layout:
    """Place every model of ``view`` (a ``LineageView.to_dict()``) on layers."""
    names = [m["name"] for m in view["models"]]
    parents: dict[str, list[str]] = {n: [] for n in names}
    edges = []
    for e in view["edges"]:
        parents.setdefault(e["child"], []).append(e["parent"])
        parents.setdefault(e["parent"], [])
        edges.append((e["parent"], e["child"], f"{e['relation']} ({e['direction_confidence']:.2f})"))
    depth: dict[str, int] = {}

    def level(n: str, stack: frozenset[str] = frozenset()) -> int:
        if n not in depth:
            ps = [p for p in parents.get(n, []) if p not in stack]
            depth[n] = 1 + max((level(p, stack | {n}) for p in ps), default=-1)
        return depth[n]

    for n in parents:
        level(n)
    layers: dict[int, list[str]] = {}
    for n in sorted(parents):
        layers.setdefault(depth[n], []).append(n)
    width_of = {n: max(60.0, len(_clean(n)) * _CHAR_W + 16) for n in parents}
    boxes: dict[str, tuple[float, float, float, float]] = {}
    total_w = 0.0
    for d in sorted(layers):
        row = layers[d]
        if d > 0:  # barycentre of the parents already placed
            def centre(n: str) -> float:
                xs = [boxes[p][0] + boxes[p][2] / 2 for p in parents[n] if p in boxes]
                return sum(xs) / len(xs) if xs else float("inf")

            row.sort(key=lambda n: (centre(n), n))
        x = _MARGIN
        y = _MARGIN + d * _LAYER_H
        for n in row:
            boxes[n] = (x, y, width_of[n], _BOX_H)
            x += width_of[n] + _GAP
        total_w = max(total_w, x - _GAP + _MARGIN)
    height = _MARGIN * 2 + (max(layers) if layers else 0) * _LAYER_H + _BOX_H
    return Layout(int(max(total_w, 200)), int(height), boxes, tuple(edges))


def _ends(lay: Layout, a: str, b: str) -> tuple[float, float, float, float]:
    ax, ay, aw, ah = lay.boxes[a]
    bx, by, bw, _ = lay.boxes[b]
    return ax + aw / 2, ay + ah, bx + bw / 2, by


def svg(view: dict[str, Any]) -> str:
    """An SVG document of ``view``'s models and edges."""
    lay = layout(view)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{lay.width}" height="{lay.height}" '
        f'viewBox="0 0 {lay.width} {lay.height}" font-family="DejaVu Sans Mono, monospace" font-size="{_FONT}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    for a, b, label in lay.edges:
        x1, y1, x2, y2 = _ends(lay, a, b)
        out.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#555" '
                   'stroke-width="1.4" marker-end="url(#arrow)"/>')
        out.append(f'<text x="{(x1 + x2) / 2 + 4:.1f}" y="{(y1 + y2) / 2:.1f}" fill="#666" font-size="10">'
                   f"{escape(label)}</text>")
    for name, (x, y, w, h) in lay.boxes.items():
        out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h}" rx="5" fill="#eef3fb" stroke="#35a"/>')
        out.append(f'<text x="{x + w / 2:.1f}" y="{y + h / 2 + 4:.1f}" text-anchor="middle">{escape(_clean(name))}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def png(view: dict[str, Any]) -> bytes:
    """A PNG image of ``view`` (drawn with Pillow)."""
    import io
    import math

    from PIL import Image, ImageDraw, ImageFont

    lay = layout(view)
    scale = 2  # crisp on high-density screens
    img = Image.new("RGB", (lay.width * scale, lay.height * scale), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=_FONT * scale)
    small = ImageFont.load_default(size=10 * scale)
    for a, b, label in lay.edges:
        x1, y1, x2, y2 = (v * scale for v in _ends(lay, a, b))
        draw.line((x1, y1, x2, y2), fill="#555555", width=2 * scale // 2 + 1)
        ang = math.atan2(y2 - y1, x2 - x1)
        size = 7 * scale
        left = (x2 - size * math.cos(ang - 0.4), y2 - size * math.sin(ang - 0.4))
        right = (x2 - size * math.cos(ang + 0.4), y2 - size * math.sin(ang + 0.4))
        draw.polygon([(x2, y2), left, right], fill="#555555")
        draw.text(((x1 + x2) / 2 + 4 * scale, (y1 + y2) / 2 - 6 * scale), label, fill="#666666", font=small)
    for name, (x, y, w, h) in lay.boxes.items():
        box = (x * scale, y * scale, (x + w) * scale, (y + h) * scale)
        draw.rounded_rectangle(box, radius=5 * scale, fill="#eef3fb", outline="#3355aa", width=scale)
        draw.text(((x + w / 2) * scale, (y + h / 2) * scale), _clean(name), fill="black", font=font, anchor="mm")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
