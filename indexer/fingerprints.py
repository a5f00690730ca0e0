"""Fixed-size fingerprints of a model's weights, for nearest-neighbour retrieval.

Every identity-carrying weight matrix (embeddings, attention, MLP: see
:data:`~mothertree.indexer.roles.IDENTITY_ROLES`) becomes a ``DIM``-float
unit vector, computed on the GPU when there is one, one tensor at a time,
during the single read of the weights (:class:`Fingerprinter` is a
``scan_model`` visitor). Two kinds:

``aligned``
    ``S = A · C(W) · B`` for a matrix ``W`` of shape ``[out, in]``, where
    ``C`` double-centres (removes row and column means) and ``A`` (``ROWS x
    out``) and ``B`` (``in x COLS``) are Gaussian. The inner product of two
    sketches is an unbiased estimate of the inner product of the centred
    weights, so the cosine of sketches tracks the cosine of weights: a
    fine-tune, a merged LoRA, a quantized copy, a merge or a duplicate lands
    next to its source. Double centring matters: embedding rows share a
    frequency-driven offset in the *token* axis, which every model with the
    same tokenizer shares, and it would otherwise make unrelated models
    look alike.

``invariant``
    The same sketch applied to products that hidden-unit permutations
    cancel: ``W_down·W_up`` and ``W_down·W_gate`` (GLU), ``W_out·W_in``
    (GPT-2/BERT MLPs), ``W_qᵀ·W_k`` and ``W_o·W_v`` (with grouped-query heads
    summed per key/value group), each ``[d, d]`` in the residual basis,
    with the diagonal removed before centring. Permuting MLP neurons or
    attention heads (and rescaling up/down pairs) leaves them unchanged, so
    a permuted copy still lands next to its source. The diagonal goes
    because trained attention has copying heads: a multiple of the identity
    that independent models share in *any* basis. Embeddings live in the
    residual basis, which hidden-unit permutations do not touch, so their
    aligned sketch is also their invariant one. Basis-free statistics such
    as Gram matrices ``E·Eᵀ`` are deliberately not used: they measure what
    a model learned from its data, and two independent models trained on
    the same data share that.

Projections are generated in chunks of ``CHUNK`` indices, each from a
``torch.Generator`` seeded by (``SEED``, axis, chunk number) on the CPU and
then moved to the device. The projection for index ``i`` therefore depends
on ``i`` alone, not on the matrix shape: equal shapes always give
comparable sketches, and so do shapes that share a prefix (a vocabulary
extended by new tokens, MLP widths pruned from the end). Matrices are
processed in row chunks of at most ``2**24`` elements, so memory stays
bounded by one stored tensor plus one chunk.

Tensors that are not learned (buffers such as position ids or rotary
caches, which ``scan_model`` marks) never reach the fingerprinter; biases,
norms and the LM head are skipped and counted in
:attr:`ModelFingerprint.skipped`. A model of unknown architecture is still
fingerprinted: each of its 2-D tensors gets an aligned sketch with role
``other``, comparable with other models' tensors of the same shape.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..vocabulary import PRODUCTS
from .roles import IDENTITY_ROLES

if TYPE_CHECKING:
    import torch

    from .readers import WeightSource

__all__ = [
    "DIM",
    "KINDS",
    "PRODUCTS",
    "LayerFingerprint",
    "ModelFingerprint",
    "Fingerprinter",
    "resolve_device",
    "aligned_sketch",
    "product_sketch",
    "fingerprint_model",
    "role_group",
]

#: Rows and columns of every sketch; ``DIM = ROWS * COLS`` stays under pgvector's 2,000.
ROWS = 32
COLS = 32
DIM = ROWS * COLS
#: Fixed seed of every projection (changing it makes stored fingerprints incomparable).
SEED = 0x6D7472
#: Indices per seeded projection chunk.
CHUNK = 4096
#: Largest slice of a matrix converted to float32 at once.
_CHUNK_ELEMENTS = 1 << 22
#: Largest matrix side that gets a sketch: its projection costs ``32 * 4`` bytes
#: per index (256 MiB at this limit), far above any real vocabulary or width.
MAX_SKETCH_DIM = 1 << 21

KINDS: tuple[str, ...] = ("aligned", "invariant")

_PRODUCT_INPUTS = frozenset(r for pair in PRODUCTS.values() for r in pair)
_RESIDUAL_ROLES = ("embed.tokens", "embed.positions")


def role_group(role: str) -> str:
    """``"attn"``, ``"mlp"``, ``"embed"`` or ``"other"``: how layer matches are reported."""
    head = role.split(".", 1)[0]
    return head if head in ("attn", "mlp", "embed") else "other"


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``.

    Raises
    ------
    ValueError
        For a value other than auto/cpu/cuda, or cuda without a GPU.
    """
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be one of auto, cpu, cuda; got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no GPU; use --device cpu or auto")
    return device


