"""A synthetic model zoo with exact ground truth, built on the CPU in seconds.

Every mothertree stage (indexing, fingerprint retrieval, independence tests,
edge typing and direction, family-tree recovery, ``mothertree demo``) is
measured against this zoo, so each model here is a real Hugging Face snapshot
folder made by a real procedure (training, LoRA, quantisation, pruning,
permutation, merging, re-serialisation) and its manifest says exactly how.

Models are tiny Llama (gated MLP) and GPT-2 (plain MLP) decoders trained with
AdamW on synthetic token streams. Each corpus is a seeded second-order Markov
source over 256 tokens, so a fine-tune on another corpus genuinely moves the
weights, while two roots trained on the *same* corpus from different seeds
stay independent models: the case a provenance tool must not confuse.

All randomness flows from explicit seeds: model initialisation and dropout run
under :func:`torch.random.fork_rng`, and data come from a seeded
:class:`torch.Generator`, so the same preset gives the same weights and the
caller's global random state is left untouched.

Examples
--------
>>> zoo = build_zoo(default_zoo_dir("demo"), preset="demo")  # doctest: +SKIP
>>> zoo.get("llama-a-ft").parents  # doctest: +SKIP
('llama-a',)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from ..progress import Progress, note_step
from ..serialize import Serializable

if TYPE_CHECKING:
    import torch

__all__ = [
    "SPEC_VERSION",
    "MANIFEST_NAME",
    "PRESETS",
    "RELATIONS",
    "FORMATS",
    "ZooModel",
    "BlockPermutation",
    "Zoo",
    "build_zoo",
    "build_calibration_roots",
    "preset_digests",
    "load_zoo",
    "default_zoo_dir",
    "make_corpus_batch",
    "main",
]

#: Bumped whenever a change to this module changes any built weight; a zoo
#: built under another version is rebuilt rather than trusted.
SPEC_VERSION = 1

PRESETS: tuple[str, ...] = ("test", "demo", "calibration", "mother", "bench")

#: Edge types of the ground truth. A function-preserving permutation or a
#: re-serialisation is a ``"duplicate"``: the child computes its parent's function.
RELATIONS: tuple[str, ...] = (
    "root", "finetune", "adapter", "quantized", "pruned", "merge", "duplicate",
)

FORMATS: tuple[str, ...] = ("safetensors", "sharded", "bin")

MANIFEST_NAME = "manifest.json"
_BUILD_CACHE_NAME = ".zoo-build.json"
_ENV_ZOO_DIR = "MOTHERTREE_ZOO_DIR"
_EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)

#: Synthetic corpora: name -> seed of its Markov source.
_CORPORA: Mapping[str, int] = {"A": 1001, "B": 1002, "C": 1003, "D": 1004, "E": 1005, "F": 1006}


# --------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockPermutation(Serializable):
    """How one block of a permuted child reorders its parent's units.

    Convention: child unit ``i`` is parent unit ``mlp_units[i]`` (and child
    head ``h`` is parent head ``heads[h]``), so ``child = parent[perm]``
    along the permuted axis.
    """

    block: int
    mlp_units: tuple[int, ...]
    heads: tuple[int, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BlockPermutation":
        return cls(int(data["block"]), tuple(data["mlp_units"]), tuple(data["heads"]))


@dataclass(frozen=True)
class ZooModel(Serializable):
    """Ground truth for one model folder of the zoo.

    Attributes
    ----------
    name : str
        Folder name under the zoo root, unique in the zoo.
    path : str
        Absolute path of the Hugging Face snapshot folder.
    family : str
        Name of the root this model descends from; independent roots are
        separate families even when trained on the same corpus.
    arch : {"llama", "gpt2"}
    parents : tuple of str
        Direct parents: one for most relations, two for ``"merge"``, none for roots.
    relation : str
        One of :data:`RELATIONS`: how the model was made from its parents.
    format : {"safetensors", "sharded", "bin"}
        How the weights are stored on disk.
    created_at : str
        Synthetic ISO-8601 UTC time, strictly later than every parent's, so
        direction methods that use upload dates have a truth to match.
    dtype : str
        Storage dtype of the floating-point weights (``"float32"``, ``"float16"``).
    corpus : str or None
        Corpus of the last training step, ``None`` for untrained derivations.
    merge_weights : tuple of float or None
        Weight of each parent, in ``parents`` order, for ``"merge"``.
    block_map : tuple of (int, int) or None
        ``(child_block, parent_block)`` for models whose blocks were dropped.
    kept_units : tuple of (int, tuple of int) or None
        ``(block, parent MLP units kept, in order)`` for width-pruned models.
    permutation : tuple of BlockPermutation or None
        Per-block unit and head permutation of a permuted duplicate.
    note : str
        One line on anything the fields above do not say.
    """

    name: str
    path: str
    family: str
    arch: str
    parents: tuple[str, ...]
    relation: str
    format: str
    created_at: str
    dtype: str = "float32"
    corpus: str | None = None
    merge_weights: tuple[float, ...] | None = None
    block_map: tuple[tuple[int, int], ...] | None = None
    kept_units: tuple[tuple[int, tuple[int, ...]], ...] | None = None
    permutation: tuple[BlockPermutation, ...] | None = None
    note: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ZooModel":
        def opt(key: str, convert: Callable[[Any], Any]) -> Any:
            value = data.get(key)
            return None if value is None else convert(value)

        return cls(
            name=data["name"],
            path=data["path"],
            family=data["family"],
            arch=data["arch"],
            parents=tuple(data["parents"]),
            relation=data["relation"],
            format=data["format"],
            created_at=data["created_at"],
            dtype=data.get("dtype", "float32"),
            corpus=data.get("corpus"),
            merge_weights=opt("merge_weights", lambda v: tuple(float(x) for x in v)),
            block_map=opt("block_map", lambda v: tuple((int(c), int(p)) for c, p in v)),
            kept_units=opt("kept_units", lambda v: tuple((int(b), tuple(u)) for b, u in v)),
            permutation=opt(
                "permutation", lambda v: tuple(BlockPermutation.from_dict(p) for p in v)
            ),
            note=data.get("note", ""),
        )


@dataclass(frozen=True)
class Zoo:
    """A built zoo: its root folder and the ground truth of every model in it."""

    root: str
    preset: str
    models: tuple[ZooModel, ...]
    spec_version: int = SPEC_VERSION

    def get(self, name: str) -> ZooModel:
        """Return the model called ``name``; ``KeyError`` names the known ones."""
        for model in self.models:
            if model.name == name:
                return model
        known = ", ".join(m.name for m in self.models)
        raise KeyError(f"No model {name!r} in the {self.preset!r} zoo at {self.root}; it has: {known}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    def families(self) -> dict[str, tuple[str, ...]]:
        """Family (root name) -> names of its members, in build order."""
        out: dict[str, list[str]] = {}
        for model in self.models:
            out.setdefault(model.family, []).append(model.name)
        return {family: tuple(names) for family, names in out.items()}

    def edges(self) -> tuple[tuple[str, str, str], ...]:
        """Every ``(parent, child, relation)``; a merge gives one edge per parent."""
        return tuple(
            (parent, model.name, model.relation)
            for model in self.models
            for parent in model.parents
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "preset": self.preset,
            "spec_version": self.spec_version,
            "models": [m.to_dict() for m in self.models],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Zoo":
        return cls(
            root=data["root"],
            preset=data["preset"],
            models=tuple(ZooModel.from_dict(m) for m in data["models"]),
            spec_version=int(data["spec_version"]),
        )


# --------------------------------------------------------------------------
# Recipes: what to build, as data
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Size:
    """Model widths and training budget shared by every model of a preset."""

    hidden: int = 64
    llama_intermediate: int = 128
    gpt2_inner: int = 256
    layers: int = 4
    heads: int = 4
    vocab: int = 256
    positions: int = 64
    batch: int = 8
    seq_len: int = 32
    root_steps: int = 150
    root_lr: float = 3e-3
    ft_steps: int = 40
    ft_lr: float = 3e-4
    lora_steps: int = 40
    lora_lr: float = 1e-3
    lora_rank: int = 4


@dataclass(frozen=True)
class _Recipe:
    """How to make one model; ``op`` picks the builder, ``params`` feeds it."""

    name: str
    arch: str
    op: str
    parents: tuple[str, ...] = ()
    corpus: str | None = None
    seed: int = 0
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, key: str) -> Any:
        return dict(self.params)[key]


def _root(name: str, arch: str, corpus: str, seed: int, steps_scale: float = 1.0) -> _Recipe:
    return _Recipe(name, arch, "root", (), corpus, seed, (("steps_scale", steps_scale),))


def _ft(name: str, parent: str, arch: str, corpus: str, seed: int) -> _Recipe:
    return _Recipe(name, arch, "finetune", (parent,), corpus, seed)


def _lora(name: str, parent: str, arch: str, corpus: str, seed: int) -> _Recipe:
    return _Recipe(name, arch, "lora", (parent,), corpus, seed)


def _llama_family() -> list[_Recipe]:
    return [
        _root("llama-a", "llama", "A", 1),
        _root("llama-b", "llama", "A", 2),
        _root("llama-c", "llama", "B", 3),
        _ft("llama-a-ft", "llama-a", "llama", "C", 4),
        _ft("llama-a-ft-ft", "llama-a-ft", "llama", "D", 5),
        _ft("llama-a-ft2", "llama-a", "llama", "B", 6),
        _lora("llama-a-lora", "llama-a", "llama", "D", 7),
        _Recipe("llama-a-ft-int8", "llama", "quantize", ("llama-a-ft",)),
        _Recipe("llama-a-pruned", "llama", "prune_blocks", ("llama-a-ft",),
                params=(("keep", (0, 3)),)),
        _Recipe("llama-a-pruned-width", "llama", "prune_width", ("llama-a-ft",),
                params=(("keep_fraction", 0.75),)),
        _Recipe("llama-a-permuted", "llama", "permute", ("llama-a-ft",), seed=8),
        _Recipe("llama-a-merge", "llama", "merge", ("llama-a-ft", "llama-a-ft2"),
                params=(("weights", (0.6, 0.4)),)),
        _Recipe("llama-a-reinit", "llama", "reinit", ("llama-a",), "C", 9,
                params=(("block", 2),)),
        _Recipe("llama-a-sharded", "llama", "reformat", ("llama-a-ft",),
                params=(("format", "sharded"),)),
        _Recipe("llama-a-bin", "llama", "reformat", ("llama-a-ft",),
                params=(("format", "bin"),)),
    ]


def _gpt2_family() -> list[_Recipe]:
    return [
        _root("gpt2-a", "gpt2", "A", 11),
        _root("gpt2-b", "gpt2", "A", 12),
        _ft("gpt2-a-ft", "gpt2-a", "gpt2", "C", 13),
        _ft("gpt2-a-ft-ft", "gpt2-a-ft", "gpt2", "D", 14),
        _Recipe("gpt2-a-ft-int8", "gpt2", "quantize", ("gpt2-a-ft",)),
        _Recipe("gpt2-a-pruned", "gpt2", "prune_blocks", ("gpt2-a-ft",),
                params=(("keep", (0, 3)),)),
        _Recipe("gpt2-a-permuted", "gpt2", "permute", ("gpt2-a-ft",), seed=15),
        _lora("gpt2-a-lora", "gpt2-a", "gpt2", "D", 16),
    ]


_DEMO_NAMES = (
    "llama-a", "llama-b", "llama-a-ft", "llama-a-ft-ft", "llama-a-ft-int8",
    "llama-a-lora", "llama-a-ft2", "llama-a-merge", "llama-a-pruned",
)


def _calibration_recipes(n: int, arch: str) -> list[_Recipe]:
    if arch not in ("llama", "gpt2", "mixed"):
        raise ValueError(f"arch must be 'llama', 'gpt2' or 'mixed'; got {arch!r}")
    if n < 2:
        raise ValueError(f"n must be at least 2 so that there is a pair; got {n}")
    recipes = []
    for i in range(n):
        a = arch if arch != "mixed" else ("llama", "gpt2")[i % 2]
        recipes.append(_root(f"calib-{a}-{i:02d}", a, "A", 500 + i, steps_scale=0.5))
    return recipes


def _mother_recipes() -> list[_Recipe]:
    """One MoTHer-style tree of 16 Llama models, three generations below the root.

    Full fine-tunes and (merged) LoRA fine-tunes are mixed on every level, each
    on its own corpus, so a tree-recovery method must handle both.
    """
    corpora = tuple(_CORPORA)
    recipes = [_root("mother", "llama", "A", 100)]
    seed = 101
    children = [("mother-1", "finetune"), ("mother-2", "finetune"), ("mother-3", "lora")]
    grandchildren = {
        "mother-1": ("finetune", "lora", "finetune"),
        "mother-2": ("lora", "finetune", "finetune"),
        "mother-3": ("finetune", "finetune", "lora"),
    }
    great = {"mother-1-1": "finetune", "mother-2-2": "lora", "mother-3-1": "finetune"}

    def add(name: str, parent: str, how: str) -> None:
        nonlocal seed
        maker = _ft if how == "finetune" else _lora
        recipes.append(maker(name, parent, "llama", corpora[seed % len(corpora)], seed))
        seed += 1

    for child, how in children:
        add(child, "mother", how)
    for child, hows in grandchildren.items():
        for j, how in enumerate(hows, start=1):
            add(f"{child}-{j}", child, how)
    for grandchild, how in great.items():
        add(f"{grandchild}-1", grandchild, how)
    return recipes


def _preset(preset: str) -> tuple[list[_Recipe], _Size]:
    if preset == "test":
        return _llama_family() + _gpt2_family(), _Size()
    if preset == "demo":
        return [r for r in _llama_family() if r.name in _DEMO_NAMES], _Size()
    if preset == "calibration":
        return _calibration_recipes(10, "llama"), _Size()
    if preset == "mother":
        return _mother_recipes(), _Size(ft_steps=60, lora_steps=60)
    if preset == "bench":
        size = _Size(hidden=128, llama_intermediate=256, gpt2_inner=512, heads=8,
                     root_steps=300, ft_steps=80, lora_steps=80)
        return _llama_family() + _gpt2_family(), size
    raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}")


def preset_digests(preset: str) -> dict[str, str]:
    """Each model of ``preset`` with its content key: models of two presets with equal keys have the same weights.

    (The demo's nine models are the ``test`` preset's models of the same names,
    so a built test zoo holds the demo family: :func:`bench.demo.run_demo` accepts it.)
    """
    recipes, size = _preset(preset)
    return _digests(recipes, size)


def _digests(recipes: Sequence[_Recipe], size: _Size) -> dict[str, str]:
    """A content key per model covering its recipe, its size and its ancestors' keys.

    A cached folder is reused only under the same key, so changing any recipe
    rebuilds exactly that model and its descendants.
    """
    out: dict[str, str] = {}
    for r in recipes:
        missing = [p for p in r.parents if p not in out]
        if missing:
            raise ValueError(f"recipe {r.name!r} lists parents {missing} before they are built")
        payload = json.dumps(
            [SPEC_VERSION, dataclasses.asdict(size), r.name, r.arch, r.op, r.corpus, r.seed,
             repr(r.params), [out[p] for p in r.parents]],
            sort_keys=True,
        )
        out[r.name] = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return out


# --------------------------------------------------------------------------
# Synthetic corpora and training
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _markov_tables(corpus: str, vocab: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Log-weights of next token given the previous one and the one before it.

    Each token has a few strongly preferred successors at distance 1 and 2,
    so the data have both local (MLP-learnable) and skip (attention-learnable)
    structure, and two corpora share none of it.
    """
    import torch

    if corpus not in _CORPORA:
        raise ValueError(f"corpus must be one of {', '.join(_CORPORA)}; got {corpus!r}")
    g = torch.Generator().manual_seed(_CORPORA[corpus])
    tables = []
    for favoured, boost in ((8, 4.0), (4, 3.0)):
        table = 0.5 * torch.randn(vocab, vocab, generator=g)
        picks = torch.stack([torch.randperm(vocab, generator=g)[:favoured] for _ in range(vocab)])
        table.scatter_add_(1, picks, torch.full(picks.shape, boost))
        tables.append(table)
    return tables[0], tables[1]


