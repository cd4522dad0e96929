"""Fitting a teacher's codecs before its first unit is written: ``calibrate`` runs the teacher in float32
(never under autocast: the reference of every fidelity figure) over a fixed spread of sample-views, fits
each kind's codec on them (``cache.codecs.fit_codec``) and measures what it keeps (``cache.codecs.fidelity``) on
held-out sample-views the fit never saw (``held_out_views``), as the cache's other rows will be. The spread depends
only on the cache, never on ranks or workers, so every process fits the same codec.
"""

from __future__ import annotations

import numpy as np
import torch

from ..cache.codecs import Codec, FittedCodec, fidelity, fit_codec
from ..cache.store import Cache
from ..models.device_codecs import DeviceCodec, on_stored_grid, unpool_tokens
from ..models.teachers import Teacher

CALIBRATION_VIEWS = 8  # the plan's views 0..7 (UNIC's default count) feed every codec fit


def calibration_views(cache: Cache, sample_views: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, views): ``sample_views`` sample-views spread evenly over the good rows, one view per row while
    there are rows enough (distinct images fit a PCA far better than many views of a few), views cycling over the
    first ``CALIBRATION_VIEWS`` of the plan, whatever the cache's view count: a cache grown to more views keeps the
    codec a cache made with them would have fitted."""
    good = np.flatnonzero(~cache.bad)
    picks = np.arange(sample_views)
    return good[picks * len(good) // sample_views], picks % CALIBRATION_VIEWS


def held_out_views(cache: Cache, sample_views: int, fit: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, views): up to ``sample_views`` sample-views that are not among the ``fit`` ones, spread over the good
    rows as ``calibration_views`` spreads them (other views of the same rows first when rows run out); none when
    the fit took every one of the first ``CALIBRATION_VIEWS`` sample-views."""
    good, k = np.flatnonzero(~cache.bad), CALIBRATION_VIEWS
    taken = set(zip(fit[0].tolist(), fit[1].tolist()))
    out: list[tuple[int, int]] = []
    rows, views = calibration_views(cache, min(sample_views, len(good)))
    for shift in range(k):  # spread rows, views cycling from a shifted start, skipping the fit's pairs
        for row, view in zip(rows.tolist(), ((views + 1 + shift) % k).tolist()):
            if (row, view) not in taken and len(out) < sample_views:
                taken.add((row, view))
                out.append((row, view))
    rows, views = (np.array(v, np.int64) for v in zip(*out)) if out else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    return rows, views


def _forward(teacher: Teacher, batches, kinds, device: torch.device, bar) -> dict[str, torch.Tensor]:
    """Float32 outputs (no autocast) of ``teacher`` on uint8 image ``batches``, per kind."""
    outputs: dict[str, list[torch.Tensor]] = {kind: [] for kind in kinds}
    for images in batches:
        out = dict(zip(("summary", "patch"), teacher(images.to(device))))
        for kind in kinds:
            outputs[kind].append(out[kind].float())
        if bar is not None:  # once the batch is through the teacher: the bar never runs ahead of the work
            bar.update(len(images))
    return {kind: torch.cat(v) for kind, v in outputs.items() if v}


def calibrate(teacher: Teacher, batches, codecs: dict[str, Codec], device: torch.device, bar=None,
              held_out=()) -> dict[str, FittedCodec]:
    """Fit each kind's codec on a float32 forward of the calibration ``batches`` (uint8 images (B, 3, R, R))
    and record its fidelity on the ``held_out`` batches (on the fit's own vectors when there are none, and
    ``held_out`` says so); ``bar`` (a tqdm bar) moves by the images of each batch."""
    fit_out = _forward(teacher, batches, codecs, device, bar)
    test_out = _forward(teacher, held_out, codecs, device, bar)
    fitted = {}
    for kind, codec in codecs.items():
        x = fit_out[kind]
        pooled = on_stored_grid(x, teacher.info.grid, codec.pool)
        f = fit_codec(codec, pooled.reshape(-1, x.shape[-1]).double().cpu().numpy())
        dc = DeviceCodec(f, teacher.info.grid, device)
        x = test_out.get(kind, x)
        pooled = on_stored_grid(x, teacher.info.grid, codec.pool)
        decoded = dc.decode(dc.encode(pooled))
        reference = x.reshape(-1, x.shape[-1]).double().cpu().numpy()
        mean, std = reference.mean(0), np.sqrt(reference.var(0) + 1e-6)  # the loss's standardisation (TargetNorm)
        rebuilt = unpool_tokens(decoded, teacher.info.grid, codec.pool) if x.ndim == 3 else decoded
        f.fidelity = {**fidelity(reference, rebuilt.reshape(-1, x.shape[-1]).double().cpu().numpy(), mean, std),
                      "vectors": int(len(reference)), "held_out": kind in test_out}
        fitted[kind] = f
    return fitted