@dataclass(frozen=True, eq=False)
class LayerFingerprint:
    """One sketch of one role in one block.

    Attributes
    ----------
    kind : str
        ``"aligned"`` or ``"invariant"``.
    role : str
        A canonical role (aligned), a product name from :data:`PRODUCTS`
        (invariant), or an embedding role (both kinds).
    block : int or None
        Transformer block, ``None`` for embeddings.
    shape : tuple of int
        Shape of the sketched matrix (the product's shape for invariant sketches).
    vector : ndarray of shape (DIM,), float32
        Unit-norm sketch.
    """

    kind: str
    role: str
    block: int | None
    shape: tuple[int, int]
    vector: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "role": self.role,
            "block": self.block,
            "shape": list(self.shape),
            "dim": int(self.vector.shape[0]),
        }


@dataclass(frozen=True, eq=False)
class ModelFingerprint:
    """Every layer sketch of a model, plus one model vector per kind.

    Attributes
    ----------
    layers : tuple of LayerFingerprint
    model_vectors : tuple of (kind, ndarray)
        Normalised mean of the kind's unit layer vectors; a kind with no
        layers (invariant, for an unknown architecture) is absent.
    skipped : tuple of (str, int)
        Visited tensors not fingerprinted, counted by reason.
    notes : tuple of str
        Products that could not be formed (a missing partner, unknown head layout).
    device : str
        Where the sketches were computed.
    """

    layers: tuple[LayerFingerprint, ...]
    model_vectors: tuple[tuple[str, np.ndarray], ...]
    skipped: tuple[tuple[str, int], ...]
    notes: tuple[str, ...]
    device: str

    def model_vector(self, kind: str) -> np.ndarray | None:
        return dict(self.model_vectors).get(kind)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "dim": DIM,
            "kinds": [k for k, _ in self.model_vectors],
            "layers": [layer.to_dict() for layer in self.layers],
            "skipped": dict(self.skipped),
            "notes": list(self.notes),
        }


