"""Weight readers: find a model's weight files and read them lazily.

A *model* is a folder in Hugging Face snapshot layout (``config.json`` plus
``model.safetensors``, safetensors shards with ``model.safetensors.index.json``,
or ``pytorch_model.bin`` / its shards), a Hugging Face cache repo folder
(``models--org--name``, resolved to the snapshot ``refs/main`` points at), or a
single ``.safetensors`` / ``.bin`` file. Every format offers the same two verbs:
:func:`read_header` (no tensor bytes) and :func:`iter_tensors` (one at a time).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ...registry.errors import UnreadableWeightsError, UnsupportedFormatError
from . import gguf as _gguf
from . import gptq as _gptq
from . import onnx as _onnx
from . import peft as _peft
from . import safetensors as _st
from . import torch_bin as _bin
from ._common import SAFETENSORS_DTYPES, TensorInfo

if TYPE_CHECKING:
    import torch

__all__ = [
    "WeightSource", "TensorInfo", "SAFETENSORS_DTYPES", "open_source", "read_header", "iter_tensors", "model_paths", "contained_path",
]

_INDEXES = {
    "model.safetensors.index.json": "safetensors",
    "pytorch_model.bin.index.json": "bin",
}
_SINGLES = {"model.safetensors": "safetensors", "pytorch_model.bin": "bin"}


@dataclass(frozen=True)
class WeightSource:
    """Where a model's weights are: its folder, files, format and config."""

    root: str
    format: str  # "safetensors" | "bin" | "gguf" | "peft" | "onnx" | "gptq" (GPTQ and AWQ)
    files: tuple[str, ...]
    sharded: bool
    config: dict[str, Any] | None

    @property
    def default_name(self) -> str:
        """The folder's name, or the file's stem for a single file."""
        p = Path(self.root)
        if p.is_file() and self.format == "gguf":
            return _gguf_file_name(p)
        if p.is_file():
            return p.stem
        if p.parent.name == "snapshots" and p.parent.parent.name.startswith("models--"):
            return p.parent.parent.name.removeprefix("models--").replace("--", "/")
        return p.name

    @property
    def size_bytes(self) -> int:
        return sum(os.path.getsize(f) for f in self.files)


def _allowed_roots(folder: Path) -> tuple[Path, ...]:
    """Where a model folder's files may really live: the folder, and for a
    Hugging Face cache snapshot (``models--x/snapshots/<rev>``) the repo's ``blobs/``."""
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        roots.append((folder.parent.parent / "blobs").resolve())
    return tuple(roots)


def contained_path(folder: Path, name: str, *, what: str) -> Path:
    """``folder / name``, refused unless it stays inside ``folder`` (symlinks followed).

    ``name`` must be relative without ``..`` parts, and the file it resolves to
    must lie inside the folder or, for a cache snapshot, inside the repo's ``blobs/``.

    Raises
    ------
    UnreadableWeightsError
        For an absolute name, a ``..`` escape or a symlink out of the folder.
    """
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or "\\" in name or "\0" in name:
        raise UnreadableWeightsError(
            folder, f"{what} {name!r} is not a plain relative path inside the model folder: refused"
        )
    target = folder / name
    real = target.resolve()
    if not any(real == r or r in real.parents for r in _allowed_roots(folder)):
        raise UnreadableWeightsError(
            target, f"{what} resolves to {real}, outside the model folder {folder}: refused"
        )
    return target


def _resolve_cache_repo(path: Path) -> Path:
    """``models--org--name`` -> the snapshot its ``refs/main`` names (or the only one)."""
    snapshots = path / "snapshots"
    ref = path / "refs" / "main"
    if ref.is_file():
        rev = ref.read_text().strip()
        if not rev or "/" in rev or "\\" in rev or rev in (".", "..") or any(ord(c) < 32 for c in rev):
            raise UnreadableWeightsError(
                ref, f"refs/main holds {rev[:80]!r}, not a revision name: refused (it must name a snapshot)"
            )
        snap = snapshots / rev
        if snap.is_dir():
            if snap.resolve().parent != snapshots.resolve():
                raise UnreadableWeightsError(ref, f"snapshot {rev} resolves outside {snapshots}: refused")
            return snap
    found = sorted(p for p in snapshots.iterdir() if p.is_dir()) if snapshots.is_dir() else []
    if len(found) == 1:
        return found[0]
    raise UnsupportedFormatError(
        path, f"Hugging Face cache folder with {len(found)} snapshots and no refs/main; pass a snapshot folder"
    )