def make_corpus_batch(
    corpus: str, generator: "torch.Generator", *, batch: int = 8, seq_len: int = 32, vocab: int = 256
) -> "torch.Tensor":
    """Sample ``batch`` token sequences of ``seq_len`` from synthetic corpus ``corpus``.

    Parameters
    ----------
    corpus : str
        One of ``"A"`` to ``"F"``; each is a fixed seeded second-order Markov source.
    generator : torch.Generator
        Source of the sampling randomness, so batches are reproducible.

    Returns
    -------
    torch.Tensor of shape (batch, seq_len), dtype int64
    """
    import torch

    first, second = _markov_tables(corpus, vocab)
    tokens = torch.empty(batch, seq_len, dtype=torch.long)
    tokens[:, :2] = torch.randint(0, vocab, (batch, 2), generator=generator)
    for t in range(2, seq_len):
        logits = first[tokens[:, t - 1]] + second[tokens[:, t - 2]]
        tokens[:, t] = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]
    return tokens


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run code that draws on torch's global RNG (init, dropout) from ``seed``, then restore it."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _train(model: Any, corpus: str, *, steps: int, lr: float, seed: int, size: _Size) -> float:
    """AdamW on fresh batches of ``corpus``; returns the last loss (for progress lines)."""
    import torch

    data = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    model.train()
    loss = torch.tensor(float("nan"))
    with _seeded(seed):
        for _ in range(steps):
            x = make_corpus_batch(corpus, data, batch=size.batch, seq_len=size.seq_len,
                                  vocab=size.vocab)
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    model.eval()
    return float(loss.detach())


