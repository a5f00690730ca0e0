"""PEFT (LoRA) adapter reader: the effective weight update per target module.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors``
(or ``adapter_model.bin``). What it changes in its base is, per target module,
``delta = scale * B @ A`` with ``scale = lora_alpha / r`` (``lora_alpha / sqrt(r)``
under rsLoRA; ``rank_pattern``/``alpha_pattern`` override per module). The
reader yields that update under the *base model's* parameter name
(``model.layers.3.self_attn.q_proj.weight``) in the module's storage layout
(transposed when ``fan_in_fan_out``, as GPT-2's Conv1D stores it), so the role
map applies unchanged. ``modules_to_save`` tensors are full weights and come
out as stored. DoRA's ``lora_magnitude_vector`` (initialised to the base's
per-row weight norms) comes out as ``<module>.lora_magnitude_vector``: the
update's direction is ``B @ A`` like LoRA, its magnitude needs the base, which
is what placement compares it with.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ...registry.errors import UnreadableWeightsError
from . import safetensors as _st
from . import torch_bin as _bin
from ._common import TensorInfo

if TYPE_CHECKING:
    import torch

__all__ = [
    "ADAPTER_CONFIG", "ADAPTER_FILES", "read_adapter_config", "read_header", "iter_tensors", "adapter_layout",
    "MAGNITUDE_SUFFIX",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
MAGNITUDE_SUFFIX = ".lora_magnitude_vector"
_PREFIX = "base_model.model."
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?:embedding_)?(?P<ab>[AB])(?:\.[^.]+)?(?:\.weight)?$")
_EMB = re.compile(r"\.lora_embedding_[AB]")
_MAG = re.compile(r"^(?P<module>.+)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?$")


def read_adapter_config(folder: str | os.PathLike) -> dict[str, Any]:
    """``adapter_config.json``, checked: a LoRA-type adapter with ``r`` and ``lora_alpha``."""
    path = Path(folder) / ADAPTER_CONFIG
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableWeightsError(path, f"adapter config is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise UnreadableWeightsError(path, "adapter config is not a JSON object")
    peft_type = str(cfg.get("peft_type") or "LORA").upper()
    if peft_type not in ("LORA", "ADALORA"):
        raise UnreadableWeightsError(
            path, f"peft_type {peft_type} is not supported (only LoRA-type adapters have a weight update to compare)"
        )
    r = cfg.get("r")
    if not isinstance(r, int) or r <= 0:
        raise UnreadableWeightsError(path, f"r must be a positive integer, got {r!r}")
    if not isinstance(cfg.get("lora_alpha", r), (int, float)):
        raise UnreadableWeightsError(path, f"lora_alpha must be a number, got {cfg.get('lora_alpha')!r}")
    return cfg


def _pattern_value(patterns: dict | None, module: str, default):
    for pat, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pat})$", module):
            return value
    return default


def _scale(cfg: dict[str, Any], module: str) -> float:
    r = _pattern_value(cfg.get("rank_pattern"), module, cfg["r"])
    alpha = _pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", cfg["r"]))
    return float(alpha) / (math.sqrt(r) if cfg.get("use_rslora") else float(r))


def _module(path: str | os.PathLike):
    return _st if str(path).endswith(".safetensors") else _bin


def _strip(name: str) -> str:
    return name[len(_PREFIX):] if name.startswith(_PREFIX) else name


def adapter_layout(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Per output name: ``{"kind": "lora"|"full"|"magnitude", "keys": {...}, "embedding": bool}``."""
    raw = _module(path).read_header(path)
    out: dict[str, dict[str, Any]] = {}
    for key in raw:
        name = _strip(key)
        m = _LORA.match(name)
        if m:
            entry = out.setdefault(f"{m.group('module')}.weight", {"kind": "lora", "keys": {}, "embedding": False})
            entry["keys"][m.group("ab")] = key
            entry["embedding"] = entry["embedding"] or bool(_EMB.search(name))
            continue
        m = _MAG.match(name)
        if m:
            out[f"{m.group('module')}{MAGNITUDE_SUFFIX}"] = {"kind": "magnitude", "keys": {"m": key}}
            continue
        out[name] = {"kind": "full", "keys": {"w": key}}
    for name, entry in out.items():
        if entry["kind"] == "lora" and set(entry["keys"]) != {"A", "B"}:
            missing = ({"A", "B"} - set(entry["keys"])).pop()
            raise UnreadableWeightsError(path, f"LoRA factor {missing} is missing", tensor=name)
    return {n: {**e, "raw": raw} for n, e in out.items()}


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """The effective tensors of an adapter file: one update per target module, full weights as stored.

    Shapes are checked (``A: [r, in]``, ``B: [out, r]``) from the file header alone.
    """
    path = Path(path)
    cfg = read_adapter_config(path.parent)
    infos: dict[str, TensorInfo] = {}
    for name, entry in adapter_layout(path).items():
        raw = entry["raw"]
        if entry["kind"] == "lora":
            a, b = raw[entry["keys"]["A"]], raw[entry["keys"]["B"]]
            if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
                raise UnreadableWeightsError(
                    path, f"LoRA factors do not multiply: A {list(a.shape)}, B {list(b.shape)} "
                    "(expected A [r, in] and B [out, r])", tensor=name,
                )
            shape = (b.shape[0], a.shape[1])
            if entry["embedding"] or cfg.get("fan_in_fan_out"):
                shape = shape[::-1]
            n = shape[0] * shape[1]
            infos[name] = TensorInfo(name, "F32", shape, str(path), 4 * n)
        else:
            info = raw[next(iter(entry["keys"].values()))]
            infos[name] = TensorInfo(name, info.dtype, info.shape, str(path), info.size_bytes)
    return infos


def iter_tensors(
    path: str | os.PathLike, names: Iterable[str] | None = None
) -> Iterator[tuple[str, "torch.Tensor"]]:
    """Yield ``(name, tensor)``: ``scale * B @ A`` per target module, full and magnitude tensors as stored."""
    path = Path(path)
    cfg = read_adapter_config(path.parent)
    layout = adapter_layout(path)
    wanted = list(names) if names is not None else list(layout)
    keys = sorted({k for n in wanted for k in layout[n]["keys"].values()})
    stored = dict(_module(path).iter_tensors(path, keys))
    for name in wanted:
        entry = layout[name]
        if entry["kind"] != "lora":
            yield name, stored[next(iter(entry["keys"].values()))]
            continue
        a = stored[entry["keys"]["A"]].float()
        b = stored[entry["keys"]["B"]].float()
        module = name.removesuffix(".weight")
        delta = _scale(cfg, module) * (b @ a)
        if entry["embedding"] or cfg.get("fan_in_fan_out"):
            delta = delta.T.contiguous()
        yield name, delta
