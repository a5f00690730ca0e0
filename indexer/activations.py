"""Collect the two views of each MLP block's hidden units that phi_MATCH compares.

The model is any :class:`torch.nn.Module`; which submodules are a block's MLP
projections is given by the caller (:mod:`.forward` finds them from the
canonical role map), so this module knows nothing about files or
architectures. It runs model code (forward hooks), which is why it lives in
the indexer and not in the pure ``lineage`` package; the views it returns
become :class:`mothertree.lineage.BlockActivations` where a test needs them.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import torch
from torch import nn

__all__ = ["MlpViews", "collect_mlp_activations"]


class MlpViews(NamedTuple):
    """Two views of one MLP block's hidden units (``kind``: ``"glu"`` or ``"plain"``; ``a``, ``b``: ``[h, N]``)."""

    kind: str
    a: torch.Tensor
    b: torch.Tensor

_GLU_ROLES = ("mlp.gate", "mlp.up")
_FUSED_ROLE = "mlp.gate_up"
_PLAIN_ROLES = ("mlp.in", "mlp.out")


def _output_projection(module: nn.Module, name: str) -> torch.Tensor:
    """The canonical output projection ``D`` as ``[hidden, intermediate]``.

    ``nn.Linear`` stores ``[out, in]`` = ``D``; GPT-2's ``Conv1D`` stores
    ``[in, out]`` = ``D^T``.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise TypeError(f"{name}: expected a module with a 2-D weight, got {type(module).__name__}")
    if isinstance(module, nn.Linear):
        return weight.detach()
    if type(module).__name__ == "Conv1D":
        return weight.detach().T
    raise TypeError(f"{name}: expected nn.Linear or Conv1D, got {type(module).__name__}")


def _check_roles(block: Any, roles: Any) -> str:
    if not isinstance(block, int) or not isinstance(roles, Mapping):
        raise TypeError(f"mlp_modules: expected {{block: {{role: module}}}}, got {block!r}: {type(roles).__name__}")
    have = set(roles)
    if set(_GLU_ROLES) <= have or _FUSED_ROLE in have:
        return "glu"
    if set(_PLAIN_ROLES) <= have:
        return "plain"
    raise ValueError(
        f"mlp_modules[{block}]: expected roles {_GLU_ROLES}, ({_FUSED_ROLE!r},) or {_PLAIN_ROLES}, "
        f"got {tuple(sorted(have))}"
    )


def collect_mlp_activations(
    model: nn.Module,
    mlp_modules: Mapping[int, Mapping[str, nn.Module]],
    input_ids: torch.Tensor,
) -> dict[int, MlpViews]:
    """Run ``model`` once on ``input_ids`` and record each MLP block's two views.

    Forward hooks capture, for every block:

    - GLU (``mlp.gate`` + ``mlp.up``, or fused ``mlp.gate_up``): the gate and
      up projections' outputs;
    - plain (``mlp.in`` + ``mlp.out``): the pre-activation ``W_in X`` and
      ``D^T X``, where ``X`` is the input of ``mlp.in`` (the block's own
      residual input, after its norm) and ``D`` the output projection.

    Parameters
    ----------
    model : torch.nn.Module
        Called as ``model(input_ids)``; its outputs are ignored.
    mlp_modules : mapping block -> {role: module}
        The MLP projections of each block, by canonical role.
    input_ids : LongTensor of shape (n_seq, seq_len)
        The same tokens for every model compared, so columns line up:
        ``N = n_seq * seq_len`` columns per view.

    Returns
    -------
    dict block -> MlpViews
        Each view is ``[intermediate, N]`` float32: rows are hidden units
        because those are what a permutation of the block moves.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.dtype != torch.long:
        got = f"{input_ids.dtype} tensor of shape {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor) \
            else type(input_ids).__name__
        raise TypeError(f"input_ids: expected a 2-D torch.long tensor [n_seq, seq_len], got {got}")
    if not isinstance(mlp_modules, Mapping) or not mlp_modules:
        raise ValueError("mlp_modules: expected at least one block, got none")
    kinds = {block: _check_roles(block, roles) for block, roles in mlp_modules.items()}

    captured: dict[tuple[int, str], torch.Tensor] = {}

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.detach().reshape(-1, t.shape[-1]).to(torch.float32).T.contiguous()

    def output_hook(block: int, view: str):
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            captured[block, view] = rows(output)
        return hook

    def fused_hook(block: int):
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            gate, up = output.chunk(2, dim=-1)
            captured[block, "a"], captured[block, "b"] = rows(gate), rows(up)
        return hook

    def plain_hook(block: int, d: torch.Tensor):
        def hook(_module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float32)
            captured[block, "a"] = rows(output)
            captured[block, "b"] = (x @ d.to(torch.float32)).T.contiguous()
        return hook

    handles = []
    try:
        for block, roles in mlp_modules.items():
            if kinds[block] == "plain":
                d = _output_projection(roles["mlp.out"], f"mlp_modules[{block}]['mlp.out']")
                handles.append(roles["mlp.in"].register_forward_hook(plain_hook(block, d)))
            elif _FUSED_ROLE in roles:
                handles.append(roles[_FUSED_ROLE].register_forward_hook(fused_hook(block)))
            else:
                handles.append(roles["mlp.gate"].register_forward_hook(output_hook(block, "a")))
                handles.append(roles["mlp.up"].register_forward_hook(output_hook(block, "b")))
        with torch.no_grad():
            model(input_ids)
    finally:
        for handle in handles:
            handle.remove()
    missing = sorted(b for b in kinds if (b, "a") not in captured or (b, "b") not in captured)
    if missing:
        raise ValueError(f"mlp_modules: expected every block's modules to run in the forward pass, "
                         f"got no output from blocks {missing}")
    return {b: MlpViews(kinds[b], captured[b, "a"], captured[b, "b"]) for b in sorted(kinds)}