# --------------------------------------------------------------------------
# Builders: each turns parent models into one child model (in memory)
# --------------------------------------------------------------------------


def _new_model(arch: str, size: _Size, seed: int) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if arch == "llama":
        config = LlamaConfig(
            vocab_size=size.vocab, hidden_size=size.hidden,
            intermediate_size=size.llama_intermediate, num_hidden_layers=size.layers,
            num_attention_heads=size.heads, num_key_value_heads=size.heads,
            max_position_embeddings=size.positions, tie_word_embeddings=False,
        )
        cls = LlamaForCausalLM
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=size.vocab, n_embd=size.hidden, n_inner=size.gpt2_inner,
            n_layer=size.layers, n_head=size.heads, n_positions=size.positions,
            bos_token_id=0, eos_token_id=0,
        )
        cls = GPT2LMHeadModel
    else:
        raise ValueError(f"arch must be 'llama' or 'gpt2'; got {arch!r}")
    with _seeded(seed):
        return cls(config)


#: ``load(name)`` returns a fresh float32 copy of an already built model.
_Loader = Callable[[str], Any]


def _blocks_prefix(arch: str) -> str:
    return "model.layers." if arch == "llama" else "transformer.h."


def _rebuild(parent: Any, config_changes: Mapping[str, Any], state: Mapping[str, "torch.Tensor"]) -> Any:
    """A model of the parent's class with an edited config, holding exactly ``state``."""
    config = parent.config.__class__.from_dict({**parent.config.to_dict(), **config_changes})
    child = parent.__class__(config)
    child.load_state_dict(dict(state), strict=True)
    child.eval()
    return child


