"""Stage-2 augmentations of a batch drawn on the device, both off by default (RESULTS.md measured both worse than
nothing): the flip (``--flip-p``: mirrored samples keep their summary target and lose their patch targets) and MixUp
(``--mix-p``: views and cached targets mixed with one weight). Random draws come from the run's generator, so a
resumed run draws the same."""

from __future__ import annotations

from typing import Callable

import torch


def flip_mask(n: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Which of ``n`` samples are mirrored (bool, each with probability ``p``)."""
    return torch.rand(n, generator=generator, device=device) < p


def mixup(n: int, p: float, generator: torch.Generator, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The MixUp of a batch of ``n`` samples, as a function of a (n, ...) tensor: sample i mixed with sample i - 1 at
    weight w_i ~ U(0, 1) with probability ``p`` (w_i = 1, unmixed, otherwise)."""
    mixed = torch.rand(n, generator=generator, device=device) < p
    weight = torch.where(mixed, torch.rand(n, generator=generator, device=device), 1.0)
    partner = torch.arange(n, device=device).roll(1)

    def mix(x: torch.Tensor) -> torch.Tensor:
        w = weight.view(-1, *[1] * (x.dim() - 1)).to(x.dtype)
        return w * x + (1 - w) * x[partner]
    return mix
