"""Read a model once, tensor by tensor, into everything the registry stores.

``scan_model`` is the single pass over the weights: role assignment,
statistics and digests for every stored tensor, and a hook that receives each
*canonical* tensor (``[out, in]``, fused projections split) for fingerprinting.
It returns plain data; the registry writes it in one transaction.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..progress import Progress, note_read
from .readers import WeightSource, iter_tensors, open_source, read_header
from .roles import IDENTITY_ROLES, assign_role, canonical_parts, detect_architecture
from .stats import tensor_digest, tensor_statistics

if TYPE_CHECKING:
    import torch

__all__ = ["TensorRecord", "ModelScan", "scan_model", "CanonicalVisitor", "Judge"]

#: Called with ``(role, block, tensor)`` for each learned canonical weight or bias part.
CanonicalVisitor = Callable[[str, "int | None", str, "torch.Tensor"], None]
#: Why a canonical ``[out, in]`` weight can carry no evidence of lineage, or ``None`` when it can.
Judge = Callable[["torch.Tensor"], "str | None"]


@dataclass(frozen=True)
class TensorRecord:
    name: str
    role: str
    block: int | None
    part: str
    shape: tuple[int, ...]
    dtype: str
    size_bytes: int
    digest: str
    mean: float | None
    std: float | None
    kurtosis: float | None
    distinct_values: int
    sample_size: int
    #: The judge's verdict on the identity matrices this tensor holds (its canonical parts):
    #: ``None`` when not judged (not an identity weight matrix, or no judge was given).
    informative: bool | None = None
    #: Why it is not informative (the first degenerate part, named when the tensor is fused).
    degenerate_reason: str | None = None


@dataclass(frozen=True)
class ModelScan:
    """Everything learned about a model from one pass over its files."""

    source: WeightSource
    architecture: str
    model_class: str | None
    model_type: str | None
    num_blocks: int | None
    hidden_size: int | None
    mlp_width: int | None
    vocab_size: int | None
    num_parameters: int
    dtype: str | None
    content_digest: str
    declared_base_models: tuple[str, ...]
    tensors: tuple[TensorRecord, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def role_counts(self) -> dict[str, int]:
        return dict(Counter(t.role for t in self.tensors))


def _declared_bases(root: Path, warnings: list[str]) -> tuple[str, ...]:
    """``base_model`` from the model card's YAML header, when the folder has a README.

    A malformed card is metadata noise, never an indexing failure: it adds a
    warning and declares nothing.
    """
    from .model_card import read_model_card

    card = read_model_card(root)
    if card.problem:
        warnings.append(card.problem)
    return card.base_models


def _first(cfg: dict[str, Any], *keys: str) -> int | None:
    for k in keys:
        v = cfg.get(k)
        if isinstance(v, int):
            return v
    text = cfg.get("text_config")
    if isinstance(text, dict):
        return _first(text, *keys)
    return None


def scan_model(
    path: str | os.PathLike | WeightSource,
    *,
    visit: CanonicalVisitor | None = None,
    judge: Judge | None = None,
    progress: Progress | None = None,
    label: str | None = None,
) -> ModelScan:
    """Read every tensor once and return the model's records.

    Parameters
    ----------
    path : path or WeightSource
        A model folder, cache repo or weight file (see :func:`indexer.readers.open_source`).
    visit : callable, optional
        Receives each learned canonical tensor part; fingerprinting hooks in here
        so the weights are read only once.
    judge : callable, optional
        Judges each identity weight matrix (the canonical parts a
        :class:`~mothertree.indexer.streaming.StreamingWeightMap` serves) in this
        same pass; its verdict goes on the tensor's record, so a streamed test
        can leave degenerate tensors out without reading the model again.
    progress : Progress, optional
        Told the bytes read so far after each tensor (read events).
    label : str, optional
        What those events call the model (default: the folder's or file's name).
    """
    source = path if isinstance(path, WeightSource) else open_source(path)
    infos = read_header(source)
    config = source.config or {}
    architecture = detect_architecture(config, infos)
    warnings: list[str] = []
    label = label or Path(source.root).name
    records = _read_tensors(
        source, infos, architecture, config, visit, judge, warnings,
        lambda done, total: note_read(progress, label, done, total),
    )
    return _summarise(source, architecture, config, records, warnings)


def _read_tensors(
    source: WeightSource, infos: dict[str, Any], architecture: str, config: dict[str, Any],
    visit: CanonicalVisitor | None, judge: Judge | None, warnings: list[str], read: Callable[[int, int], None],
) -> list[TensorRecord]:
    """One record per stored tensor (statistics and digest); each learned canonical part goes to ``visit``.

    Each tensor's SHA-256, statistics and degenerate verdict run on a second
    thread (hashlib, torch and numpy release the GIL) while this one computes
    its sketches: on one torch thread each, the two halves keep two cores busy.
    """
    from concurrent.futures import ThreadPoolExecutor

    records: list[TensorRecord] = []
    total = sum(i.size_bytes for i in infos.values())
    done = 0
    with ThreadPoolExecutor(1, thread_name_prefix="mothertree-digest") as helper:
        for name, tensor in iter_tensors(source, infos):
            digest = helper.submit(tensor_digest, tensor)
            stats_of = helper.submit(tensor_statistics, tensor)
            a = assign_role(name, architecture)
            info = infos[name]
            parts = _parts(name, tensor, a, info, architecture, config, visit is not None or judge is not None,
                           warnings)
            verdict = helper.submit(_verdict, judge, parts, architecture, a.part, a.role)
            if visit is not None:
                for role, part in parts.items():
                    visit(role, a.block, a.part, part)
            stats = stats_of.result()
            informative, why = verdict.result()
            records.append(
                TensorRecord(
                    name, a.role, a.block, a.part, info.shape, info.dtype, info.size_bytes, digest.result(),
                    stats.mean, stats.std, stats.kurtosis, stats.distinct_values, stats.sample_size,
                    informative, why,
                )
            )
            done += info.size_bytes
            read(done, total)
    return records


def _parts(
    name: str, tensor: "torch.Tensor", a: Any, info: Any, architecture: str, config: dict[str, Any],
    wanted: bool, warnings: list[str],
) -> dict[str, "torch.Tensor"]:
    """The tensor's learned canonical parts (to sketch and judge), keyed by role; none unless ``wanted``."""
    if wanted and a.learned and a.role != "other":
        try:
            return canonical_parts(a, tensor, architecture=architecture, config=config)
        except (RuntimeError, ValueError, IndexError):
            # a shape that cannot be this role (a scalar "embedding"): not fingerprinted
            warnings.append(f"tensor '{name}' of shape {list(info.shape)} does not fit role {a.role}: "
                            "not fingerprinted")
    elif wanted and a.learned and architecture == "unknown" and tensor.ndim == 2:
        return {"other": tensor}
    return {}


