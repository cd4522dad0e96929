"""The optimizer's side of a distill run: UNIC's weight-decay groups and the optimizer state as a checkpoint stores it."""

from __future__ import annotations

import torch


def decay_groups(params: dict[str, torch.nn.Parameter], tokens: bool = True) -> set[str]:
    """Names of the parameters that AdamW decays: UNIC's rule (naver/unic ``get_params_groups``), every one
    but biases and 1-D parameters (norms), so the position embedding and the CLS/register tokens too;
    ``tokens=False`` also exempts those (this tool's rule before 0.2)."""
    return {n for n, p in params.items() if not n.endswith(".bias") and p.ndim > 1
            and (tokens or ("pos_embed" not in n and "token" not in n))}


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """The optimizer's state as flat tensors (``<param index>.<name>``) for safetensors, and its parameter groups."""
    state = opt.state_dict()
    tensors = {f"{i}.{k}": v.contiguous() for i, s in state["state"].items() for k, v in s.items()}
    return tensors, state["param_groups"]


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    """Restore the optimizer; a state tensor shaped like its parameter takes the parameter's memory format
    again (a fused kernel walks both in memory order: a contiguous moment of a channels-last weight would
    be applied to the wrong elements)."""
    params = [p for group in opt.param_groups for p in group["params"]]
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        i, k = name.split(".", 1)
        param = params[int(i)]
        if value.shape == param.shape:
            value = torch.empty_like(param, dtype=value.dtype).copy_(value)
        state.setdefault(int(i), {})[k] = value
    opt.load_state_dict({"state": state, "param_groups": groups})
