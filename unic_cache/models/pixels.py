"""Pixels for models: ``replay`` (a planned view of an image, at any resolution), ``replay_labels`` (the
same view of a per-pixel label map) and ``PixelNorm``.

``replay`` turns (image, params, resolution) into the exact uint8 pixels a teacher saw; stage 2 and
eval call the same function at the student's resolution.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn


def _geometry(image: Image.Image, params: np.ndarray, resolution: int, resample: int) -> Image.Image:
    """The crop (params 0-3, fractions of the image), resized to ``resolution``, and the flip (param 4)."""
    w, h = image.size
    x0, y0, cw, ch = (float(v) for v in params[:4])
    box = (x0 * w, y0 * h, (x0 + cw) * w, (y0 + ch) * h)
    image = image.resize((resolution, resolution), resample, box=box)
    return image.transpose(Image.FLIP_LEFT_RIGHT) if params[4] >= 0.5 else image


def replay_labels(labels: Image.Image, params: np.ndarray, resolution: int) -> np.ndarray:
    """The view ``params`` of a label map (mode L, class per pixel): uint8 (resolution, resolution), nearest
    neighbour; the photometric parameters do not apply to labels."""
    return np.asarray(_geometry(labels, params, resolution, Image.NEAREST))


def replay(image: Image.Image, params: np.ndarray, resolution: int) -> torch.Tensor:
    """The pixels of one view: uint8 tensor (3, resolution, resolution) from an RGB image and its params."""
    from torchvision.transforms import functional as F

    image = _geometry(image, params, resolution, Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    ops = (
        lambda t: F.adjust_brightness(t, float(params[5])) if params[5] != 1 else t,
        lambda t: F.adjust_contrast(t, float(params[6])) if params[6] != 1 else t,
        lambda t: F.adjust_saturation(t, float(params[7])) if params[7] != 1 else t,
        lambda t: F.adjust_hue(t, float(params[8])) if params[8] != 0 else t,
    )
    for op in params[9:13]:
        x = ops[int(op)](x)
    if params[13] >= 0.5:
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    if params[14] > 0:
        sigma = float(params[14]) * resolution / 224
        kernel = 2 * max(1, round(4 * resolution / 224)) + 1  # 9 at 224 px
        x = F.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
    if params[15] >= 0.5:
        x = F.solarize(x, 128)
    return x.contiguous()


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
