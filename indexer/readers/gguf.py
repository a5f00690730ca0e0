"""GGUF reader (llama.cpp): memory-mapped headers, tensors dequantized one at a time.

Parsing is ``gguf.GGUFReader`` (a memory map: building its tensor list reads
no tensor bytes) and dequantization is ``gguf.quants.dequantize``. What this
module adds is what the registry needs to compare a GGUF with the checkpoint
it was converted from:

- a Hugging Face style config recovered from the metadata
  (``{arch}.block_count``, ``{arch}.attention.head_count``, ...);
- the converter's storage transforms undone, so every tensor comes back in the
  source layout: llama.cpp permutes the rows of ``attn_q``/``attn_k`` of
  rotary models of the llama architecture (``LlamaModel.permute``: per head, rows
  ``[0, 2, 4, ..., 1, 3, 5, ...]`` interleaved), which :func:`unpermute_qk`
  reverses with ``head_count`` (queries) and ``head_count_kv`` (keys, so
  grouped-query attention is covered); GPT-NeoX's fused ``attn_qkv`` goes back
  from ``[q; k; v]`` to its per-head interleaving;
- errors: a file that is truncated, has an unknown quantization type (forks add
  enum values upstream rejects), lying offsets or absurd counts is reported in
  one line naming the file, never as a crash inside the parser.

Tensor dtypes are the GGML type names (``Q4_K``, ``Q8_0``, ``F16``, ...): the
quantization type per tensor; the model's most common one is its type.
"""

from __future__ import annotations

import os
import re
import struct
from collections import Counter, OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ...registry.errors import UnreadableWeightsError
from ._common import TensorInfo

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = [
    "read_header",
    "iter_tensors",
    "read_metadata",
    "config_from_metadata",
    "split_files",
    "unpermute_qk",
    "PERMUTED_ARCHITECTURES",
    "FLOAT_TYPES",
]

_MAGIC = b"GGUF"
#: Architectures whose converter (``LlamaModel.permute``) reorders Q/K rows for rotary embeddings.
PERMUTED_ARCHITECTURES = frozenset({"llama", "granite", "granitemoe", "minicpm", "deci", "olmo"})
#: GGML types that are plain floats (anything else is a quantized storage).
FLOAT_TYPES = frozenset({"F32", "F16", "BF16", "F64"})

#: GGUF ``general.architecture`` -> transformers ``model_type`` (what the role map keys on).
_MODEL_TYPE = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen2moe": "qwen2_moe",
    "qwen3": "qwen3",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3": "gemma3_text",
    "phi3": "phi3",
    "gpt2": "gpt2",
    "gptneox": "gpt_neox",
    "bert": "bert",
    "granite": "granite",
    "olmo": "olmo",
    "olmo2": "olmo2",
    "starcoder2": "starcoder2",
    "stablelm": "stablelm",
    "internlm2": "internlm2",
    "command-r": "cohere",
    "smollm3": "smollm3",
}

_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<n>\d{5})\.gguf$")

# Smallest encodings: a KV pair is a u64 key length + key + u32 type + a value
# of at least one byte; a tensor info is u64 name length + name + u32 n_dims +
# one u64 dim + u32 type + u64 offset.
_MIN_KV_BYTES = 8 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8

_CACHE: "OrderedDict[tuple[str, int, int], Any]" = OrderedDict()
_CACHE_SIZE = 4


def _check_preamble(path: Path) -> None:
    """Magic, version and counts against the file size, before the parser loops on them."""
    size = os.path.getsize(path)
    if size < 24:
        raise UnreadableWeightsError(path, f"file is {size} bytes, too short for a GGUF header")
    with open(path, "rb") as fh:
        head = fh.read(24)
    if head[:4] != _MAGIC:
        raise UnreadableWeightsError(path, f"not a GGUF file (magic {head[:4]!r}, expected b'GGUF')")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
    if version not in (2, 3):
        raise UnreadableWeightsError(path, f"GGUF version {version} is not supported (expected 2 or 3)")
    if n_kv * _MIN_KV_BYTES > size or n_tensors * _MIN_TENSOR_INFO_BYTES > size:
        raise UnreadableWeightsError(
            path, f"header claims {n_tensors} tensors and {n_kv} metadata keys, more than a "
            f"{size}-byte file can hold: corrupt or not GGUF"
        )


def _checked_reader_class():
    """``GGUFReader`` that checks each tensor's byte range before mapping it, to name the tensor that lies."""
    import gguf
    import numpy as np

    class _Checked(gguf.GGUFReader):
        def _build_tensors(self, start_offs, fields):  # noqa: D401 - gguf's hook, same signature
            size = len(self.data)
            for field in fields:
                try:
                    _nl, name_data, _nd, dims, raw_dtype, offset = field.parts
                    name = bytes(name_data).decode("utf-8", "replace")
                    qtype = gguf.GGMLQuantizationType(int(raw_dtype[0]))
                except (ValueError, IndexError):
                    continue  # the parser's own error says what is wrong
                block, type_size = gguf.GGML_QUANT_SIZES[qtype]
                n = int(np.prod(dims.astype(np.float64)))
                end = int(start_offs) + int(offset[0]) + n * type_size // block
                if n < 0 or end > size:
                    raise _LyingOffset(name, end, size)
            return super()._build_tensors(start_offs, fields)

    return _Checked


