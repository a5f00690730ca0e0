"""Types shared by the weight readers."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TensorInfo", "SAFETENSORS_DTYPES"]

#: safetensors dtype code -> (torch dtype name, bytes per element)
SAFETENSORS_DTYPES: dict[str, tuple[str, float]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}


@dataclass(frozen=True)
class TensorInfo:
    """What a file's header says about one tensor, before any of its bytes are read."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    size_bytes: int
    #: Absolute byte offset of the tensor's data in ``file``, where the format has one place for it.
    offset: int | None = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n
