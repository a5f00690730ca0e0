"""The one model-card parser: ``base_model`` and ``base_model_relation`` from a README's YAML header.

A malformed card is metadata noise, never an indexing failure: :func:`read_model_card`
returns what it could read and says why it read nothing in ``problem``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ModelCardInfo", "read_model_card", "declared_in"]


@dataclass(frozen=True)
class ModelCardInfo:
    """What a card declares. ``problem`` is set (and nothing declared) when the card cannot be read."""

    base_models: tuple[str, ...] = ()
    relation: str | None = None
    problem: str | None = None


def declared_in(card: dict[str, Any]) -> ModelCardInfo:
    """The declarations of a card's parsed YAML header (also the hub API's ``cardData``)."""
    base = card.get("base_model")
    bases = (base,) if isinstance(base, str) else tuple(str(b) for b in base) if isinstance(base, list) else ()
    relation = card.get("base_model_relation")
    return ModelCardInfo(bases, relation if isinstance(relation, str) else None)


def read_model_card(folder: str | Path) -> ModelCardInfo:
    """Read ``folder/README.md`` when there is one (nothing declared when there is none)."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return ModelCardInfo()
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(readme).data.to_dict()
    except Exception as exc:  # YAML, encoding and validation errors all mean "no usable card"
        first = (str(exc).strip().splitlines() or [""])[0]
        return ModelCardInfo(problem=f"model card {readme} unreadable, declared base ignored ({type(exc).__name__}: {first})")
    return declared_in(data)
