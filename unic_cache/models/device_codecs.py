"""Stored features on the device: ``DeviceCodec`` holds a fitted codec's parameters there, to encode teacher
outputs into its stored arrays (stage 1) and rebuild vectors from them (stage 2, on the GPU), and the token-grid
pooling the ``pool-F`` codecs use. The codecs themselves (specs, fit, encode, decode) are ``cache.codecs``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cache.codecs import FittedCodec


def pool_tokens(patch: torch.Tensor, grid: tuple[int, int], factor: int) -> torch.Tensor:
    """(B, T, D) tokens of a ``grid`` averaged over factor x factor cells (partial edge cells too)."""
    if factor == 1:
        return patch
    b, _, d = patch.shape
    fmap = patch.transpose(1, 2).reshape(b, d, *grid)
    return F.avg_pool2d(fmap, factor, ceil_mode=True).flatten(2).transpose(1, 2)


def on_stored_grid(x: torch.Tensor, grid: tuple[int, int], pool: int) -> torch.Tensor:
    """Teacher vectors in float32 as a codec stores them: patch tokens (B, T, D) pooled, summaries (B, D) as they are."""
    return pool_tokens(x.float(), grid, pool) if x.ndim == 3 else x.float()


def unpool_tokens(pooled: torch.Tensor, grid: tuple[int, int], factor: int) -> torch.Tensor:
    """Pooled tokens spread back over the ``grid`` they cover (to compare them with the original tokens)."""
    if factor == 1:
        return pooled
    b, _, d = pooled.shape
    cells = (-(-grid[0] // factor), -(-grid[1] // factor))
    fmap = pooled.transpose(1, 2).reshape(b, d, *cells).repeat_interleave(factor, 2).repeat_interleave(factor, 3)
    return fmap[:, :, :grid[0], :grid[1]].flatten(2).transpose(1, 2)


class DeviceCodec:
    """One kind's fitted codec with its parameters on the device: ``encode`` gives the stored arrays,
    ``decode`` what stage 2 rebuilds from them. Stage 1's projections and the statistics' decode run in float64, so
    that what is stored and its statistics do not depend on how many vectors a batch holds (float32 GEMMs round
    by their shape): a cache grown with more views stores what a cache made with them stores."""

    def __init__(self, fitted: FittedCodec, grid: tuple[int, int], device: torch.device):
        self.fitted, self.codec, self.grid = fitted, fitted.codec, grid
        self.params = {k: torch.as_tensor(v, device=device) for k, v in fitted.params.items()}
        self.params64 = {k: v.double() for k, v in self.params.items()}

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stored arrays (values, then any per-vector scale) of vectors ``x`` already on the stored grid
        (``original``: pooled once, shared with the fidelity measure)."""
        return self.fitted.encode(x.float(), self.params, self.params64)

    def decode(self, stored: list[torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The vectors rebuilt from ``stored``, computed in ``dtype`` (float64: for the statistics)."""
        params = self.params64 if dtype == torch.float64 else self.params
        return self.fitted.decode(*(s.to(dtype) for s in stored), params=params)

    def original(self, x: torch.Tensor) -> torch.Tensor:
        """What decoded vectors are compared with: the teacher's vectors, pooled as the codec pools them."""
        return on_stored_grid(x, self.grid, self.codec.pool)