def _op_root(r: _Recipe, size: _Size, load: _Loader) -> tuple[Any, dict[str, Any]]:
    model = _new_model(r.arch, size, r.seed)
    steps = int(size.root_steps * r.param("steps_scale"))
    _train(model, r.corpus, steps=steps, lr=size.root_lr, seed=r.seed, size=size)
    return model, {"relation": "root", "corpus": r.corpus,
                   "note": f"trained from scratch on corpus {r.corpus}, seed {r.seed}, {steps} steps"}


def _op_finetune(r: _Recipe, size: _Size, load: _Loader) -> tuple[Any, dict[str, Any]]:
    model = load(r.parents[0])
    _train(model, r.corpus, steps=size.ft_steps, lr=size.ft_lr, seed=r.seed, size=size)
    return model, {"relation": "finetune", "corpus": r.corpus,
                   "note": f"full fine-tune on corpus {r.corpus}, {size.ft_steps} steps"}


def _op_lora(r: _Recipe, size: _Size, load: _Loader) -> tuple[Any, dict[str, Any]]:
    from peft import LoraConfig, get_peft_model

    if r.arch == "llama":
        targets, fan_in_fan_out = ["q_proj", "v_proj", "up_proj", "down_proj"], False
    else:
        # GPT-2's Conv1D stores [in, out]; peft must be told.
        targets, fan_in_fan_out = ["c_attn", "c_fc"], True
    config = LoraConfig(r=size.lora_rank, lora_alpha=2 * size.lora_rank, lora_dropout=0.0,
                        target_modules=targets, fan_in_fan_out=fan_in_fan_out)
    with _seeded(r.seed):
        peft_model = get_peft_model(load(r.parents[0]), config)
    _train(peft_model, r.corpus, steps=size.lora_steps, lr=size.lora_lr, seed=r.seed, size=size)
    note = (f"LoRA r={size.lora_rank} on {','.join(targets)}, corpus {r.corpus}, "
            f"{size.lora_steps} steps; merged into the weights")
    return peft_model.merge_and_unload(), {"relation": "adapter", "corpus": r.corpus, "note": note}


