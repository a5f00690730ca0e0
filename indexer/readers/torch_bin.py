"""PyTorch ``.bin`` reader: only ever ``torch.load(weights_only=True)``.

A pickle is a program. ``weights_only=True`` refuses every global outside
torch's tensor allow-list, and there is deliberately no fallback: a file that
needs one is reported as unsafe and never loaded.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from ...registry.errors import UnreadableWeightsError, UnsafePickleError
from ._common import TensorInfo

if TYPE_CHECKING:
    import torch

__all__ = ["read_header", "iter_tensors"]

_DTYPE_CODES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}


def load_state(path: Path) -> dict[str, "torch.Tensor"]:
    import torch

    import zipfile

    try:
        # mmap keeps the storages on disk until a tensor is touched; only the
        # zip format (torch >= 1.6) supports it, older pickles load in memory.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        first = _unpickler_reason(str(exc))
        raise UnsafePickleError(
            path,
            f"refused to unpickle: the file needs code beyond plain tensors ({first}). "
            "mothertree only loads .bin files with torch.load(weights_only=True); "
            "convert it to safetensors from a trusted environment",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UnreadableWeightsError(path, f"not a readable PyTorch checkpoint ({exc})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise UnreadableWeightsError(path, "expected a mapping of parameter names to tensors")
    return obj


def _unpickler_reason(message: str) -> str:
    """What the weights-only unpickler objected to, without torch's hint on loading unsafely."""
    _, sep, rest = message.partition("WeightsUnpickler error:")
    if sep:
        reason = rest.split("Check the documentation")[0]
        reason = " ".join(reason.split())
        if reason:
            return reason
    return "an object that is not a plain tensor"


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Names, dtypes and shapes. A pickle has no separate header, so this maps the storages."""
    path = Path(path)
    out = {}
    for name, t in load_state(path).items():
        code = _DTYPE_CODES.get(str(t.dtype).removeprefix("torch."))
        if code is None:
            raise UnreadableWeightsError(path, f"unsupported dtype {t.dtype}", tensor=name)
        out[name] = TensorInfo(name, code, tuple(t.shape), str(path), t.numel() * t.element_size())
    return out


def iter_tensors(
    path: str | os.PathLike, names: Iterable[str] | None = None
) -> Iterator[tuple[str, "torch.Tensor"]]:
    state = load_state(Path(path))
    for name in names if names is not None else list(state):
        yield name, state[name]
