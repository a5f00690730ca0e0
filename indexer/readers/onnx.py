"""ONNX reader: initializers read without running the graph, weights back in ``[out, in]``.

``onnx.load(path, load_external_data=False)`` gives the graph and the
initializers' descriptions; ``onnx.numpy_helper.to_array(tensor, base_dir)``
reads one initializer (from the external-data file when the model keeps its
weights outside the protobuf). Exporters store a ``Linear`` weight for
``MatMul`` as ``[in, out]`` (``x @ W``) and for ``Gemm`` as ``[out, in]`` when
``transB=1``; the consuming node decides, and every weight comes back
``[out, in]`` like its PyTorch parameter.

Names: an initializer that kept its PyTorch name (``model.layers.0.mlp.up_proj.weight``)
keeps it. A renamed one (``onnx::MatMul_812``) takes the name of the node that
consumes it when the exporter named nodes after modules
(``/model/layers.0/mlp/up_proj/MatMul`` -> ``model.layers.0.mlp.up_proj.weight``);
otherwise it keeps its ONNX name and gets role ``other`` (compared by shape).

Int8 weights (``DequantizeLinear`` in front of a MatMul/Gemm, QDQ format, or
``QLinearMatMul``/``MatMulInteger`` with their scales and zero points) are
dequantized with their scale and zero point; their dtype stays ``I8``/``U8``,
which marks the model as quantized.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ...registry.errors import UnreadableWeightsError
from ._common import TensorInfo

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["read_header", "iter_tensors"]

_DTYPES = {1: "F32", 10: "F16", 16: "BF16", 11: "F64", 3: "I8", 2: "U8", 5: "I16", 6: "I32", 7: "I64", 9: "BOOL"}
_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "I32": 4, "I64": 8, "BOOL": 1}
_NODE_PATH = re.compile(r"^/?(?P<path>.+)/[A-Za-z]+(?:_\d+)?$")


@dataclass(frozen=True)
class _Plan:
    name: str          # the name we report
    init: str          # initializer holding the (possibly quantized) values
    transpose: bool    # stored [in, out]
    scale: str | None = None
    zero_point: str | None = None
    axis: int = 1


def _load(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends, not one base class
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnreadableWeightsError(path, f"not a readable ONNX model ({type(exc).__name__}: {first})") from None


def _attr(node, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _name_from_node(node_name: str) -> str | None:
    m = _NODE_PATH.match(node_name or "")
    if not m:
        return None
    return m.group("path").replace("/", ".") + ".weight"


def _plan(model) -> dict[str, _Plan]:
    """Which initializer is which weight, in which layout, with which dequantization."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    dq: dict[str, tuple[str, str | None, str | None, int]] = {}  # DequantizeLinear output -> (x, scale, zp, axis)
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input and n.input[0] in inits:
            dq[n.output[0]] = (n.input[0], n.input[1] if len(n.input) > 1 else None,
                               n.input[2] if len(n.input) > 2 and n.input[2] else None, int(_attr(n, "axis", 1)))
    plans: dict[str, _Plan] = {}
    used: set[str] = set()

    def add(init: str, node, transpose: bool, scale=None, zp=None, axis=1) -> None:
        t = inits[init]
        keep = "." in init and not init.startswith("onnx::")
        name = init if keep else (_name_from_node(node.name) or init)
        if name in plans:
            name = init
        plans[name] = _Plan(name, init, transpose and len(t.dims) == 2, scale, zp, axis)
        used.add(init)

    for n in g.node:
        if n.op_type in ("MatMul", "Gemm") and len(n.input) >= 2:
            b = n.input[1]
            transpose = n.op_type == "MatMul" or not _attr(n, "transB", 0)
            if b in inits and b not in used:
                add(b, n, transpose)
            elif b in dq and dq[b][0] not in used:
                x, s, z, axis = dq[b]
                add(x, n, transpose, s, z, axis)
            if n.op_type == "Gemm" and len(n.input) > 2 and n.input[2] in inits and n.input[2] not in used:
                bias_name = _name_from_node(n.name)
                name = n.input[2] if "." in n.input[2] and not n.input[2].startswith("onnx::") else (
                    bias_name[: -len("weight")] + "bias" if bias_name else n.input[2])
                plans[name] = _Plan(name, n.input[2], False)
                used.add(n.input[2])
        elif n.op_type in ("QLinearMatMul", "MatMulInteger"):
            bi, si, zi = (3, 4, 5) if n.op_type == "QLinearMatMul" else (1, None, 3)
            if len(n.input) > bi and n.input[bi] in inits and n.input[bi] not in used:
                add(n.input[bi], n, True, n.input[si] if si is not None else None,
                    n.input[zi] if len(n.input) > zi and n.input[zi] else None, 1)
    scalars = {p.scale for p in plans.values()} | {p.zero_point for p in plans.values()}
    for name, t in inits.items():
        if name in used or name in scalars or len(t.dims) == 0:
            continue
        if any(name == v[1] or name == v[2] for v in dq.values()):
            continue
        plans.setdefault(name, _Plan(name, name, False))
    return plans


