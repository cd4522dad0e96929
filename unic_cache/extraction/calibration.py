"""Fitting a teacher's codecs before its first unit is written: ``calibrate`` runs the teacher in float32
(never under autocast: the reference of every fidelity figure) over a fixed spread of sample-views, fits
each kind's codec on them (``cache.codecs.fit_codec``) and measures what it keeps (``cache.codecs.fidelity``).
The spread depends only on the cache, never on ranks or workers, so every process fits the same codec.
"""

from __future__ import annotations

import numpy as np
import torch

from ..cache.codecs import Codec, FittedCodec, fidelity, fit_codec
from ..cache.store import Cache
from ..models.codecs import DeviceCodec, on_stored_grid, unpool_tokens
from ..models.teachers import Teacher


def calibration_views(cache: Cache, sample_views: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, views): ``sample_views`` sample-views spread evenly over the good rows, one view per row while
    there are rows enough (distinct images fit a PCA far better than many views of a few), views cycling."""
    good = np.flatnonzero(~cache.bad)
    picks = np.arange(sample_views)
    return good[picks * len(good) // sample_views], picks % cache.views


def calibrate(teacher: Teacher, batches, codecs: dict[str, Codec], device: torch.device, bar=None) -> dict[str, FittedCodec]:
    """Fit each kind's codec on a float32 forward of the calibration ``batches`` (uint8 images (B, 3, R, R))
    and record its fidelity there; ``bar`` (a tqdm bar) moves by the images of each batch."""
    outputs: dict[str, list[torch.Tensor]] = {kind: [] for kind in codecs}
    for images in batches:
        if bar is not None:
            bar.update(len(images))
        out = dict(zip(("summary", "patch"), teacher(images.to(device))))  # float32: no autocast
        for kind in codecs:
            outputs[kind].append(out[kind].float())
    fitted = {}
    for kind, codec in codecs.items():
        x = torch.cat(outputs[kind])
        pooled = on_stored_grid(x, teacher.info.grid, codec.pool)
        f = fit_codec(codec, pooled.reshape(-1, x.shape[-1]).double().cpu().numpy())
        dc = DeviceCodec(f, teacher.info.grid, device)
        decoded = dc.decode(dc.encode(pooled))
        reference = x.reshape(-1, x.shape[-1]).double().cpu().numpy()
        mean, std = reference.mean(0), np.sqrt(reference.var(0) + 1e-6)  # the loss's standardisation (TargetNorm)
        rebuilt = unpool_tokens(decoded, teacher.info.grid, codec.pool) if x.ndim == 3 else decoded
        f.fidelity = {**fidelity(reference, rebuilt.reshape(-1, x.shape[-1]).double().cpu().numpy(), mean, std),
                      "vectors": int(len(reference))}
        fitted[kind] = f
    return fitted
