"""Streaming weight access: a model's identity weights as a lazy map, read on demand.

:func:`mothertree.indexer.weights.load_weight_map` reads every identity
tensor into memory in float32: 28 GB for a 7B model. Everything after
indexing (tests, relation typing, direction, tree distances) only ever needs
the current block, so :class:`StreamingWeightMap` is a read-only mapping
``(role, block) -> float32 [out, in]`` that knows every key and shape from the
file headers alone and converts one stored tensor when it is asked for. The
files stay memory-mapped (safetensors through ``safe_open``; ``.bin`` through
``torch.load(mmap=True, weights_only=True)``): their pages are page cache,
not the process's anonymous memory, and nothing is kept after the caller
drops the tensor it got.

Examples
--------
>>> wm = StreamingWeightMap("/path/to/model")            # doctest: +SKIP
>>> wm.shape_of(("mlp.up", 0)), wm.blocks                # doctest: +SKIP
((11008, 4096), (0, 1, ..., 31))
>>> for key in wm.block_keys(0): t = wm[key]             # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Iterator

from ..threads import wide
from .readers import WeightSource, open_source, read_header
from .roles import IDENTITY_ROLES, assign_role, canonical_parts, detect_architecture

if TYPE_CHECKING:
    import torch

__all__ = ["StreamingWeightMap", "Key"]

Key = tuple[str, "int | None"]


class StreamingWeightMap(Mapping):
    """A model's identity weights, ``(role, block) -> float32 [out, in]``, read tensor by tensor.

    Keys and shapes come from the headers (no tensor bytes read). Each
    ``wm[key]`` reads the stored tensor from its memory map, splits fused
    projections, transposes Conv1D weights and converts to a fresh
    contiguous float32 tensor; nothing is cached, so memory is bounded by what
    the caller holds. Iteration goes by block (model-level tensors first), the
    order in which a block-by-block test reads them.

    Parameters
    ----------
    path : str, path or WeightSource
        Anything :func:`~mothertree.indexer.readers.open_source` accepts.
    """

    def __init__(self, path: str | os.PathLike | WeightSource) -> None:
        import torch

        self.source = path if isinstance(path, WeightSource) else open_source(path)
        self._infos = read_header(self.source)
        self.architecture = detect_architecture(self.source.config, self._infos)
        # key -> (stored tensor name, canonical role inside it)
        self._where: dict[Key, tuple[str, str]] = {}
        self._shapes: dict[Key, tuple[int, ...]] = {}
        for name, info in self._infos.items():
            a = assign_role(name, self.architecture)
            if not a.learned or a.part != "weight":
                continue
            if self.architecture == "unknown":
                if len(info.shape) == 2:
                    key = (f"other:{name}", a.block)
                    self._where[key] = (name, "")
                    self._shapes[key] = tuple(info.shape)
                continue
            meta = torch.empty(info.shape, device="meta")
            parts = canonical_parts(a, meta, architecture=self.architecture, config=self.source.config)
            for role, part in parts.items():
                if role in IDENTITY_ROLES and part.ndim == 2:
                    self._where[(role, a.block)] = (name, role)
                    self._shapes[(role, a.block)] = tuple(part.shape)
        self._order = sorted(self._where, key=lambda k: (-1 if k[1] is None else k[1], k[0]))
        #: Keys judged degenerate, with why (every other key was judged informative); ``None`` until
        #: the caller sets it. Lineage's tests leave these keys out without reading them (their
        #: ``drop_degenerate``); the registry fills it from the verdicts stored when it indexed.
        self.degenerate: dict[Key, str] | None = None
        self._handles: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- Mapping ---------------------------------------------------------
    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __getitem__(self, key: Key) -> "torch.Tensor":
        if key not in self._where:
            raise KeyError(key)
        name, role = self._where[key]
        raw = self._raw(name)
        stored = raw
        if role:
            a = assign_role(name, self.architecture)
            stored = canonical_parts(a, raw, architecture=self.architecture, config=self.source.config)[role]
        with wide(stored.numel()):
            out = stored.float().contiguous()
        if out.untyped_storage().data_ptr() == raw.untyped_storage().data_ptr():
            out = out.clone()  # never hand out a view of the memory map: the caller owns its tensor
        return out

    # -- metadata (no tensor bytes) --------------------------------------
    def shape_of(self, key: Key) -> tuple[int, ...]:
        """The canonical ``[out, in]`` shape of ``key``, from the header."""
        return self._shapes[key]

    def stored_name(self, key: Key) -> str:
        """The name, in the files, of the stored tensor ``key`` is read from (a fused one serves several keys)."""
        return self._where[key][0]

    @property
    def blocks(self) -> tuple[int, ...]:
        """Block indices, in increasing order."""
        return tuple(sorted({b for _, b in self._where if b is not None}))

    def block_keys(self, block: int | None) -> tuple[Key, ...]:
        """Keys of one block (``None``: the model-level tensors)."""
        return tuple(k for k in self._order if k[1] == block)

    def stored_dtypes(self) -> dict[Key, str]:
        """The stored dtype code (``"BF16"``, ``"F32"``, ...) of each key."""
        return {k: self._infos[name].dtype for k, (name, _) in self._where.items()}

    @property
    def float32_bytes(self) -> int:
        """Bytes that every tensor would take in float32 at once (what a dict would hold)."""
        n = 0
        for shape in self._shapes.values():
            size = 1
            for d in shape:
                size *= d
            n += 4 * size
        return n

    @property
    def n_params(self) -> int:
        return self.float32_bytes // 4

    def stored_names(self) -> tuple[str, ...]:
        """Every tensor name in the files (not only identity weights)."""
        return tuple(self._infos)

    def raw(self, name: str) -> "torch.Tensor":
        """One stored tensor by its name in the files, as stored (dtype, layout)."""
        if name not in self._infos:
            raise KeyError(name)
        return self._raw(name)

    def to_dict(self) -> dict[Key, "torch.Tensor"]:
        """Every tensor in memory (what ``load_weight_map`` returns): only for small models."""
        return {k: self[k] for k in self._order}

    def close(self) -> None:
        """Drop the open memory maps (they reopen on the next access)."""
        with self._lock:
            self._handles.clear()

    # -- reading -----------------------------------------------------------
    def _raw(self, name: str) -> "torch.Tensor":
        info = self._infos[name]
        if self.source.format not in ("safetensors", "bin"):
            # GGUF, GPTQ/AWQ, ONNX, PEFT: the format's own reader dequantizes (or rebuilds) the tensor
            from .readers import iter_tensors

            return next(iter_tensors(self.source, {name: info}))[1]
        with self._lock:
            handle = self._handles.get(info.file)
            if handle is None:
                handle = self._open(info.file)
                self._handles[info.file] = handle
        if self.source.format == "safetensors":
            from safetensors import SafetensorError

            from ..registry.errors import UnreadableWeightsError

            try:
                return handle.get_tensor(name)
            except SafetensorError as exc:
                raise UnreadableWeightsError(info.file, f"safetensors could not read it ({exc})",
                                             tensor=name) from None
        return handle[name]

    def _open(self, file: str) -> Any:
        if self.source.format == "safetensors":
            from safetensors import safe_open

            return safe_open(file, framework="pt")
        from .readers.torch_bin import load_state

        return load_state(file)

    def __repr__(self) -> str:
        return f"StreamingWeightMap({self.source.root!r}, {len(self)} tensors, {len(self.blocks)} blocks)"
