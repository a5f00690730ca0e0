"""Build a runnable model from a model folder, for the activation-based independence tests.

phi_MATCH needs forward passes, so it needs the architecture, not just the
weights. This module builds the model with ``transformers`` from the folder's
``config.json`` and weights (local files only, ``.bin`` through
``torch.load(weights_only=True)``), and finds each block's MLP projections by
mapping module names through :mod:`mothertree.indexer.roles`. When no forward
pass can be built it raises :class:`~mothertree.registry.errors.UnreadableWeightsError`;
callers then fall back to the weights-only tests and say so.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..registry.errors import UnreadableWeightsError
from .roles import assign_role, detect_architecture

__all__ = [
    "ForwardModel", "load_forward_model", "find_mlp_modules", "seeded_inputs",
    "BlockRunner", "build_block_runner", "runner_device",
]

_MLP_ROLES = frozenset({"mlp.gate", "mlp.up", "mlp.gate_up", "mlp.down", "mlp.in", "mlp.out"})


@dataclass(frozen=True)
class ForwardModel:
    """A model ready for forward passes, with its MLP projections located.

    Attributes
    ----------
    model : torch.nn.Module
        In eval mode, on the CPU, float32.
    mlp_modules : mapping block -> {role: module}
        Each block's MLP projections by canonical role (``mlp.gate``/``mlp.up``,
        fused ``mlp.gate_up``, or ``mlp.in``/``mlp.out``).
    vocab_size : int
        Token ids accepted by the model: ``[0, vocab_size)``.
    architecture : str
        Role-table architecture (``"llama"``, ``"gpt2"``, ...).
    """

    model: nn.Module
    mlp_modules: Mapping[int, Mapping[str, nn.Module]]
    vocab_size: int
    architecture: str


def find_mlp_modules(model: nn.Module, architecture: str) -> dict[int, dict[str, nn.Module]]:
    """Map each block to its MLP projection modules, via the canonical role of ``name + ".weight"``."""
    found: dict[int, dict[str, nn.Module]] = {}
    for name, module in model.named_modules():
        if not name:
            continue
        role = assign_role(name + ".weight", architecture)
        if role.role in _MLP_ROLES and role.block is not None and isinstance(getattr(module, "weight", None), torch.Tensor):
            found.setdefault(role.block, {})[role.role] = module
    return dict(sorted(found.items()))


def _no_forward_pass(folder: Path, problem: str, cause: Exception | None = None) -> UnreadableWeightsError:
    """The error of a model we cannot run: it says to fall back to the weights-only tests."""
    err = UnreadableWeightsError(folder, f"cannot build a forward pass: {problem}; use the weights-only independence tests")
    err.__cause__ = cause
    return err


def _model_class(folder: Path) -> tuple[Any, str, Any]:
    """A model folder's transformers config, role-map architecture and auto class (causal LM, else base model)."""
    fail = partial(_no_forward_pass, folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise fail("no config.json in the folder")
    try:
        raw_config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise fail(f"config.json is not valid JSON ({e})", e) from e
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    from transformers.utils import logging as hf_logging

    # Our own progress goes to stderr; transformers' per-load bars would drown it.
    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise fail(f"transformers does not know model_type {raw_config.get('model_type')!r}", e) from e
    architecture = detect_architecture(raw_config, ())
    if architecture == "unknown":
        raise fail(f"the role map has no architecture for model_type {raw_config.get('model_type')!r}")
    auto = AutoModelForCausalLM if architecture != "bert" and config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES \
        else AutoModel
    return config, architecture, auto


def load_forward_model(path: str | Path) -> ForwardModel:
    """Build the ``transformers`` model stored in the folder ``path``.

    Decoders load with ``AutoModelForCausalLM``; encoders (the BERT
    architecture) and anything without a causal-LM class with ``AutoModel``.
    Nothing is downloaded and no code from the folder is run.

    Raises
    ------
    UnreadableWeightsError
        When the folder has no ``config.json``, the architecture is unknown to
        ``transformers`` or to the role map, the weights do not load, or no
        MLP block can be located. The message says to use the weights-only tests.
    """
    folder = Path(path)
    fail = partial(_no_forward_pass, folder)
    config, architecture, auto = _model_class(folder)
    try:
        model = auto.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False, weights_only=True, dtype=torch.float32
        )
    except (OSError, ValueError, RuntimeError, KeyError, ImportError) as e:  # ImportError: GPTQ/AWQ need optimum
        raise fail(f"the weights do not load ({type(e).__name__}: {e})", e) from e
    model.eval()
    mlp_modules = _mlp_modules(model, architecture, fail)
    vocab_size = int(getattr(config, "vocab_size", 0) or model.get_input_embeddings().num_embeddings)
    return ForwardModel(model=model, mlp_modules=mlp_modules, vocab_size=vocab_size, architecture=architecture)