class _LyingOffset(Exception):
    def __init__(self, tensor: str, end: int, size: int) -> None:
        super().__init__(tensor)
        self.tensor, self.end, self.size = tensor, end, size


def _reader(path: str | os.PathLike):
    """A parsed ``GGUFReader`` (cached by path, size and mtime: parsing large vocabularies takes seconds)."""
    import gguf

    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    _check_preamble(path)
    try:
        reader = _checked_reader_class()(path, "r")
    except _LyingOffset as exc:
        raise UnreadableWeightsError(
            path, f"tensor data would end at byte {exc.end} but the file has {exc.size} bytes: "
            "truncated, or the header's offsets lie", tensor=exc.tensor,
        ) from None
    except ValueError as exc:
        msg = str(exc)
        m = re.search(r"(\d+)\)? is not a valid GGMLQuantizationType", msg)
        if m:
            raise UnreadableWeightsError(
                path, f"unknown quantization type {m.group(1)} (not a GGMLQuantizationType of the installed "
                "gguf package: a llama.cpp fork's type?); upgrade gguf or re-quantize with upstream llama.cpp",
            ) from None
        raise UnreadableWeightsError(path, f"GGUF header is corrupt ({msg})") from None
    except (IndexError, KeyError, OverflowError, TypeError, UnicodeDecodeError, struct.error, MemoryError) as exc:
        raise UnreadableWeightsError(
            path, f"GGUF header is corrupt or truncated ({type(exc).__name__}: {exc})"
        ) from None
    size = st.st_size
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size or t.data.nbytes != int(t.n_bytes):
            raise UnreadableWeightsError(
                path,
                f"tensor data ends at byte {end} but the file has {size} bytes: truncated, or the header's "
                "offsets lie",
                tensor=t.name,
            )
    _CACHE[key] = reader
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return reader


def _value(field) -> Any:
    try:
        return field.contents()
    except (ValueError, IndexError, TypeError, UnicodeDecodeError):
        return None


def read_metadata(path: str | os.PathLike, *, skip_arrays: bool = True) -> dict[str, Any]:
    """The file's key/value metadata (large arrays such as the vocabulary left out by default)."""
    import gguf

    out: dict[str, Any] = {}
    for key, field in _reader(path).fields.items():
        if key.startswith("GGUF."):
            continue
        if skip_arrays and field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
            out[key] = f"<array of {len(field.data)}>"
            continue
        out[key] = _value(field)
    return out


def split_files(path: str | os.PathLike) -> tuple[str, ...]:
    """All shards of a split GGUF (``name-00001-of-00003.gguf``), in order; ``(path,)`` when not split.

    Raises
    ------
    UnreadableWeightsError
        When a shard of the set is missing.
    """
    p = Path(path)
    m = _SPLIT.match(p.name)
    if not m:
        return (str(p),)
    n = int(m.group("n"))
    files = []
    for i in range(1, n + 1):
        f = p.with_name(f"{m.group('stem')}-{i:05d}-of-{n:05d}.gguf")
        if not f.is_file():
            raise UnreadableWeightsError(f, f"shard {i} of {n} of a split GGUF is missing: re-download it")
        files.append(str(f))
    return tuple(files)


def model_stem(path: str | os.PathLike) -> str:
    """The file name without ``.gguf`` and without a split suffix."""
    name = Path(path).name
    m = _SPLIT.match(name)
    return m.group("stem") if m else name.removesuffix(".gguf")


