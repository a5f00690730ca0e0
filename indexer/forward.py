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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..registry.errors import UnreadableWeightsError
from .roles import assign_role, detect_family

__all__ = ["ForwardModel", "load_forward_model", "find_mlp_modules", "seeded_inputs"]

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
    family : str
        Role-table family (``"llama"``, ``"gpt2"``, ...).
    """

    model: nn.Module
    mlp_modules: Mapping[int, Mapping[str, nn.Module]]
    vocab_size: int
    family: str


def find_mlp_modules(model: nn.Module, family: str) -> dict[int, dict[str, nn.Module]]:
    """Map each block to its MLP projection modules, via the canonical role of ``name + ".weight"``."""
    found: dict[int, dict[str, nn.Module]] = {}
    for name, module in model.named_modules():
        if not name:
            continue
        role = assign_role(name + ".weight", family)
        if role.role in _MLP_ROLES and role.block is not None and isinstance(getattr(module, "weight", None), torch.Tensor):
            found.setdefault(role.block, {})[role.role] = module
    return dict(sorted(found.items()))


def load_forward_model(path: str | Path) -> ForwardModel:
    """Build the ``transformers`` model stored in the folder ``path``.

    Decoder families load with ``AutoModelForCausalLM``; encoders (BERT
    family) and anything without a causal-LM class with ``AutoModel``.
    Nothing is downloaded and no code from the folder is run.

    Raises
    ------
    UnreadableWeightsError
        When the folder has no ``config.json``, the architecture is unknown to
        ``transformers`` or to the role map, the weights do not load, or no
        MLP block can be located. The message says to use the weights-only tests.
    """
    folder = Path(path)
    config_path = folder / "config.json"

    def fail(problem: str, cause: Exception | None = None) -> UnreadableWeightsError:
        err = UnreadableWeightsError(
            folder, f"cannot build a forward pass: {problem}; use the weights-only independence tests"
        )
        err.__cause__ = cause
        return err

    if not config_path.is_file():
        raise fail("no config.json in the folder")
    try:
        raw_config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise fail(f"config.json is not valid JSON ({e})", e) from e
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # Our own progress goes to stderr; transformers' per-load bars would drown it.
    hf_logging.disable_progress_bar()
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise fail(f"transformers does not know model_type {raw_config.get('model_type')!r}", e) from e
    family = detect_family(raw_config, ())
    if family == "unknown":
        raise fail(f"the role map has no family for model_type {raw_config.get('model_type')!r}")
    auto = AutoModelForCausalLM if family != "bert" and config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES \
        else AutoModel
    try:
        model = auto.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False, weights_only=True, dtype=torch.float32
        )
    except (OSError, ValueError, RuntimeError, KeyError, ImportError) as e:  # ImportError: GPTQ/AWQ need optimum
        raise fail(f"the weights do not load ({type(e).__name__}: {e})", e) from e
    model.eval()
    mlp_modules = find_mlp_modules(model, family)
    if not mlp_modules:
        raise fail(f"no MLP block found in the {family} model")
    vocab_size = int(getattr(config, "vocab_size", 0) or model.get_input_embeddings().num_embeddings)
    return ForwardModel(model=model, mlp_modules=mlp_modules, vocab_size=vocab_size, family=family)


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
