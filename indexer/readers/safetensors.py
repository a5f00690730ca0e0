"""safetensors reader: validated headers, tensors read lazily one at a time.

The header is parsed and checked here (offsets, sizes, dtypes) before
``safe_open`` maps the file, so a truncated file or a header whose offsets lie
produces one clear error naming the file and the tensor, not a crash deep in
a later stage.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from ...registry.errors import UnreadableWeightsError
from ._common import SAFETENSORS_DTYPES, TensorInfo

if TYPE_CHECKING:
    import torch

__all__ = ["read_header", "iter_tensors"]

_MAX_HEADER = 100_000_000


def _parse(path: Path) -> tuple[dict, int]:
    size = os.path.getsize(path)
    if size < 8:
        raise UnreadableWeightsError(path, f"file is {size} bytes, too short for a safetensors header")
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > size - 8:
            raise UnreadableWeightsError(
                path, f"header length {n} exceeds the file ({size} bytes): truncated or not safetensors"
            )
        if n > _MAX_HEADER:
            raise UnreadableWeightsError(
                path, f"header length {n} is over the {_MAX_HEADER}-byte limit: not a safetensors file"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableWeightsError(path, f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise UnreadableWeightsError(path, "header is not a JSON object")
    return header, size - 8 - n


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Parse and validate one file's header without touching tensor bytes.

    Raises
    ------
    UnreadableWeightsError
        On a truncated file, bad JSON, an unknown dtype, or offsets that do
        not match the shapes or run past the end of the file.
    """
    path = Path(path)
    header, data_len = _parse(path)
    infos: dict[str, TensorInfo] = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise UnreadableWeightsError(path, "entry lacks dtype/shape/data_offsets", tensor=name)
        dtype = entry["dtype"]
        if dtype not in SAFETENSORS_DTYPES:
            raise UnreadableWeightsError(
                path,
                f"unknown dtype '{dtype}' (known: {', '.join(SAFETENSORS_DTYPES)})",
                tensor=name,
            )
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise UnreadableWeightsError(path, f"shape {shape!r} is not a list of non-negative integers", tensor=name)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise UnreadableWeightsError(path, f"data_offsets {offsets!r} is not a [begin, end] pair of integers",
                                         tensor=name)
        shape = tuple(shape)
        begin, end = offsets
        numel = 1
        for d in shape:
            numel *= d
        expected = int(numel * SAFETENSORS_DTYPES[dtype][1])
        if not 0 <= begin <= end or end - begin != expected:
            raise UnreadableWeightsError(
                path,
                f"data_offsets [{begin}, {end}] hold {end - begin} bytes but shape "
                f"{list(shape)} of {dtype} needs {expected}",
                tensor=name,
            )
        if end > data_len:
            raise UnreadableWeightsError(
                path,
                f"data_offsets end at byte {end} but the file holds only {data_len} data bytes: "
                "the file is truncated",
                tensor=name,
            )
        spans.append((begin, end, name))
        infos[name] = TensorInfo(name, dtype, shape, str(path), end - begin)
    spans.sort()
    for (b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise UnreadableWeightsError(path, f"tensors '{n0}' and '{n1}' overlap in the data buffer")
    return infos


def iter_tensors(
    path: str | os.PathLike, names: Iterable[str] | None = None
) -> Iterator[tuple[str, "torch.Tensor"]]:
    """Yield ``(name, tensor)`` one at a time from a memory map.

    Peak memory stays at one tensor: each is materialised only when yielded.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            for name in names if names is not None else list(fh.keys()):
                yield name, fh.get_tensor(name)
    except SafetensorError as exc:
        raise UnreadableWeightsError(path, f"safetensors could not read it ({exc})") from None
