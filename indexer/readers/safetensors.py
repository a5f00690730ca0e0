"""safetensors reader: validated headers, tensors read lazily one at a time.

The header is parsed and checked here (offsets, sizes, dtypes) before any
tensor byte is read, so a truncated file or a header whose offsets lie
produces one clear error naming the file and the tensor, not a crash deep in
a later stage. Tensors are then read at their validated offsets, one ahead of
the caller (indexing); ``indexer/streaming.py`` memory-maps the same files
for random access.
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
#: Most dimensions a tensor may declare (real weights have at most 5 or so).
MAX_NDIM = 8
#: Largest dimension an empty tensor may declare. A non-empty tensor's
#: dimensions are bounded by the bytes it occupies; an empty one occupies
#: none, so without this a 477-byte file can declare ``[2**40, 0]``.
MAX_EMPTY_DIM = (1 << 31) - 1
_MAX_NAME = 1024


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """``json`` object hook: JSON allows repeated keys (last wins); a header must not."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


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
        header = json.loads(raw, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise UnreadableWeightsError(
            path, f"header names '{exc.args[0]}' twice: refusing an ambiguous header"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableWeightsError(path, f"header is not valid JSON ({exc})") from None
    except RecursionError:
        raise UnreadableWeightsError(path, "header JSON is nested too deeply: not a safetensors header") from None
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
    start = os.path.getsize(path) - data_len  # the data buffer follows the 8-byte length and the header
    infos: dict[str, TensorInfo] = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not (isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())):
                raise UnreadableWeightsError(path, "__metadata__ is not a JSON object of strings")
            continue
        _check_name(path, name)
        dtype, shape = _checked_dtype_and_shape(path, name, entry)
        begin, end = _checked_offsets(path, name, entry["data_offsets"], dtype, shape, data_len)
        spans.append((begin, end, name))
        infos[name] = TensorInfo(name, dtype, shape, str(path), end - begin, offset=start + begin)
    _check_tiling(path, sorted(spans), data_len)
    return infos


def _check_name(path: Path, name: str) -> None:
    """Refuse a tensor name that is empty, huge or holds control characters: it will be printed and stored."""
    if not name or len(name) > _MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UnreadableWeightsError(
            path, f"tensor name {_short(repr(name))} is empty, over {_MAX_NAME} characters "
            "or holds control characters"
        )


def _checked_dtype_and_shape(path: Path, name: str, entry: object) -> tuple[str, tuple[int, ...]]:
    """An entry's known dtype and plausible shape, before its offsets are trusted to size a read.

    Dimensions are bounded (:data:`MAX_NDIM`, :data:`MAX_EMPTY_DIM`) because an
    empty tensor occupies no bytes, so its offsets cannot bound its shape.
    """
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise UnreadableWeightsError(path, "entry lacks dtype/shape/data_offsets", tensor=name)
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        shown = dtype if isinstance(dtype, str) else f"{type(dtype).__name__} value"
        raise UnreadableWeightsError(
            path,
            f"unknown dtype '{_short(shown)}' (known: {', '.join(SAFETENSORS_DTYPES)})",
            tensor=name,
        )
    shape = entry["shape"]
    if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
        raise UnreadableWeightsError(
            path, f"shape {_short(repr(shape))} is not a list of non-negative integers", tensor=name
        )
    if len(shape) > MAX_NDIM:
        raise UnreadableWeightsError(
            path, f"shape has {len(shape)} dimensions, more than the {MAX_NDIM} any weight has", tensor=name
        )
    if 0 in shape and max(shape) > MAX_EMPTY_DIM:
        raise UnreadableWeightsError(
            path,
            f"empty tensor declares a dimension of {max(shape)} (over {MAX_EMPTY_DIM}): not a real shape",
            tensor=name,
        )
    return dtype, tuple(shape)


def _checked_offsets(
    path: Path, name: str, offsets: object, dtype: str, shape: tuple[int, ...], data_len: int,
) -> tuple[int, int]:
    """``(begin, end)`` of one tensor, checked to hold exactly its shape's bytes inside the data buffer.

    Offsets that lie would make a later read run past the file or into the
    next tensor, so they are held to the shape and dtype here.
    """
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise UnreadableWeightsError(
            path, f"data_offsets {_short(repr(offsets))} is not a [begin, end] pair of integers", tensor=name
        )
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
    return begin, end


def _check_tiling(path: Path, spans: list[tuple[int, int, str]], data_len: int) -> None:
    """Refuse overlapping tensors, gaps and trailing bytes in the data buffer (``spans`` sorted by offset).

    safetensors itself requires the tensors to tile the data buffer exactly:
    a gap or trailing bytes mean the header does not describe the file.
    """
    for (b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise UnreadableWeightsError(path, f"tensors '{n0}' and '{n1}' overlap in the data buffer")
    pos = 0
    for begin, end, n in spans:
        if begin != pos:
            raise UnreadableWeightsError(
                path, f"data_offsets start at byte {begin} but the previous tensor ends at {pos}: "
                "the header leaves a gap in the data buffer", tensor=n,
            )
        pos = end
    if pos != data_len:
        raise UnreadableWeightsError(
            path, f"the tensors cover {pos} data bytes but the file holds {data_len}: "
            "the header does not describe the whole file"
        )


def _short(text: str, limit: int = 80) -> str:
    """A header value for an error message: one line, at most ``limit`` characters."""
    text = text.encode("ascii", "backslashreplace").decode().replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def iter_tensors(
    path: str | os.PathLike, names: Iterable[str] | None = None
) -> Iterator[tuple[str, "torch.Tensor"]]:
    """Yield ``(name, tensor)`` one at a time, reading the next tensor while the caller works on this one.

    Each tensor is read with ``pread`` into its own buffer (the read releases
    the GIL), on a reader thread that stays one tensor ahead: the disk and the
    caller's computation overlap, and at most two tensors are in memory. The
    header was validated first (:func:`read_header`), so every read lies
    inside the file.
    """
    from concurrent.futures import ThreadPoolExecutor

    path = Path(path)
    infos = read_header(path)
    order = list(names) if names is not None else sorted(infos, key=lambda n: infos[n].offset or 0)
    unknown = [n for n in order if n not in infos]
    if unknown:
        raise UnreadableWeightsError(path, f"no tensor named '{_short(unknown[0])}' in the file")
    with open(path, "rb", buffering=0) as fh, ThreadPoolExecutor(1, thread_name_prefix="mothertree-read") as pool:
        ahead = pool.submit(_read, fh.fileno(), path, infos[order[0]]) if order else None
        for i, name in enumerate(order):
            tensor = ahead.result()
            ahead = pool.submit(_read, fh.fileno(), path, infos[order[i + 1]]) if i + 1 < len(order) else None
            yield name, tensor


def _read(fd: int, path: Path, info: TensorInfo) -> "torch.Tensor":
    """One tensor's bytes, read from ``fd`` at its offset, as a tensor of its dtype and shape."""
    import torch

    try:
        buf = torch.empty(info.size_bytes, dtype=torch.uint8)
    except (RuntimeError, MemoryError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnreadableWeightsError(
            path, f"could not allocate {info.size_bytes:,} bytes for the tensor ({_short(first, 200)}); "
            "the tensor is larger than this machine's memory", tensor=info.name,
        ) from None
    view = memoryview(buf.numpy()) if info.size_bytes else memoryview(b"")
    done = 0
    while done < info.size_bytes:
        n = os.preadv(fd, [view[done:]], info.offset + done)
        if n <= 0:
            raise UnreadableWeightsError(path, "the file ended before the tensor's data: truncated while reading",
                                         tensor=info.name)
        done += n
    dtype = getattr(torch, SAFETENSORS_DTYPES[info.dtype][0])
    return buf.view(dtype).reshape(info.shape)
