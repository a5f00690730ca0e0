"""GPTQ and AWQ checkpoints: packed int4/int8 linear weights dequantized on read.

A folder whose ``config.json`` has ``quantization_config.quant_method`` ``gptq``
or ``awq`` stores each quantized ``Linear`` as ``qweight``/``qzeros``/``scales``
(GPTQ adds ``g_idx``) in safetensors. With ``K`` inputs, ``N`` outputs, ``b``
bits, ``p = 32 // b`` values per int32 word and group size ``g``:

GPTQ (AutoGPTQ / transformers layout)
    ``qweight`` int32 ``[K / p, N]`` packs ``p`` consecutive input rows per word,
    lowest bits first; ``qzeros`` int32 ``[K / g, N / p]`` packs ``p`` output
    columns per word; ``scales`` ``[K / g, N]``; ``g_idx`` ``[K]`` the group of
    each input row (act-order), ``k // g`` without it. ``W[k, n] = scales[g_idx[k], n]
    * (q[k, n] - (z[g_idx[k], n] + 1))``: format ``gptq`` stores zero - 1;
    ``checkpoint_format: gptq_v2`` stores the zero itself.
AWQ (GEMM layout, 4 bit)
    ``qweight`` int32 ``[K, N / 8]`` and ``qzeros`` ``[K / g, N / 8]`` pack 8
    output columns per word in the order ``0, 2, 4, 6, 1, 3, 5, 7``;
    ``scales`` ``[K / g, N]``; ``W[k, n] = scales[k // g, n] * (q[k, n] - z[k // g, n])``.

The weight comes back as the ``Linear``'s ``[N, K]`` float32 under
``<module>.weight``; its dtype is ``Q{b}_GPTQ`` or ``Q{b}_AWQ`` (quantized storage).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ...registry.errors import UnreadableWeightsError
from . import safetensors as _st
from ._common import TensorInfo

if TYPE_CHECKING:
    import torch

__all__ = ["QUANT_METHODS", "quantization_config", "read_header", "iter_tensors", "unpack"]

QUANT_METHODS = ("gptq", "awq")
_PARTS = ("qweight", "qzeros", "scales", "g_idx")
_AWQ_REVERSE = (0, 4, 1, 5, 2, 6, 3, 7)


def quantization_config(config: dict[str, Any] | None) -> dict[str, Any] | None:
    q = (config or {}).get("quantization_config")
    if isinstance(q, dict) and str(q.get("quant_method", "")).lower() in QUANT_METHODS:
        return q
    return None


def _settings(path: Path) -> tuple[str, int, int, bool]:
    cfg_path = path.parent / "config.json"
    try:
        q = quantization_config(json.loads(cfg_path.read_text()))
    except (OSError, ValueError) as exc:
        raise UnreadableWeightsError(cfg_path, f"config.json unreadable ({exc})") from None
    if q is None:
        raise UnreadableWeightsError(cfg_path, "no gptq/awq quantization_config")
    method = str(q["quant_method"]).lower()
    bits = q.get("bits", q.get("w_bit"))
    group = q.get("group_size", q.get("q_group_size", 128))
    if bits not in ((4, 8) if method == "gptq" else (4,)):
        raise UnreadableWeightsError(
            cfg_path, f"{method} with {bits} bits is not supported (GPTQ: 4 or 8 bits; AWQ: 4 bits)"
        )
    v2 = str(q.get("checkpoint_format", "gptq")).lower() == "gptq_v2"
    return method, int(bits), int(group) if isinstance(group, int) else -1, v2


def _modules(raw: dict[str, TensorInfo]) -> dict[str, dict[str, str]]:
    mods: dict[str, dict[str, str]] = {}
    for key in raw:
        stem, _, last = key.rpartition(".")
        if last in _PARTS:
            mods.setdefault(stem, {})[last] = key
    return mods


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Each quantized module as one ``[N, K]`` weight (shapes checked), other tensors as stored."""
    path = Path(path)
    method, bits, group, _v2 = _settings(path)
    raw = _st.read_header(path)
    mods = _modules(raw)
    per = 32 // bits
    out: dict[str, TensorInfo] = {}
    packed = {k for m in mods.values() for k in m.values()}
    for name, info in raw.items():
        if name not in packed:
            out[name] = info
    for mod, parts in mods.items():
        missing = [p for p in ("qweight", "qzeros", "scales") if p not in parts]
        if missing:
            raise UnreadableWeightsError(path, f"{method} module lacks {', '.join(missing)}", tensor=mod)
        qw, qz, sc = raw[parts["qweight"]].shape, raw[parts["qzeros"]].shape, raw[parts["scales"]].shape
        if method == "gptq":
            k, n = qw[0] * per, qw[1]
        else:
            k, n = qw[0], qw[1] * per
        g = group if group > 0 else k
        groups = -(-k // g)
        if len(qw) != 2 or tuple(qz) != (groups, n // per) or tuple(sc) != (groups, n):
            raise UnreadableWeightsError(
                path, f"{method} shapes do not agree: qweight {list(qw)}, qzeros {list(qz)}, scales {list(sc)} "
                f"for {bits}-bit, group size {group}", tensor=mod,
            )
        name = f"{mod}.weight"
        out[name] = TensorInfo(name, f"Q{bits}_{method.upper()}", (n, k), str(path),
                               sum(raw[v].size_bytes for v in parts.values()))
    return out


def _unpack_rows(q: "torch.Tensor", bits: int) -> "torch.Tensor":
    """int32 ``[R, C]`` -> ``[R * p, C]``: the ``p`` values of each word become consecutive rows."""
    import torch

    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    vals = (q.unsqueeze(1) >> shifts.view(1, -1, 1)) & ((1 << bits) - 1)
    return vals.reshape(q.shape[0] * (32 // bits), q.shape[1])


def _unpack_cols(q: "torch.Tensor", bits: int, awq: bool) -> "torch.Tensor":
    """int32 ``[R, C]`` -> ``[R, C * p]``: the ``p`` values of each word become consecutive columns."""
    import torch

    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    vals = ((q.unsqueeze(2) >> shifts.view(1, 1, -1)) & ((1 << bits) - 1)).reshape(q.shape[0], -1)
    if awq:
        order = torch.arange(vals.shape[1]).view(-1, 8)[:, list(_AWQ_REVERSE)].reshape(-1)
        vals = vals[:, order]
    return vals


def unpack(parts: dict[str, "torch.Tensor"], *, method: str, bits: int, group: int, v2: bool = False) -> "torch.Tensor":
    """Dequantize one module's ``qweight``/``qzeros``/``scales``(/``g_idx``) to its ``[N, K]`` float32 weight."""
    import torch

    scales = parts["scales"].float()
    if method == "gptq":
        q = _unpack_rows(parts["qweight"].to(torch.int32), bits)
        z = _unpack_cols(parts["qzeros"].to(torch.int32), bits, awq=False) + (0 if v2 else 1)
        k = q.shape[0]
        g_idx = parts.get("g_idx")
        g_idx = g_idx.long() if g_idx is not None else torch.arange(k) // (group if group > 0 else k)
    else:
        q = _unpack_cols(parts["qweight"].to(torch.int32), bits, awq=True)
        z = _unpack_cols(parts["qzeros"].to(torch.int32), bits, awq=True)
        k = q.shape[0]
        g_idx = torch.arange(k) // (group if group > 0 else k)
    if int(g_idx.max()) >= scales.shape[0] or int(g_idx.min()) < 0:
        raise ValueError(f"g_idx names group {int(g_idx.max())} but there are {scales.shape[0]} groups")
    w = scales[g_idx] * (q.float() - z[g_idx].float())
    return w.T.contiguous()


def iter_tensors(
    path: str | os.PathLike, names: Iterable[str] | None = None
) -> Iterator[tuple[str, "torch.Tensor"]]:
    """Yield ``(name, tensor)``: quantized modules dequantized to ``[N, K]``, the rest as stored."""
    path = Path(path)
    method, bits, group, v2 = _settings(path)
    raw = _st.read_header(path)
    mods = _modules(raw)
    wanted = list(names) if names is not None else list(read_header(path))
    for name in wanted:
        mod = name.removesuffix(".weight")
        if name.endswith(".weight") and mod in mods:
            parts = dict(_st.iter_tensors(path, list(mods[mod].values())))
            parts = {k.rpartition(".")[2]: v for k, v in parts.items()}
            try:
                yield name, unpack(parts, method=method, bits=bits, group=group, v2=v2)
            except (ValueError, RuntimeError, IndexError) as exc:
                raise UnreadableWeightsError(path, f"{method} weights do not unpack ({exc})", tensor=mod) from None
        else:
            yield from _st.iter_tensors(path, [name])
