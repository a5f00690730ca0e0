"""Registry names: which name a newly indexed model gets, and which names are allowed.

The rules (README, "Names and revisions"):

* A default name is meaningful: a folder's name; for a bare weight file called
  ``model.safetensors`` / ``pytorch_model.bin`` (or a shard of one) the folder
  holding it; ``org/name`` for a Hugging Face cache repo or snapshot.
* A default name never takes over another model: when it is taken by a model
  indexed from another path with other weights, the parent folder is prefixed
  (``runB/checkpoint-500``), then the grandparent, and so on.
* A model becomes a new *revision* of an existing entry only when the user says
  so (the same name given explicitly with ``--name``) or the same source path is
  indexed again.
* Sources are stored as absolute paths, so the same folder is recognised from
  any working directory.

Names are validated: no control characters, at most :data:`MAX_NAME_LENGTH`
characters, no ``.``/``..`` segments, not an absolute path.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from ._schema import Model
from .errors import InvalidNameError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ..indexer.readers import WeightSource

__all__ = [
    "MAX_NAME_LENGTH", "absolute_path", "validate_name", "default_name", "choose_name", "is_hub_id", "hub_ids",
    "expand_model_folders",
]

#: Longest registry name accepted.
MAX_NAME_LENGTH = 256

#: File stems that say nothing about the model: the folder names it instead.
_GENERIC_STEMS = {"model", "pytorch_model", "adapter_model", "weights", "consolidated"}
_SHARD = re.compile(r"^(model|pytorch_model)-\d+-of-\d+$")


def absolute_path(path: str | os.PathLike) -> Path:
    """``path`` made absolute (``~`` expanded, ``.``/``..`` folded) without following symlinks."""
    return Path(os.path.normpath(Path(path).expanduser().absolute()))


def _printable(name: str) -> str:
    return name.encode("unicode_escape").decode("ascii")


def validate_name(name: str, *, what: str = "Model name") -> str:
    """Return ``name`` if it is an acceptable registry name, else raise :class:`InvalidNameError`.

    >>> validate_name("org/llama-7b")
    'org/llama-7b'
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidNameError(str(name), f"{what} is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(name, f"{what} has {len(name)} characters (at most {MAX_NAME_LENGTH})")
    bad = next((ch for ch in name if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")), None)
    if bad is not None:
        raise InvalidNameError(name, f"{what} '{_printable(name)}' contains the control character {bad!r}")
    if name.startswith("/") or name.startswith("\\") or re.match(r"^[A-Za-z]:[\\/]", name):
        raise InvalidNameError(name, f"{what} '{name}' is an absolute path")
    if any(part in (".", "..") for part in re.split(r"[\\/]", name)):
        raise InvalidNameError(name, f"{what} '{name}' has a '.' or '..' path segment")
    if name != name.strip():
        raise InvalidNameError(name, f"{what} '{name}' starts or ends with white space")
    return name


def _leaf_and_parents(source: "WeightSource") -> tuple[str, list[str]]:
    """The default name of ``source`` and the folder names above it (nearest first)."""
    root = Path(source.root)
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        repo = root.parent.parent
        return repo.name.removeprefix("models--").replace("--", "/"), [p.name for p in repo.parents if p.name]
    if root.is_file():
        stem = root.stem
        if stem in _GENERIC_STEMS or _SHARD.match(stem):
            folder = root.parent
            return folder.name or stem, [p.name for p in folder.parents if p.name]
        return stem, [p.name for p in root.parents if p.name]
    return root.name, [p.name for p in root.parents if p.name]


def default_name(source: "WeightSource") -> str:
    """The name ``source`` gets when nothing else is indexed (see the module rules)."""
    return _leaf_and_parents(source)[0]


def choose_name(s: "Session", source: "WeightSource", explicit: str | None, content_digest: str) -> str:
    """The registry name for ``source`` (an absolute root) with weights ``content_digest``.

    ``explicit`` (``--name``) is validated and used as given: indexing other
    weights under a taken name is how a user asks for a new revision. Without
    it, the model indexed earlier from the same path keeps its name (a new
    revision when the weights changed); otherwise the default name, or, when
    that belongs to another model, the default name with parent folders
    prefixed until it is free. A taken name holding the very same weights
    (a moved copy) is reused, as before.
    """
    if explicit is not None:
        return validate_name(explicit)
    root = str(source.root)
    same_path = s.scalar(select(Model.name).where(Model.source == root).order_by(Model.id).limit(1))
    if same_path is not None:
        return same_path
    leaf, parents = _leaf_and_parents(source)
    candidate = leaf
    for depth in range(len(parents) + 1):
        if depth:
            candidate = f"{parents[depth - 1]}/{candidate}"
        taken = s.scalar(select(Model).where(Model.name == candidate))
        if taken is None or taken.content_digest == content_digest:
            return validate_name(candidate, what="Default name")
    n = 2
    while s.scalar(select(Model.id).where(Model.name == f"{leaf}-{n}")) is not None:
        n += 1
    return validate_name(f"{leaf}-{n}", what="Default name")


# -- what a command-line argument names -------------------------------------------------
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}(@[\w./-]+)?$")


def is_hub_id(arg: str) -> bool:
    """True for ``org/name`` or ``org/name@revision`` that is not a local path.

    A local folder called ``org`` makes ``org/name`` a (mistyped) path, not a hub id.
    """
    if not _HUB_ID.match(arg):
        return False
    return not any(Path(p).expanduser().exists() for p in (arg, arg.split("@", 1)[0], arg.split("/", 1)[0]))


def hub_ids(args: list[str]) -> tuple[list[str], list[str]]:
    """Split ``index`` arguments into hub ids and local paths (anything else is a path)."""
    hub = [a for a in args if is_hub_id(a)]
    return hub, [a for a in args if a not in hub]


def expand_model_folders(paths: list[str | os.PathLike]) -> list[str | os.PathLike]:
    """Each path as given, except a folder of model folders, which becomes its model folders.

    A folder that holds no weights itself but whose sub-folders are models
    (snapshot layout, ``models--org--name`` cache repos) expands to those
    sub-folders, sorted; anything else is left for the reader to judge.
    """
    from ..indexer import open_source
    from .errors import MothertreeError

    out: list[str | os.PathLike] = []
    for p in paths:
        folder = Path(p).expanduser()
        if not folder.is_dir():
            out.append(p)
            continue
        try:
            open_source(folder)
            out.append(p)
            continue
        except (MothertreeError, OSError, ValueError):
            pass
        models = []
        for sub in sorted(x for x in folder.iterdir() if x.is_dir() and not x.name.startswith(".")):
            try:
                open_source(sub)
            except (MothertreeError, OSError, ValueError):
                continue
            models.append(str(sub))
        out.extend(models or [p])
    return out
