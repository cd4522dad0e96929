"""Pixels for models: ``replay`` (a planned view of one image, both parts of the pixel pipeline) and
``PixelNorm`` (uint8 pixels to a model's normalised input).

The stages never call ``replay`` in their hot loops: loader workers run the CPU part per image
(``cache.pixels.PixelPipeline.crop``) and the main process runs the photometric part on whole batches on
the device (``models.photometric.photometric``). ``replay`` chains the two for one image, on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..cache.pixels import CURRENT, PixelPipeline
from .photometric import photometric


def replay(image: Image.Image, params: np.ndarray, resolution: int, pixels: PixelPipeline = CURRENT) -> torch.Tensor:
    """The pixels of one view: uint8 tensor (3, resolution, resolution) from a decoded image and its params."""
    return photometric(channels_first(np.array(pixels.crop(image, params, resolution))[None]), np.asarray(params)[None])[0]


def channels_first(views: np.ndarray) -> torch.Tensor:
    """uint8 views (..., R, R, 3), as ``PixelPipeline.crop`` gives them, as a contiguous tensor (..., 3, R, R)."""
    return torch.from_numpy(views).movedim(-1, -3).contiguous()


class PixelNorm(nn.Module):
    """uint8 pixels (B, 3, H, W) -> float input normalised with a model's per-channel mean and std."""

    def __init__(self, mean: tuple[float, ...] = (0.485, 0.456, 0.406), std: tuple[float, ...] = (0.229, 0.224, 0.225)):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255, persistent=False)

    @classmethod
    def of(cls, model: nn.Module) -> "PixelNorm":
        """The normalisation a timm model was trained with (its ``pretrained_cfg``)."""
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        return cls(*(tuple(cfg[k]) for k in ("mean", "std"))) if "mean" in cfg and "std" in cfg else cls()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std
