"""The loader worker's step of the pixel pipeline, one piece for stage 1, stage 2 and the pixel benchmark: read
image bytes are decoded, and either packed into a reused shared buffer (pipeline 3: the device cuts the views) or
cut into each view's geometry here with PIL (pipelines 1 and 2). The photometric part always runs on the device."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from ..cache.pixels import PixelPipeline
from .device_pixels import channels_first
from .geometry import Packed, SharedRing, pack


class PixelWorker:
    """One worker process's pixel step for a cache's pipeline ``pixels``; ``slots``: how many packed batches may be in
    flight at once (its ring of shared buffers, made on first use in the worker that packs)."""

    def __init__(self, pixels: PixelPipeline, slots: int):
        self.pixels, self.slots = pixels, slots
        self._ring: SharedRing | None = None

    def packed(self, blobs: Iterable[bytes | None], shapes: Sequence[tuple[int, int]]) -> Packed:
        """Pipeline 3: the images of ``blobs`` (None: no image, e.g. a bad sample) decoded and packed, each of the
        (H, W) its index gives in ``shapes``."""
        self._ring = self._ring or SharedRing(self.slots)
        return pack((None if b is None else self.pixels.decode_array(b) for b in blobs), shapes, self._ring)

    def cut(self, blobs: Iterable[bytes | None], params: np.ndarray, resolutions: dict[str, int]) -> dict[str, torch.Tensor]:
        """Pipelines 1 and 2: per name of ``resolutions``, uint8 (n, V, 3, R, R) views of each image cut by its
        ``params`` (n, V, P) at that resolution (zeros where a blob is None)."""
        n, k = params.shape[:2]
        out = {name: np.zeros((n, k, res, res, 3), np.uint8) for name, res in resolutions.items()}
        for i, blob in enumerate(blobs):
            if blob is None:
                continue
            image = self.pixels.decode(blob)
            for name, res in resolutions.items():
                for v in range(k):
                    out[name][i, v] = self.pixels.crop(image, params[i, v], res)
        return {name: channels_first(views) for name, views in out.items()}