def config_from_metadata(meta: dict[str, Any], tensor_names: Iterable[str] = ()) -> dict[str, Any]:
    """A transformers-style config from GGUF metadata (keys the registry and the role map read)."""
    arch = meta.get("general.architecture")
    arch = arch if isinstance(arch, str) else None

    def get(key: str):
        return meta.get(f"{arch}.{key}") if arch else None

    names = set(tensor_names)
    heads = get("attention.head_count")
    kv_heads = get("attention.head_count_kv")
    hidden = get("embedding_length")
    cfg: dict[str, Any] = {
        "model_type": _MODEL_TYPE.get(arch or "", arch),
        "gguf_architecture": arch,
        "hidden_size": hidden,
        "num_hidden_layers": get("block_count"),
        "intermediate_size": get("feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads if isinstance(kv_heads, int) else heads,
        "max_position_embeddings": get("context_length"),
        "vocab_size": get("vocab_size"),
        "rope_theta": get("rope.freq_base"),
        "tie_word_embeddings": bool(names) and "output.weight" not in names,
    }
    key_len = get("attention.key_length")
    if isinstance(key_len, int):
        cfg["head_dim"] = key_len
    elif isinstance(heads, int) and heads and isinstance(hidden, int):
        cfg["head_dim"] = hidden // heads
    for src, dst in (("general.name", "gguf_name"), ("general.basename", "gguf_basename"),
                     ("general.file_type", "gguf_file_type"), ("general.base_model.0.repo_url", "gguf_base_model")):
        if meta.get(src) is not None:
            cfg[dst] = meta[src]
    return {k: v for k, v in cfg.items() if v is not None}


def _first_shard_meta(path: Path) -> dict[str, Any]:
    files = split_files(path)
    return read_metadata(files[0])


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Every tensor of one GGUF file: GGML type, shape in row-major (torch) order, byte size.

    No tensor bytes are read: the reader memory-maps the file.
    """
    path = Path(path)
    reader = _reader(path)
    out = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        out[t.name] = TensorInfo(t.name, t.tensor_type.name, shape, str(path), int(t.n_bytes))
    return out


def unpermute_qk(w: "torch.Tensor", n_head: int) -> "torch.Tensor":
    """Undo llama.cpp's ``LlamaModel.permute`` on a Q or K weight (or bias).

    The converter stores, per head, rows ``[0, 2, 4, ..., 1, 3, 5, ...]`` of the
    Hugging Face rotary layout; this puts them back. Pass ``head_count`` for
    queries and ``head_count_kv`` for keys.

    Examples
    --------
    >>> import torch
    >>> w = torch.arange(12.0).reshape(12, 1)
    >>> permuted = w.reshape(2, 2, 3, 1).swapaxes(1, 2).reshape(12, 1)  # what the converter writes
    >>> bool((unpermute_qk(permuted, 2) == w).all())
    True
    """
    rows = w.shape[0]
    if n_head <= 0 or rows % (2 * n_head):
        raise ValueError(f"cannot un-permute {rows} rows over {n_head} heads (rows must be a multiple of 2*heads)")
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _neox_interleave(t: "torch.Tensor", n_head: int) -> "torch.Tensor":
    """GGUF's ``[q; k; v]`` back to GPT-NeoX's per-head ``(head, 3, head_dim)`` row order."""
    rows = t.shape[0]
    return t.reshape(3, n_head, rows // (3 * n_head), *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _dequantize(path: Path, t) -> "np.ndarray":
    import numpy as np
    from gguf.quants import dequantize

    try:
        arr = dequantize(t.data, t.tensor_type)
    except NotImplementedError:
        raise UnreadableWeightsError(
            path, f"quantization type {t.tensor_type.name} has no dequantizer in the gguf package; "
            "upgrade gguf or re-quantize the model", tensor=t.name,
        ) from None
    except (ValueError, IndexError) as exc:
        raise UnreadableWeightsError(path, f"tensor data does not decode as {t.tensor_type.name} ({exc})",
                                     tensor=t.name) from None
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return arr if arr.flags.writeable else arr.copy()  # float tensors come straight from the read-only map


def iter_tensors(
    path: str | os.PathLike, names: Iterable[str] | None = None, *, undo_permutation: bool = True
) -> Iterator[tuple[str, "torch.Tensor"]]:
    """Yield ``(name, float32 tensor)`` one at a time, dequantized and in the source layout.

    ``undo_permutation=False`` returns Q/K exactly as stored (for tests that
    show why the un-permutation matters).
    """
    import torch

    path = Path(path)
    reader = _reader(path)
    meta = _first_shard_meta(path)
    arch = meta.get("general.architecture")
    heads = meta.get(f"{arch}.attention.head_count")
    kv_heads = meta.get(f"{arch}.attention.head_count_kv") or heads
    permuted = undo_permutation and arch in PERMUTED_ARCHITECTURES and isinstance(heads, int)
    by_name = {t.name: t for t in reader.tensors}
    for name in names if names is not None else list(by_name):
        t = by_name[name]
        w = torch.from_numpy(_dequantize(path, t))
        try:
            w = _undo_converter(w, name, arch, heads, kv_heads, permuted, undo_permutation)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise UnreadableWeightsError(
                path, f"metadata head counts do not fit the tensor ({exc}): the header is corrupt", tensor=name
            ) from None
        yield name, w


def _undo_converter(w, name, arch, heads, kv_heads, permuted, undo_permutation):
    """Q/K rows un-permuted (llama architecture), GPT-NeoX qkv re-interleaved; other tensors unchanged."""
    if permuted and re.match(r"^blk\.\d+\.attn_q\.(?:weight|bias)$", name):
        return unpermute_qk(w, heads)
    if permuted and re.match(r"^blk\.\d+\.attn_k\.(?:weight|bias)$", name):
        return unpermute_qk(w, int(kv_heads))
    if undo_permutation and arch == "gptneox" and isinstance(heads, int) and re.match(
        r"^blk\.\d+\.attn_qkv\.(?:weight|bias)$", name
    ):
        return _neox_interleave(w, heads)
    return w


def quantization_summary(infos: Iterable[TensorInfo]) -> str | None:
    """The most common GGML type among 2-D tensors (the model's quantization), e.g. ``"Q4_K"``."""
    counts = Counter(i.dtype for i in infos if len(i.shape) >= 2)
    return counts.most_common(1)[0][0] if counts else None
