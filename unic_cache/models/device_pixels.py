"""Pixels for models: ``device_views`` (a batch's views on the device, from what the loader workers made),
``replay`` and ``cut`` (views of one image, on the CPU) and ``PixelNorm`` (uint8 pixels to a model's input).

The stages never call ``replay`` in their hot loops: loader workers decode (pipeline 3) or also cut the
geometry (pipelines 1 and 2, ``cache.pixels.PixelPipeline.crop``), and the main process makes the rest of
every view of a batch on the device (``device_views``: ``models.geometry`` then ``models.photometric``).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..cache.pixels import CURRENT, PixelPipeline
from .geometry import Packed, cut_views, pack
from .photometric import photometric


def device_views(pixels: torch.Tensor | Packed, params: np.ndarray, resolution: int, device: torch.device,
                 image_of_view: np.ndarray | None = None) -> torch.Tensor:
    """uint8 views (V, 3, R, R) on ``device`` with their params (V, P) applied: from the workers' crops (pipelines 1
    and 2, already cut) or from their packed decoded images (pipeline 3: view v from image ``image_of_view[v]``,
    by default image v), geometry then photometric part."""
    params = np.asarray(params)
    if isinstance(pixels, Packed):
        which = np.arange(len(params)) if image_of_view is None else image_of_view
        views = cut_views(pixels.data.to(device, non_blocking=True), pixels.shapes, which, params, resolution)
    else:
        views = pixels.to(device, non_blocking=True)
    return photometric(views, params)


def cut(pixels: PixelPipeline, image: Image.Image | torch.Tensor, params: np.ndarray, resolution: int) -> torch.Tensor:
    """The geometry of views ``params`` (V, P) of one decoded image as the pipeline cuts it, on the CPU: uint8
    (V, 3, R, R). ``image``: ``pixels.decode``'s PIL image, or ``decode_array``'s tensor under pipeline 3."""
    params = np.asarray(params).reshape(-1, np.asarray(params).shape[-1])
    if not pixels.device_geometry:
        return channels_first(np.stack([pixels.crop(image, p, resolution) for p in params]))
    array = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image))
    packed = pack([array])
    return cut_views(packed.data, packed.shapes, np.zeros(len(params), np.int64), params, resolution)


def replay(image: Image.Image, params: np.ndarray, resolution: int, pixels: PixelPipeline = CURRENT) -> torch.Tensor:
    """The pixels of one view: uint8 tensor (3, resolution, resolution) from a decoded image and its params."""
    return photometric(cut(pixels, image, params, resolution), np.asarray(params)[None])[0]


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