def _external(t, base: Path) -> tuple[Path, int, int] | None:
    import onnx

    if t.data_location != onnx.TensorProto.EXTERNAL:
        return None
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location", "")
    f = (base / loc).resolve()
    return f, int(info.get("offset", 0) or 0), int(info.get("length", -1) or -1)


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Weights in PyTorch layout, named, with storage dtype; external-data files and ranges checked."""
    path = Path(path)
    model = _load(path)
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, TensorInfo] = {}
    for name, p in _plan(model).items():
        t = inits[p.init]
        dtype = _DTYPES.get(t.data_type)
        if dtype is None:
            raise UnreadableWeightsError(path, f"initializer data type {t.data_type} is not supported", tensor=p.init)
        shape = tuple(int(d) for d in t.dims)
        if any(d < 0 for d in shape):
            raise UnreadableWeightsError(path, f"initializer has a negative dimension {list(shape)}", tensor=p.init)
        if p.transpose:
            shape = shape[::-1]
        numel = 1
        for d in shape:
            numel *= d
        ext = _external(t, path.parent)
        if ext is not None:
            f, offset, length = ext
            if not f.is_file():
                raise UnreadableWeightsError(
                    f, f"external data file of {path.name} is missing (initializer {p.init}): "
                    "copy it next to the .onnx file", tensor=p.init,
                )
            need = numel * _BYTES[dtype]
            if offset + max(length, need) > f.stat().st_size or (length >= 0 and length != need):
                raise UnreadableWeightsError(
                    f, f"external data range offset {offset}, length {length} does not hold the {need} bytes "
                    f"of shape {list(shape)} {dtype} in a {f.stat().st_size}-byte file", tensor=p.init,
                )
        out[name] = TensorInfo(name, dtype, shape, str(path), numel * _BYTES[dtype])
    return out


def _array(t, base: Path, path: Path) -> "np.ndarray":
    from onnx import numpy_helper

    try:
        return numpy_helper.to_array(t, base_dir=str(base))
    except (OSError, ValueError) as exc:
        raise UnreadableWeightsError(path, f"initializer data unreadable ({exc})", tensor=t.name) from None


def iter_tensors(
    path: str | os.PathLike, names: Iterable[str] | None = None
) -> Iterator[tuple[str, "torch.Tensor"]]:
    """Yield ``(name, float32 tensor)`` in ``[out, in]``; int8 weights dequantized."""
    import numpy as np
    import torch

    path = Path(path)
    model = _load(path)
    inits = {t.name: t for t in model.graph.initializer}
    plans = _plan(model)
    for name in names if names is not None else list(plans):
        p = plans[name]
        a = _array(inits[p.init], path.parent, path)
        if p.scale is not None:
            scale = _array(inits[p.scale], path.parent, path).astype(np.float32)
            zp = _array(inits[p.zero_point], path.parent, path).astype(np.float32) if p.zero_point else np.float32(0)
            if scale.ndim == 1 and a.ndim == 2:  # per-axis: broadcast along the quantized axis
                shape = [1, 1]
                shape[p.axis % 2] = -1
                scale, zp = scale.reshape(shape), (zp.reshape(shape) if np.ndim(zp) == 1 else zp)
            a = (a.astype(np.float32) - zp) * scale
        floating = a.dtype.kind == "f" or a.dtype.name == "bfloat16"
        t = torch.from_numpy(np.array(a, dtype=np.float32 if floating else a.dtype, copy=True))
        yield name, (t.T.contiguous() if p.transpose else t)
