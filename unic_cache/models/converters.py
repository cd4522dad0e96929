"""Released checkpoints in other layouts, renamed to timm's: EfficientNet-PyTorch (``_conv_stem``,
``_blocks.N._expand_conv``, ...) to timm's EfficientNet (``conv_stem``, ``blocks.S.J.conv_pw``, ...), and the
DeiT-III release's layer scales (``blocks.N.gamma_1``) to timm's (``blocks.N.ls1.gamma``).

The checkpoint's blocks are numbered flat; timm groups them by stage, so the flat index is mapped to
the model's own block names in order. A block without ``_expand_conv`` is timm's depthwise-separable
block (dw, then pw); one with it is an inverted residual (pw, dw, pwl).
"""

from __future__ import annotations

import re

import torch
from torch import nn

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
              "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}


def is_efficientnet_pytorch(state: dict[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def from_efficientnet_pytorch(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` in EfficientNet-PyTorch's layout, renamed to the keys of timm's ``model``; keys that do
    not map are kept as they are (``load_strict`` then names them)."""
    blocks = list(dict.fromkeys(".".join(k.split(".")[:3]) for k in model.state_dict() if k.startswith("blocks.")))
    expands = {k.split(".")[1] for k in state if k.startswith("_blocks.") and k.split(".")[2] == "_expand_conv"}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and int(parts[1]) < len(blocks):
            names = _INVERTED if parts[1] in expands else _SEPARABLE
            layer = ".".join(parts[2:-1])
            out[f"{blocks[int(parts[1])]}.{names.get(layer, layer)}.{parts[-1]}"] = value
        elif parts[0] in _TOP:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = value
        else:
            out[key] = value
    return out


def from_layer_scale_gammas(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """DeiT-III's released layer scales ``blocks.N.gamma_1`` / ``gamma_2`` renamed to timm's ``ls1.gamma`` /
    ``ls2.gamma`` (the facebookresearch/deit ``Layer_scale_init_Block`` names) for a model that has those (timm's
    Eva keeps ``gamma_1``); other keys as they are."""
    if not any(k.endswith(".ls1.gamma") for k in model.state_dict()):
        return state
    return {re.sub(r"^(blocks\.\d+)\.gamma_([12])$", r"\1.ls\2.gamma", k): v for k, v in state.items()}