def _quantize_int8(w: "torch.Tensor", *, rows_are_outputs: bool) -> "torch.Tensor":
    """Symmetric per-output-channel int8 quantize-dequantize (levels -127..127)."""
    import torch

    m = w if rows_are_outputs else w.T
    scale = m.abs().amax(dim=1, keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    out = torch.round(m / scale).clamp(-127, 127) * scale
    return out if rows_are_outputs else out.T.contiguous()


def _op_quantize(r: _Recipe, size: _Size, load: _Loader) -> tuple[Any, dict[str, Any]]:
    from transformers.pytorch_utils import Conv1D

    parent = load(r.parents[0])
    conv1d = {f"{n}.weight" for n, mod in parent.named_modules() if isinstance(mod, Conv1D)}
    state = {
        k: _quantize_int8(v, rows_are_outputs=k not in conv1d) if v.ndim == 2 else v
        for k, v in parent.state_dict().items()
    }
    note = ("int8 symmetric per output channel on every 2-D weight, dequantized and "
            "stored as float16")
    return _rebuild(parent, {}, state).half(), {"relation": "quantized", "dtype": "float16",
                                                "note": note}


def _op_prune_blocks(r: _Recipe, size: _Size, load: _Loader) -> tuple[Any, dict[str, Any]]:
    parent = load(r.parents[0])
    keep: tuple[int, ...] = r.param("keep")
    prefix = _blocks_prefix(r.arch)
    new_index = {old: new for new, old in enumerate(keep)}
    state = {}
    for k, v in parent.state_dict().items():
        if k.startswith(prefix):
            block, rest = k[len(prefix):].split(".", 1)
            if int(block) in new_index:
                state[f"{prefix}{new_index[int(block)]}.{rest}"] = v
        else:
            state[k] = v
    changes = {"num_hidden_layers" if r.arch == "llama" else "n_layer": len(keep)}
    return _rebuild(parent, changes, state), {
        "relation": "pruned",
        "block_map": tuple((new, old) for new, old in enumerate(keep)),
        "note": f"depth pruned: blocks {list(keep)} of the parent kept, the others removed",
    }


def _op_prune_width(r: _Recipe, size: _Size, load: _Loader) -> tuple[Any, dict[str, Any]]:
    """Structured magnitude pruning: keep each block's MLP units of largest down-projection norm."""
    import torch

    if r.arch != "llama":
        raise ValueError(f"width pruning is implemented for llama only; got {r.arch!r}")
    parent = load(r.parents[0])
    n_keep = int(round(parent.config.intermediate_size * r.param("keep_fraction")))
    state = dict(parent.state_dict())
    kept = []
    for b in range(parent.config.num_hidden_layers):
        p = f"model.layers.{b}.mlp."
        norms = state[p + "down_proj.weight"].norm(dim=0)
        units = torch.sort(torch.topk(norms, n_keep).indices).values
        state[p + "gate_proj.weight"] = state[p + "gate_proj.weight"][units]
        state[p + "up_proj.weight"] = state[p + "up_proj.weight"][units]
        state[p + "down_proj.weight"] = state[p + "down_proj.weight"][:, units].contiguous()
        kept.append((b, tuple(int(u) for u in units)))
    return _rebuild(parent, {"intermediate_size": n_keep}, state), {
        "relation": "pruned",
        "kept_units": tuple(kept),
        "note": (f"width pruned: {n_keep} of {parent.config.intermediate_size} MLP units kept "
                 "per block, by down-projection column norm"),
    }


def _op_permute(r: _Recipe, size: _Size, load: _Loader) -> tuple[Any, dict[str, Any]]:
    """Permute MLP units and attention heads of every block; the function is unchanged.

    Heads move as whole ``head_dim`` slices of q/k/v rows and o columns, so
    RoPE (which acts inside a head) and attention are unaffected; MLP units
    move together across their input rows and output columns.
    """
    import torch

    parent = load(r.parents[0])
    g = torch.Generator().manual_seed(r.seed)
    cfg = parent.config
    if r.arch == "llama":
        if cfg.num_key_value_heads != cfg.num_attention_heads:
            raise ValueError("head permutation of a grouped-query model is not implemented")
        heads, hidden, width = cfg.num_attention_heads, cfg.hidden_size, cfg.intermediate_size
        n_blocks = cfg.num_hidden_layers
    else:
        heads, hidden, n_blocks = cfg.n_head, cfg.n_embd, cfg.n_layer
        width = cfg.n_inner or 4 * hidden
    head_dim = hidden // heads
    state = dict(parent.state_dict())
    perms = []
    for b in range(n_blocks):
        units = torch.randperm(width, generator=g)
        head_perm = torch.randperm(heads, generator=g)
        dims = (head_perm[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
        if r.arch == "llama":
            p = f"model.layers.{b}."
            rows = {f"{p}self_attn.{n}_proj.weight": dims for n in "qkv"}
            rows |= {f"{p}mlp.{n}_proj.weight": units for n in ("gate", "up")}
            cols = {f"{p}self_attn.o_proj.weight": dims, f"{p}mlp.down_proj.weight": units}
        else:
            # Conv1D stores [in, out]: a unit's outputs are columns, its inputs rows.
            p = f"transformer.h.{b}."
            qkv = torch.cat([dims + i * hidden for i in range(3)])
            rows = {f"{p}attn.c_attn.bias": qkv, f"{p}attn.c_proj.weight": dims,
                    f"{p}mlp.c_fc.bias": units, f"{p}mlp.c_proj.weight": units}
            cols = {f"{p}attn.c_attn.weight": qkv, f"{p}mlp.c_fc.weight": units}
        for k, idx in rows.items():
            state[k] = state[k][idx].contiguous()
        for k, idx in cols.items():
            state[k] = state[k][:, idx].contiguous()
        perms.append(BlockPermutation(b, tuple(units.tolist()), tuple(head_perm.tolist())))
    return _rebuild(parent, {}, state), {
        "relation": "duplicate",
        "permutation": tuple(perms),
        "note": "permuted: MLP units and attention heads per block; computes the parent's function",
    }


def _op_merge(r: _Recipe, size: _Size, load: _Loader) -> tuple[Any, dict[str, Any]]:
    weights = tuple(float(w) for w in r.param("weights"))
    parents = [load(p) for p in r.parents]
    states = [p.state_dict() for p in parents]
    merged = {k: sum(w * s[k] for w, s in zip(weights, states)) for k in states[0]}
    return _rebuild(parents[0], {}, merged), {
        "relation": "merge",
        "merge_weights": weights,
        "note": "weighted average of the parents' weights",
    }


def _op_reinit(r: _Recipe, size: _Size, load: _Loader) -> tuple[Any, dict[str, Any]]:
    """Overwrite one block with a fresh random initialisation, then fine-tune everything."""
    parent = load(r.parents[0])
    block = r.param("block")
    fresh = _new_model(r.arch, size, r.seed).state_dict()
    prefix = f"{_blocks_prefix(r.arch)}{block}."
    state = {k: (fresh[k] if k.startswith(prefix) else v) for k, v in parent.state_dict().items()}
    child = _rebuild(parent, {}, state)
    _train(child, r.corpus, steps=size.ft_steps, lr=size.ft_lr, seed=r.seed, size=size)
    return child, {
        "relation": "finetune",
        "corpus": r.corpus,
        "note": (f"block {block} reinitialised from scratch, then full fine-tune on corpus "
                 f"{r.corpus}, {size.ft_steps} steps"),
    }


def _op_reformat(r: _Recipe, size: _Size, load: _Loader) -> tuple[Any, dict[str, Any]]:
    fmt = r.param("format")
    return load(r.parents[0]), {
        "relation": "duplicate",
        "format": fmt,
        "note": f"the parent's exact tensors re-saved as {fmt}",
    }


_OPS: Mapping[str, Callable[[_Recipe, _Size, _Loader], tuple[Any, dict[str, Any]]]] = {
    "root": _op_root,
    "finetune": _op_finetune,
    "lora": _op_lora,
    "quantize": _op_quantize,
    "prune_blocks": _op_prune_blocks,
    "prune_width": _op_prune_width,
    "permute": _op_permute,
    "merge": _op_merge,
    "reinit": _op_reinit,
    "reformat": _op_reformat,
}


# --------------------------------------------------------------------------
# Writing folders
# --------------------------------------------------------------------------


def _save(model: Any, folder: Path, fmt: str) -> None:
    """Write ``model`` as a Hugging Face snapshot folder in format ``fmt``.

    ``"bin"`` writes exactly the tensors ``save_pretrained`` would (tied
    duplicates dropped) with :func:`torch.save`, since transformers 5 saves
    safetensors only.
    """
    import torch

    folder.mkdir(parents=True)
    if fmt == "safetensors":
        model.save_pretrained(folder)
    elif fmt == "sharded":
        total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        model.save_pretrained(folder, max_shard_size=max(total // 3, 1))
    elif fmt == "bin":
        model.save_pretrained(folder)
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
        (folder / "model.safetensors").unlink()
        torch.save({k: v.contiguous() for k, v in state.items()}, folder / "pytorch_model.bin")
    else:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@contextlib.contextmanager
def _build_environment() -> Iterator[None]:
    """One torch thread, and no transformers warnings, deprecation notices or progress bars.

    One thread is both faster for models this small (several threads spin
    waiting on each other, badly so on a busy machine: 10x slower measured)
    and keeps float reductions in one order, so weights do not depend on the
    machine's core count. torch's global RNG is forked, so the caller's random
    state is untouched. Everything is restored afterwards.
    """
    import torch
    from transformers.utils import logging as hf_logging

    threads = torch.get_num_threads()
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        torch.set_num_threads(threads)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------


def _build(
    root: Path, preset: str, recipes: Sequence[_Recipe], size: _Size, progress: Progress | None,
) -> Zoo:
    root = Path(root).resolve()
    digests = _digests(recipes, size)
    # name -> {"digest": ..., "truth": ZooModel.to_dict()} for every folder built here.
    cache: dict[str, dict[str, Any]] = _read_json(root / _BUILD_CACHE_NAME) or {}

    def cached(name: str) -> bool:
        entry = cache.get(name)
        return entry is not None and entry["digest"] == digests[name] and (root / name).is_dir()

    if _manifest_current(root, preset, [r.name for r in recipes], cached):
        return load_zoo(root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root)
    disk = _OnDisk(root)
    truths: list[ZooModel] = []
    with _build_environment():
        for i, r in enumerate(recipes):
            family = r.name if not r.parents else next(
                t.family for t in truths if t.name == r.parents[0]
            )
            where = {"path": str(root / r.name), "family": family, "created_at": _timestamp(i)}
            if cached(r.name):
                truths.append(dataclasses.replace(
                    ZooModel.from_dict(cache[r.name]["truth"]), **where))
                note_step(progress, f"reused {r.name}")
                continue
            start = time.perf_counter()
            truth = _build_one(root, r, size, disk, where)
            cache[r.name] = {"digest": digests[r.name], "truth": truth.to_dict()}
            _write_json_atomic(root / _BUILD_CACHE_NAME, cache)
            truths.append(truth)
            note_step(progress, f"built {r.name} ({time.perf_counter() - start:.1f} s)")

    zoo = Zoo(root=str(root), preset=preset, models=tuple(truths))
    _write_json_atomic(root / MANIFEST_NAME, zoo.to_dict())
    return zoo


def _manifest_current(root: Path, preset: str, names: list[str], cached: Callable[[str], bool]) -> bool:
    """Whether ``root`` already holds exactly this preset, every folder built from its current recipe."""
    manifest = _read_json(root / MANIFEST_NAME)
    return (
        manifest is not None
        and manifest.get("preset") == preset
        and manifest.get("spec_version") == SPEC_VERSION
        and [m["name"] for m in manifest.get("models", [])] == names
        and all(cached(n) for n in names)
    )


class _OnDisk:
    """Built models read back from their folders, each read once and handed out as fresh copies."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._models: dict[str, Any] = {}

    def load(self, name: str) -> Any:
        """A fresh float32 copy of a built model (a parent a recipe derives from)."""
        import torch
        from transformers import AutoModelForCausalLM

        if name not in self._models:
            self._models[name] = AutoModelForCausalLM.from_pretrained(self.root / name, dtype=torch.float32)
        model = self._models[name]
        return _rebuild(model, {}, {k: v.clone() for k, v in model.state_dict().items()})

    def forget(self, name: str) -> None:
        """Drop the copy read before ``name``'s folder was rewritten."""
        self._models.pop(name, None)


def _build_one(root: Path, r: _Recipe, size: _Size, disk: _OnDisk, where: dict[str, Any]) -> ZooModel:
    """Make one model by its recipe and write its folder: a temporary name, then a rename."""
    model, fields = _OPS[r.op](r, size, disk.load)
    truth = ZooModel(name=r.name, arch=r.arch, parents=r.parents,
                     **{"format": "safetensors", **fields, **where})
    tmp = root / f".tmp-{r.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    _save(model, tmp, truth.format)
    if (root / r.name).exists():
        shutil.rmtree(root / r.name)
    os.replace(tmp, root / r.name)
    disk.forget(r.name)
    return truth


def _remove_stale_temporaries(root: Path) -> None:
    """Delete half-written model folders left by builds that were killed.

    A temporary folder is named after the process writing it; one whose
    process is gone can never be finished, while a live one belongs to a
    concurrent build and is left alone.
    """
    for tmp in root.glob(".tmp-*-*"):
        pid = tmp.name.rsplit("-", 1)[1]
        if not pid.isdigit() or not _process_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def _timestamp(index: int) -> str:
    """Synthetic creation time: one day per recipe, so parents always predate children."""
    return (_EPOCH + timedelta(days=index)).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_zoo(
    root: str | Path, *, preset: str = "test", progress: Progress | None = None
) -> Zoo:
    """Build (or reuse) the models of ``preset`` under ``root`` and return their ground truth.

    Each model folder is written to a temporary name and renamed, so an
    interrupted build never leaves a half model; a rerun reuses every folder
    whose recipe (and ancestors' recipes) is unchanged, and returns at once
    when the whole preset is already there. ``manifest.json`` in ``root``
    holds :meth:`Zoo.to_dict` of the last preset built there; give each
    preset its own root (see :func:`default_zoo_dir`).

    Parameters
    ----------
    root : str or Path
        Folder holding one sub-folder per model plus ``manifest.json``.
    preset : {"test", "demo", "calibration", "mother", "bench"}
        ``"test"``: the full Llama and GPT-2 families (23 models, 5 roots);
        ``"demo"``: the nine Llama models ``mothertree demo`` shows;
        ``"calibration"``: 10 independent Llama roots on one corpus (45 pairs);
        ``"mother"``: a 16-model Llama tree of full and LoRA fine-tunes;
        ``"bench"``: the ``"test"`` families at twice the width and more steps.
    progress : Progress, optional
        Told one step per model built or reused.

    Returns
    -------
    Zoo
    """
    recipes, size = _preset(preset)
    return _build(Path(root), preset, recipes, size, progress)


def build_calibration_roots(
    root: str | Path, n: int = 10, arch: str = "llama", *,
    progress: Progress | None = None,
) -> Zoo:
    """Build ``n`` independent roots on the same corpus, for calibrating null p-values.

    Every pair of distinct roots is independent by construction, so ``n``
    roots give ``n * (n - 1) / 2`` null pairs (45 for the default);
    ``arch="mixed"`` alternates Llama and GPT-2, pairing only within an arch.
    Training is half a normal root's, since only independence matters here.
    """
    recipes = _calibration_recipes(n, arch)
    preset = "calibration" if (n, arch) == (10, "llama") else f"calibration-{arch}-{n}"
    return _build(Path(root), preset, recipes, _Size(), progress)


def load_zoo(root: str | Path) -> Zoo:
    """Read the ground truth of a built zoo; paths are rebased onto ``root`` if it moved."""
    root = Path(root).resolve()
    data = _read_json(root / MANIFEST_NAME)
    if data is None:
        raise FileNotFoundError(
            f"No zoo manifest at {root / MANIFEST_NAME}. Build one with: "
            f"python -m mothertree.bench.zoo --root {root}"
        )
    zoo = Zoo.from_dict(data)
    models = tuple(dataclasses.replace(m, path=str(root / m.name)) for m in zoo.models)
    return dataclasses.replace(zoo, root=str(root), models=models)


def default_zoo_dir(preset: str | None = None) -> Path:
    """Where zoos are cached: ``$MOTHERTREE_ZOO_DIR``, else ``.zoo`` in the repository (or cwd).

    With ``preset`` given, the preset's own sub-folder, so presets never
    overwrite each other's manifest. The repository's ``.gitignore`` ignores
    ``/.zoo/``: models are never committed.
    """
    env = os.environ.get(_ENV_ZOO_DIR)
    if env:
        base = Path(env)
    else:
        repo = Path(__file__).resolve().parents[1]
        base = (repo if (repo / "pyproject.toml").is_file() else Path.cwd()) / ".zoo"
    return base / preset if preset else base


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mothertree.bench.zoo``: build a preset, print its summary and build time."""
    parser = argparse.ArgumentParser(prog="python -m mothertree.bench.zoo", description=main.__doc__)
    parser.add_argument("--preset", default="test", choices=PRESETS)
    parser.add_argument("--root", type=Path, default=None,
                        help="zoo folder (default: default_zoo_dir(PRESET))")
    parser.add_argument("--quiet", action="store_true", help="no per-model progress lines")
    args = parser.parse_args(argv)
    root = args.root or default_zoo_dir(args.preset)
    start = time.perf_counter()
    progress = None if args.quiet else (lambda event: print(event.text, flush=True))
    zoo = build_zoo(root, preset=args.preset, progress=progress)
    elapsed = time.perf_counter() - start
    for m in zoo.models:
        parents = ",".join(m.parents) or "-"
        print(f"{m.name:24} {m.arch:6} {m.relation:10} {m.format:12} {m.family:10} {parents}")
    print(f"{len(zoo.models)} models, {len(zoo.families())} families, preset {zoo.preset!r} "
          f"at {zoo.root}; {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