class _Projections:
    """Seeded Gaussian projections, prefix-stable, cached per axis on one device.

    Each is kept with one extra all-ones row (left) or column (right): one
    matrix product then gives the sketch and the row and column sums that
    double centring needs, instead of separate passes over the weights.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self._cache: dict[str, "torch.Tensor"] = {}

    def get(self, axis: str, n: int) -> "torch.Tensor":
        """Rows ``(ROWS, n)`` for axis ``"left"``, ``(n, COLS)`` for ``"right"``."""
        aug = self.augmented(axis, n)
        return aug[:ROWS] if axis == "left" else aug[:, :COLS]

    def augmented(self, axis: str, n: int) -> "torch.Tensor":
        """``(ROWS + 1, n)`` for ``"left"`` (last row ones), ``(n, COLS + 1)`` for ``"right"`` (last column ones)."""
        import torch

        if not 0 <= n <= MAX_SKETCH_DIM:
            raise ValueError(f"projection size: expected 0..{MAX_SKETCH_DIM} indices, got {n}")
        have = self._cache.get(axis)
        have_n = 0 if have is None else (have.shape[1] if axis == "left" else have.shape[0])
        if have_n < n:
            chunks = []
            for c in range(have_n // CHUNK, -(-n // CHUNK)):
                g = torch.Generator(device="cpu")
                g.manual_seed(_chunk_seed(axis, c))
                width = ROWS if axis == "left" else COLS
                chunk = torch.randn(width, CHUNK, generator=g, dtype=torch.float32)
                chunks.append(torch.cat([chunk, torch.ones(1, CHUNK)]))
            # have_n is always a multiple of CHUNK, so whole chunks are appended.
            new = torch.cat(chunks, dim=1).to(self.device)
            if axis == "right":
                new = new.T.contiguous()
            have = new if have is None else torch.cat([have, new], dim=1 if axis == "left" else 0)
            self._cache[axis] = have
        return have[:, :n] if axis == "left" else have[:n]


def _chunk_seed(axis: str, chunk: int) -> int:
    digest = hashlib.blake2b(f"{SEED}:{axis}:{chunk}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def _rows_per_chunk(cols: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(cols, 1))


def _finish(full: "torch.Tensor", shape: tuple[int, int], A: "torch.Tensor", B: "torch.Tensor") -> np.ndarray:
    """The unit sketch ``A·C(X)·B`` of the double-centred ``X`` from the augmented ``[A; 1ᵀ]·X·[B, 1]``.

    ``full`` is ``[[AXB, AX1], [1ᵀXB, 1ᵀX1]]``; with ``r = X1/n_in`` (row
    means), ``m = Xᵀ1/n_out`` (column means) and ``g`` the grand mean,
    ``A (X - r1ᵀ - 1mᵀ + g11ᵀ) B = AXB - (Ar)(1ᵀB) - (A1)(mᵀB) + g(A1)(1ᵀB)``.
    """
    n_out, n_in = shape
    a1 = A.sum(dim=1)
    b1 = B.sum(dim=0)
    a_rowmean = full[:ROWS, COLS] / n_in
    colmean_b = full[ROWS, :COLS] / n_out
    grand = full[ROWS, COLS] / (n_out * n_in)
    s = full[:ROWS, :COLS] - a_rowmean[:, None] * b1[None, :] - a1[:, None] * colmean_b[None, :]
    s = s + grand * a1[:, None] * b1[None, :]
    v = s.reshape(-1).double().cpu().numpy()
    norm = np.linalg.norm(v)
    with np.errstate(invalid="ignore"):
        return (v / norm if norm > 0 else v).astype(np.float32)


def aligned_sketch(
    weight: "torch.Tensor", *, device: str = "cpu", projections: _Projections | None = None
) -> np.ndarray:
    """Unit sketch ``A · C(W) · B`` of one matrix (``C`` double-centres).

    One pass over ``W`` in row chunks, each converted to float32 once and
    multiplied by the augmented left projection ``[A; 1ᵀ]``: the product holds
    ``A·W`` and the column sums; the row sums come out of ``(A·W)·1``.

    Parameters
    ----------
    weight : Tensor of shape (out, in)
        Any float or integer dtype; converted to float32 one row chunk at a time.
    device : str
        ``"cpu"`` or ``"cuda"`` (already resolved).

    Returns
    -------
    ndarray of shape (DIM,), float32
        Zero when the centred matrix is zero (a constant matrix carries no identity).

    Examples
    --------
    >>> import torch
    >>> w = torch.randn(64, 48, generator=torch.Generator().manual_seed(0))
    >>> v = aligned_sketch(w)
    >>> v.shape, round(float(v @ aligned_sketch(w + 0.01 * torch.randn(64, 48))), 2) >= 0.99
    ((1024,), True)
    """
    import torch

    if weight.ndim != 2:
        raise ValueError(f"aligned_sketch expects a 2-D matrix, got shape {tuple(weight.shape)}")
    proj = projections or _Projections(device)
    out, inn = weight.shape
    A = proj.augmented("left", out)
    B = proj.augmented("right", inn)
    core = torch.zeros(ROWS + 1, inn, device=device)  # [A; 1ᵀ]·W
    step = _rows_per_chunk(inn)
    for i in range(0, out, step):
        w = weight[i : i + step].to(device=device, dtype=torch.float32)
        core.addmm_(A[:, i : i + step], w)
    return _finish(core @ B, (out, inn), A[:ROWS], B[:, :COLS])


def product_sketch(
    left: "torch.Tensor",
    right: "torch.Tensor",
    *,
    device: str = "cpu",
    projections: _Projections | None = None,
) -> np.ndarray:
    """Unit sketch of ``P = left · right`` with its diagonal removed, double-centred.

    ``P`` is never formed: ``[A; 1ᵀ]·P·[B, 1] = Σ_c ([A; 1ᵀ]·L[:, c]) (R[c, :]·[B, 1])``
    over chunks ``c`` of the inner (hidden) dimension gives the sketch and the
    row, column and grand sums in two matrix products per chunk; the diagonal
    comes from the same chunks.

    Parameters
    ----------
    left : Tensor of shape (d_out, h)
    right : Tensor of shape (h, d_in)

    Returns
    -------
    ndarray of shape (DIM,), float32
    """
    import torch

    if left.ndim != 2 or right.ndim != 2 or left.shape[1] != right.shape[0]:
        raise ValueError(
            f"product_sketch expects (d_out, h) and (h, d_in) matrices, got "
            f"{tuple(left.shape)} and {tuple(right.shape)}"
        )
    proj = projections or _Projections(device)
    d_out, h = left.shape
    d_in = right.shape[1]
    A = proj.augmented("left", d_out)
    B = proj.augmented("right", d_in)
    square = d_out == d_in
    full = torch.zeros(ROWS + 1, COLS + 1, device=device)
    diag = torch.zeros(d_out if square else 0, device=device, dtype=torch.float64)
    step = _rows_per_chunk(max(d_out, d_in))
    for i in range(0, h, step):
        l = left[:, i : i + step].to(device=device, dtype=torch.float32)
        # R's rows stay as stored: no transposed copy (it cost a fifth of the time).
        r = right[i : i + step].to(device=device, dtype=torch.float32)
        full.addmm_(A @ l, r @ B)
        if square:
            diag += (l * r.T).sum(dim=1).double()
    if square:
        # remove the diagonal from the sketch and from the row, column and grand sums
        d = diag.float()
        full -= (A * d[None, :]) @ B
    return _finish(full, (d_out, d_in), A[:ROWS], B[:, :COLS])


class Fingerprinter:
    """A ``scan_model`` visitor that sketches each tensor as it is read.

    Product inputs (``mlp.down``, ``attn.q`` ...) are held, in their stored
    dtype, only until their partner in the same block arrives; a model's
    files usually store a block's tensors together, so at most a few
    tensors are held at once.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}
    config : mapping, optional
        The model's ``config.json``; its head counts let grouped-query
        attention be folded into ``W_qᵀ·W_k`` and ``W_o·W_v``.

    Examples
    --------
    >>> fp = Fingerprinter(device="cpu")                      # doctest: +SKIP
    >>> scan = scan_model("./my-model", visit=fp.visit)       # doctest: +SKIP
    >>> fingerprint = fp.finish()                             # doctest: +SKIP
    """

    def __init__(self, *, device: str = "auto", config: Mapping[str, Any] | None = None) -> None:
        self.device = resolve_device(device)
        self._config = dict(config or {})
        self._proj = _Projections(self.device)
        self._layers: list[LayerFingerprint] = []
        self._held: dict[int | None, dict[str, "torch.Tensor"]] = {}
        self._done: set[tuple[int | None, str]] = set()
        self._skipped: Counter[str] = Counter()
        self._notes: list[str] = []

    def visit(self, role: str, block: int | None, part: str, tensor: "torch.Tensor") -> None:
        """Sketch one canonical tensor (the signature of ``scan_model``'s ``visit``)."""
        if part != "weight" or tensor.ndim != 2:
            self._skipped[f"{role} {part}" if part != "weight" else f"{role} {tensor.ndim}-D"] += 1
            return
        if role not in IDENTITY_ROLES and role != "other":
            self._skipped[role] += 1
            return
        if tensor.numel() == 0 or max(tensor.shape) > MAX_SKETCH_DIM:
            # An empty matrix carries nothing; a side beyond MAX_SKETCH_DIM is no
            # real weight, and its projection alone would not fit in memory.
            self._skipped["empty" if tensor.numel() == 0 else "oversize"] += 1
            return
        shape = (int(tensor.shape[0]), int(tensor.shape[1]))
        vec = aligned_sketch(tensor, device=self.device, projections=self._proj)
        if not np.isfinite(vec).all():  # NaN or infinity in the weights: no usable sketch
            self._skipped["non-finite"] += 1
            return
        self._layers.append(LayerFingerprint("aligned", role, block, shape, vec))
        if role in _RESIDUAL_ROLES:
            self._layers.append(LayerFingerprint("invariant", role, block, shape, vec))
        if role in _PRODUCT_INPUTS:
            self._held.setdefault(block, {})[role] = tensor
            self._try_products(block)

    def _try_products(self, block: int | None) -> None:
        held = self._held[block]
        for name, (lrole, rrole) in PRODUCTS.items():
            if (block, name) in self._done or lrole not in held or rrole not in held:
                continue
            self._done.add((block, name))
            pair = self._product_inputs(name, held[lrole], held[rrole])
            if pair is None:
                self._notes.append(
                    f"block {block}: {name} skipped, head layout unknown "
                    f"({lrole} {tuple(held[lrole].shape)}, {rrole} {tuple(held[rrole].shape)}; "
                    "config.json gives num_attention_heads)"
                )
                continue
            left, right = pair
            vec = product_sketch(left, right, device=self.device, projections=self._proj)
            if not np.isfinite(vec).all():
                self._notes.append(f"block {block}: {name} skipped, its product is not finite")
                continue
            shape = (int(left.shape[0]), int(right.shape[1]))
            self._layers.append(LayerFingerprint("invariant", name, block, shape, vec))
        # Release a held input once every product it enters is done (mlp.down enters two).
        for role in [r for r in held if all((block, n) in self._done for n, pr in PRODUCTS.items() if r in pr)]:
            del held[role]

    def _product_inputs(
        self, name: str, left: "torch.Tensor", right: "torch.Tensor"
    ) -> tuple["torch.Tensor", "torch.Tensor"] | None:
        if name == "attn.qk":  # (W_q grouped)ᵀ · W_k
            q = self._group_heads(left, right.shape[0], rows=True)
            return None if q is None else (q.T, right)
        if name == "attn.ov":  # (W_o grouped) · W_v
            o = self._group_heads(left, right.shape[0], rows=False)
            return None if o is None else (o, right)
        return left, right

    def _group_heads(self, t: "torch.Tensor", kv_width: int, *, rows: bool) -> "torch.Tensor | None":
        """Sum query heads that share a key/value head, so products match the k/v width."""
        width = t.shape[0] if rows else t.shape[1]
        if width == kv_width:
            return t
        heads = self._config.get("num_attention_heads") or self._config.get("n_head")
        kv_heads = self._config.get("num_key_value_heads") or heads
        if not heads or not kv_heads or width % heads or kv_width * heads != width * kv_heads:
            return None
        head_dim = width // heads
        rep = heads // kv_heads
        if rows:
            return t.reshape(kv_heads, rep, head_dim, t.shape[1]).sum(dim=1).reshape(kv_width, t.shape[1])
        return t.reshape(t.shape[0], kv_heads, rep, head_dim).sum(dim=2).reshape(t.shape[0], kv_width)

    def finish(self) -> ModelFingerprint:
        """The fingerprint of everything visited; notes name the products left incomplete."""
        for block, held in self._held.items():
            for role in held:
                for name, pair in PRODUCTS.items():
                    if role in pair and (block, name) not in self._done:
                        self._notes.append(f"block {block}: {name} skipped, {_partner(pair, role)} missing")
        self._held.clear()
        model_vectors = []
        for kind in KINDS:
            vecs = [layer.vector for layer in self._layers if layer.kind == kind]
            if vecs:
                mean = np.mean(np.stack(vecs), axis=0, dtype=np.float64)
                norm = np.linalg.norm(mean)
                model_vectors.append((kind, (mean / norm if norm > 0 else mean).astype(np.float32)))
        return ModelFingerprint(
            layers=tuple(self._layers),
            model_vectors=tuple(model_vectors),
            skipped=tuple(sorted(self._skipped.items())),
            notes=tuple(self._notes),
            device=self.device,
        )


def _partner(pair: tuple[str, str], role: str) -> str:
    return pair[1] if pair[0] == role else pair[0]


def fingerprint_model(
    path: "str | os.PathLike | WeightSource", *, device: str = "auto"
) -> ModelFingerprint:
    """Read a model once and return its fingerprint (nothing is stored).

    Examples
    --------
    >>> fingerprint_model("./my-model").model_vector("aligned").shape   # doctest: +SKIP
    (1024,)
    """
    from ._scan import scan_model
    from .readers import WeightSource, open_source

    source = path if isinstance(path, WeightSource) else open_source(path)
    fp = Fingerprinter(device=device, config=source.config)
    scan_model(source, visit=fp.visit)
    return fp.finish()