def _mlp_modules(
    model: nn.Module, architecture: str, fail: Callable[..., Exception],
) -> dict[int, dict[str, nn.Module]]:
    """:func:`find_mlp_modules`, refused when empty: phi_MATCH has nothing to record without an MLP block."""
    mlp_modules = find_mlp_modules(model, architecture)
    if not mlp_modules:
        raise fail(f"no MLP block found in the {architecture} model")
    return mlp_modules


def seeded_inputs(vocab_size: int, n_seq: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """Uniform random token ids, reproducible from ``seed``: the shared inputs of phi_MATCH.

    Random tokens work when the two models share a vocabulary; the same
    ``(vocab_size, n_seq, seq_len, seed)`` gives the same tensor everywhere.

    Returns
    -------
    LongTensor of shape (n_seq, seq_len)

    Examples
    --------
    >>> bool((seeded_inputs(100, 2, 8, seed=1) == seeded_inputs(100, 2, 8, seed=1)).all())
    True
    """
    for name, value in (("vocab_size", vocab_size), ("n_seq", n_seq), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (n_seq, seq_len), generator=gen, dtype=torch.long)


# ---------------------------------------------------------------- block-by-block forward passes


class _Stop(Exception):
    """Raised by the last wanted block's hook: the rest of the model is never run."""


@contextlib.contextmanager
def _parameters_on_meta():
    """Build modules with parameters on the meta device (no memory) and buffers real.

    Parameters are created, then moved to ``meta`` as they are registered;
    buffers (rotary frequencies, position ids) stay on the CPU because they
    are computed in ``__init__`` and not stored in the weight files.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.detach().to("meta"), requires_grad=False)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


@dataclass
class BlockRunner:
    """A model whose weights are read from the files one block at a time during the forward pass.

    Built from ``config.json`` with every parameter on the meta device; a
    forward pre-hook on each block loads that block's parameters from the
    memory-mapped files (float32, on ``device``), and a forward hook drops
    them again, so memory holds one block (plus the activations kept).
    Modules outside the blocks (embeddings, norms) are loaded the same way,
    one module at a time. The pass stops after the last block asked for, so
    the LM head is never read.

    Use :func:`build_block_runner`; :meth:`collect` runs it.
    """

    model: nn.Module
    mlp_modules: Mapping[int, Mapping[str, nn.Module]]
    vocab_size: int
    architecture: str
    seq_len_limit: int | None
    device: str
    _weights: Any  # StreamingWeightMap: raw tensors by stored name
    _names: dict[str, str]  # model parameter name -> stored tensor name
    _containers: dict[int, tuple[str, nn.Module]]
    _leaves: tuple[tuple[str, nn.Module], ...]

    @property
    def blocks(self) -> tuple[int, ...]:
        return tuple(sorted(self.mlp_modules))

    def _load_params(self, prefix: str, module: nn.Module, recurse: bool) -> None:
        for pname, p in module.named_parameters(recurse=recurse):
            full = f"{prefix}.{pname}" if prefix else pname
            stored = self._names.get(full)
            if stored is None:
                raise UnreadableWeightsError(self._weights.source.root, f"cannot build a forward pass: "
                                             f"no stored tensor for parameter {full}; use the weights-only "
                                             "independence tests")
            t = self._weights.raw(stored).to(device=self.device, dtype=torch.float32)
            if tuple(t.shape) != tuple(p.shape):
                raise UnreadableWeightsError(self._weights.source.root, f"cannot build a forward pass: {stored} "
                                             f"has shape {tuple(t.shape)}, the config expects {tuple(p.shape)}")
            owner, leaf = _owner(module, pname)
            owner._parameters[leaf] = nn.Parameter(t, requires_grad=False)

    @staticmethod
    def _free_params(module: nn.Module, recurse: bool) -> None:
        for pname, p in list(module.named_parameters(recurse=recurse)):
            owner, leaf = _owner(module, pname)
            owner._parameters[leaf] = nn.Parameter(torch.empty(p.shape, device="meta"), requires_grad=False)

    def collect(self, input_ids: torch.Tensor, hooks: Any, n_blocks: int | None = None) -> Any:
        """Push ``input_ids`` through the first ``n_blocks`` blocks (all when ``None``), recording with ``hooks``.

        ``hooks(mlp_modules)`` is a context manager that records the listed
        blocks' MLP views and yields an object whose ``result()`` is returned
        (``indexer.activations.mlp_activation_hooks``: ``{block: MlpViews}``).
        """
        wanted = [b for b in self.blocks if n_blocks is None or b < n_blocks]
        if not wanted:
            raise ValueError(f"n_blocks: expected at least 1 block, got {n_blocks!r}")
        last = wanted[-1]
        handles = []

        def pre(prefix, recurse):
            def hook(module, _args):
                self._load_params(prefix, module, recurse)
            return hook

        def post(recurse, stop):
            def hook(module, _args, _out):
                self._free_params(module, recurse)
                if stop:
                    raise _Stop
            return hook

        try:
            for b, (prefix, module) in self._containers.items():
                handles.append(module.register_forward_pre_hook(pre(prefix, True)))
                handles.append(module.register_forward_hook(post(True, b == last)))
            for prefix, module in self._leaves:
                handles.append(module.register_forward_pre_hook(pre(prefix, False)))
                handles.append(module.register_forward_hook(post(False, False)))
            mlp = {b: self.mlp_modules[b] for b in wanted}
            with hooks(mlp) as captured, torch.no_grad():
                try:
                    self.model(input_ids.to(self.device))
                except _Stop:
                    pass
        finally:
            for h in handles:
                h.remove()
            for prefix, module in self._containers.values():
                self._free_params(module, True)
            for prefix, module in self._leaves:
                self._free_params(module, False)
        return captured.result()


def _owner(module: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    *path, leaf = dotted.split(".")
    for p in path:
        module = getattr(module, p)
    return module, leaf


def runner_device(want: str = "auto") -> str:
    """``cuda`` when torch sees a GPU and ``want`` (``MOTHERTREE_DEVICE``) allows it, else ``cpu``."""
    if (want or "auto").lower() == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _skeleton(auto: Any, config: Any, device: str, fail: Callable[..., Exception]) -> nn.Module:
    """The model built from its config with parameters on ``meta`` and buffers on ``device``, in eval mode.

    Buffers are computed in ``__init__`` (rotary frequencies) and not stored,
    so they are the only real memory until a block's hook loads its weights.
    """
    try:
        with _parameters_on_meta():
            model = auto.from_config(config, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise fail(f"transformers cannot build it ({type(e).__name__}: {e})", e) from e
    model.eval()
    for module in model.modules():
        for bname, buf in list(module._buffers.items()):
            if buf is not None:
                module._buffers[bname] = buf.to(device)
    return model


def _stored_names(model: nn.Module, stored: set[str]) -> dict[str, str]:
    """Model parameter name -> stored tensor name, for the parameters the files hold.

    A base model's names lack the head model's prefix, or vice versa, so each
    parameter is looked up as is, without the prefix and with it.
    """
    prefix = getattr(model, "base_model_prefix", "") or ""
    names: dict[str, str] = {}
    for pname, _ in model.named_parameters():
        for cand in (pname, pname.removeprefix(prefix + "."), f"{prefix}.{pname}"):
            if cand in stored:
                names[pname] = cand
                break
    return names


def _containers_and_leaves(
    model: nn.Module, mlp_modules: Mapping[int, Mapping[str, nn.Module]],
) -> tuple[dict[int, tuple[str, nn.Module]], tuple[tuple[str, nn.Module], ...]]:
    """Each block's container module (loaded and freed as one), and the modules with parameters outside them.

    A block's container is the module whose dotted name ends at the block
    index; everything else that owns parameters directly (embeddings, norms)
    is a leaf, loaded one module at a time.
    """
    containers: dict[int, tuple[str, nn.Module]] = {}
    modules = dict(model.named_modules())
    for block, roles in mlp_modules.items():
        some = next(iter(roles.values()))
        name = next(n for n, m in modules.items() if m is some)
        parts = name.split(".")
        cut = max(i for i, p in enumerate(parts) if p == str(block))
        cname = ".".join(parts[: cut + 1])
        containers[block] = (cname, modules[cname])
    inside = tuple(c for c, _ in containers.values())
    leaves = tuple(
        (n, m) for n, m in modules.items()
        if n and not any(n == c or n.startswith(c + ".") for c in inside)
        and any(True for _ in m.parameters(recurse=False))
    )
    return containers, leaves


def build_block_runner(path: str | Path, weights: Any = None, device: str | None = None) -> BlockRunner:
    """A :class:`BlockRunner` for the model folder ``path`` (no tensor bytes read yet).

    ``weights`` is the model's :class:`~mothertree.indexer.streaming.StreamingWeightMap`
    when the caller already has one. Works for every architecture that both
    ``transformers`` and the role map know (GQA included: the attention
    modules come from ``transformers``).

    Raises
    ------
    UnreadableWeightsError
        When no forward pass can be built; the message says to use the weights-only tests.
    """
    from .streaming import StreamingWeightMap

    folder = Path(path)
    fail = partial(_no_forward_pass, folder)
    config, architecture, auto = _model_class(folder)
    weights = weights if weights is not None else StreamingWeightMap(folder)
    dev = device or runner_device()
    model = _skeleton(auto, config, dev, fail)
    names = _stored_names(model, set(weights.stored_names()))
    mlp_modules = _mlp_modules(model, architecture, fail)
    containers, leaves = _containers_and_leaves(model, mlp_modules)
    inside = tuple(c for c, _ in containers.values())
    missing = [p for p in names.keys() ^ {p for p, _ in model.named_parameters()}
               if any(p.startswith(c + ".") for c in inside)]
    if missing:
        raise fail(f"the files lack block parameters the config expects (e.g. {sorted(missing)[0]})")
    vocab_size = int(getattr(config, "vocab_size", 0) or 0)
    if vocab_size < 1:
        raise fail("config.json has no vocab_size")
    max_pos = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return BlockRunner(model, mlp_modules, vocab_size, architecture, max_pos if isinstance(max_pos, int) else None,
                       dev, weights, names, containers, leaves)