def _read_config(folder: Path) -> dict[str, Any] | None:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableWeightsError(cfg, f"config.json is not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else None


def _shards(index_path: Path) -> tuple[str, ...]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UnreadableWeightsError(index_path, f"shard index has no readable weight_map ({exc})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise UnreadableWeightsError(index_path, "weight_map is not a mapping of tensor names to shard files")
    files = []
    for shard in dict.fromkeys(weight_map.values()):
        f = contained_path(index_path.parent, shard, what=f"shard listed in {index_path.name}")
        if not f.is_file():
            raise UnreadableWeightsError(
                f, f"shard listed in {index_path.name} is missing: re-download the model or its shard"
            )
        files.append(str(f))
    return tuple(files)


# --- GGUF: one model per file (or per split set); a folder of several is several models ----
def _gguf_models(folder: Path) -> list[Path]:
    """The first file of each GGUF model in a folder (split sets count once)."""
    seen, out = set(), []
    for f in sorted(folder.glob("*.gguf")):
        stem = _gguf.model_stem(f)
        if stem not in seen:
            seen.add(stem)
            out.append(f)
    return out


def _gguf_file_name(p: Path) -> str:
    """``folder/stem`` when the folder holds several GGUF models (unique and stable), else the stem."""
    stem = _gguf.model_stem(p)
    return f"{p.parent.name}/{stem}" if len(_gguf_models(p.parent)) > 1 else stem


def _gguf_source(root: Path, first: Path) -> WeightSource:
    files = _gguf.split_files(first)
    meta = _gguf.read_metadata(files[0])
    names = [n for f in files for n in _gguf.read_header(f)]
    return WeightSource(str(root), "gguf", files, len(files) > 1, _gguf.config_from_metadata(meta, names))


def model_paths(path: str | os.PathLike) -> list[str]:
    """The models a path holds: itself, or each GGUF file of a folder of several quantizations."""
    p = Path(path).expanduser()
    if p.is_dir() and not any((p / f).is_file() for f in (*_INDEXES, *_SINGLES)):
        ggufs = _gguf_models(p)
        if len(ggufs) > 1:
            return [str(f) for f in ggufs]
    return [str(path)]


def open_source(path: str | os.PathLike) -> WeightSource:
    """Locate a model's weight files and config.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    UnsupportedFormatError
        When it holds no weights in a readable format (an empty folder).
    UnreadableWeightsError
        When a shard index is broken or names a missing shard.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if p.is_file():
        source = _file_source(p)
        if source is not None:
            return source
        p = p.parent  # a PEFT adapter's weight file stands for its folder
    if p.name.startswith("models--") and (p / "snapshots").is_dir():
        p = _resolve_cache_repo(p)
    return _folder_source(p)


def _file_source(p: Path) -> WeightSource | None:
    """The source of a single weight file; ``None`` for a PEFT adapter's file, which is read with its folder."""
    if p.suffix == ".gguf":
        return _gguf_source(p, p)
    if p.suffix == ".onnx":
        return WeightSource(str(p), "onnx", (str(p),), False, _read_config(p.parent))
    if p.name in _peft.ADAPTER_FILES and (p.parent / _peft.ADAPTER_CONFIG).is_file():
        return None
    fmt = "safetensors" if p.suffix == ".safetensors" else "bin" if p.suffix in (".bin", ".pt", ".pth") else None
    if fmt is None:
        raise UnsupportedFormatError(p, "not a weight file (expected .safetensors, .bin, .gguf or .onnx)")
    return WeightSource(str(p), fmt, (str(p),), False, _read_config(p.parent))


def _folder_source(p: Path) -> WeightSource:
    """The source of a model folder, trying the layouts from the most to the least explicit.

    A shard index or a standard file name says what the model is; loose files
    are a guess, so they come after, and a folder of several GGUF models is
    refused here (:func:`model_paths` splits it first).
    """
    config = _read_config(p)
    source = _snapshot_source(p, config) or _peft_source(p)
    if source is not None:
        return source
    loose = sorted(str(contained_path(p, f.name, what="weight file")) for f in p.glob("*.safetensors"))
    if loose:
        return WeightSource(str(p), _packed_format("safetensors", config), tuple(loose), len(loose) > 1, config)
    onnxs = sorted(p.glob("*.onnx"))
    if onnxs:
        return _onnx_folder_source(p, onnxs, config)
    ggufs = _gguf_models(p)
    if len(ggufs) == 1:
        return _gguf_source(p, ggufs[0])
    if ggufs:
        raise UnsupportedFormatError(
            p, f"holds {len(ggufs)} GGUF models ({', '.join(f.name for f in ggufs[:3])}...): "
            "index the folder with `mothertree index` (one model per file) or pass one file",
        )
    raise UnsupportedFormatError(
        p,
        "no weights found (looked for model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin, pytorch_model.bin.index.json, *.safetensors, *.gguf, *.onnx, adapter_config.json)",
    )


def _packed_format(fmt: str, config: dict[str, Any] | None) -> str:
    """``gptq`` for safetensors whose config declares GPTQ/AWQ packing, else ``fmt``."""
    return "gptq" if fmt == "safetensors" and _gptq.quantization_config(config) else fmt


def _snapshot_source(p: Path, config: dict[str, Any] | None) -> WeightSource | None:
    """A Hugging Face snapshot's weights: a shard index, else ``model.safetensors`` / ``pytorch_model.bin``."""
    for index, fmt in _INDEXES.items():
        if (p / index).is_file():
            contained_path(p, index, what="shard index")
            return WeightSource(str(p), _packed_format(fmt, config), _shards(p / index), True, config)
    for single, fmt in _SINGLES.items():
        if (p / single).is_file():
            return WeightSource(str(p), _packed_format(fmt, config),
                                (str(contained_path(p, single, what="weight file")),), False, config)
    return None


def _peft_source(p: Path) -> WeightSource | None:
    """A PEFT adapter folder, indexed as a model of kind ``adapter`` (its effective update); else ``None``."""
    if not (p / _peft.ADAPTER_CONFIG).is_file():
        return None
    for f in _peft.ADAPTER_FILES:
        if (p / f).is_file():
            return WeightSource(str(p), "peft", (str(p / f),), False, _peft.read_adapter_config(p))
    raise UnreadableWeightsError(
        p / _peft.ADAPTER_CONFIG, f"adapter config without weights: expected {' or '.join(_peft.ADAPTER_FILES)}"
    )


def _onnx_folder_source(p: Path, onnxs: list[Path], config: dict[str, Any] | None) -> WeightSource:
    """The main graph of a folder of ONNX files.

    optimum's decoder exports hold several graphs over the same weights: take
    the main one, and refuse to guess among unnamed ones.
    """
    preferred = [p / n for n in ("model.onnx", "decoder_model_merged.onnx", "decoder_model.onnx") if (p / n).is_file()]
    main = preferred[0] if preferred else onnxs[0]
    if len(onnxs) > 1 and not preferred:
        raise UnsupportedFormatError(
            p, f"holds {len(onnxs)} ONNX files and no model.onnx or decoder_model(_merged).onnx: pass one file"
        )
    return WeightSource(str(p), "onnx", (str(main),), False, config)


def _module(fmt: str):
    return {"safetensors": _st, "bin": _bin, "gguf": _gguf, "peft": _peft, "onnx": _onnx, "gptq": _gptq}[fmt]


def read_header(source: WeightSource) -> dict[str, TensorInfo]:
    """Every tensor of the model with dtype, shape and file, validated, no tensor bytes read."""
    reader = _module(source.format)
    out: dict[str, TensorInfo] = {}
    for f in source.files:
        for name, info in reader.read_header(f).items():
            if name in out:
                raise UnreadableWeightsError(f, f"tensor also stored in {out[name].file}", tensor=name)
            out[name] = info
    if not out:
        raise UnreadableWeightsError(source.root, "the weight files hold no tensors")
    return out


def iter_tensors(
    source: WeightSource, infos: dict[str, TensorInfo] | None = None
) -> Iterator[tuple[str, "torch.Tensor"]]:
    """Yield ``(name, tensor)`` for every tensor, file by file, one tensor in memory at a time."""
    infos = infos if infos is not None else read_header(source)
    by_file: dict[str, list[str]] = {}
    for info in infos.values():
        by_file.setdefault(info.file, []).append(info.name)
    reader = _module(source.format)
    for f, names in by_file.items():
        yield from reader.iter_tensors(f, names)