def _summarise(
    source: WeightSource, architecture: str, config: dict[str, Any], records: list[TensorRecord], warnings: list[str],
) -> ModelScan:
    """The model-level facts of a scan: digest, shape, dtype, declared bases, warnings."""
    model_hash = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.name):
        model_hash.update(f"{r.name}\0{r.digest}\n".encode())
    learned = [r for r in records if r.part != "buffer"]
    buffers = [r.name for r in records if r.part == "buffer"]
    if buffers:
        warnings.append(f"{len(buffers)} fixed buffer(s) not learned, excluded from evidence: {', '.join(buffers[:3])}")
    if architecture == "unknown":
        warnings.append(
            f"unknown architecture (model_type={config.get('model_type')!r}): "
            "tensors indexed with role 'other', 2-D tensors compared by shape"
        )
    # Only matrices say anything about widths: a scalar named like an embedding says nothing.
    embed = next((r for r in learned if r.role == "embed.tokens" and r.part == "weight" and len(r.shape) == 2), None)
    mlp = next(
        (r for r in learned if r.role in ("mlp.up", "mlp.in", "mlp.gate", "mlp.gate_up") and r.part == "weight"
         and len(r.shape) == 2),
        None,
    )
    blocks = [r.block for r in learned if r.block is not None and r.role != "other"]
    dtype_counts = Counter(r.dtype for r in learned)
    hidden = _first(config, "hidden_size", "n_embd", "d_model") or (embed.shape[1] if embed else None)
    mlp_width = _first(config, "intermediate_size", "n_inner")
    if mlp_width is None and mlp is not None:
        mlp_width = mlp.shape[1] if architecture == "gpt2" else mlp.shape[0]
        if mlp.role == "mlp.gate_up":
            mlp_width //= 2
    archs = config.get("architectures")
    return ModelScan(
        source=source,
        architecture=architecture,
        model_class=archs[0] if isinstance(archs, list) and archs else None,
        model_type=config.get("model_type"),
        num_blocks=(max(blocks) + 1) if blocks else _first(config, "num_hidden_layers", "n_layer"),
        hidden_size=hidden,
        mlp_width=mlp_width,
        vocab_size=_first(config, "vocab_size") or (embed.shape[0] if embed else None),
        num_parameters=sum(_numel(r.shape) for r in learned),
        dtype=dtype_counts.most_common(1)[0][0] if dtype_counts else None,
        content_digest=model_hash.hexdigest(),
        declared_base_models=_declared_bases(
            Path(source.root) if Path(source.root).is_dir() else Path(source.root).parent, warnings
        ),
        tensors=tuple(records),
        warnings=tuple(warnings),
    )


def _verdict(
    judge: Judge | None, parts: dict[str, "torch.Tensor"], architecture: str, part: str, stored_role: str,
) -> tuple[bool | None, str | None]:
    """``(informative, reason)`` of one stored tensor: its identity matrices, judged (``None``: none to judge).

    A fused tensor (``attn.qkv``) is one stored row: one degenerate part marks
    all of it, so the streamed tests leave out every part (never evidence
    from a degenerate one, at the cost of its siblings).
    """
    if judge is None or part != "weight":
        return None, None
    matrices = {role: t for role, t in parts.items()
                if t.ndim == 2 and (role in IDENTITY_ROLES or (architecture == "unknown" and role == "other"))}
    fused = set(matrices) != {stored_role}
    for role, t in matrices.items():
        why = judge(t)
        if why is not None:
            return False, f"{role}: {why}" if fused else why
    return (True, None) if matrices else (None, None)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
