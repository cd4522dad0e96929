"""Dense probes: a linear classifier on every patch token, scored as mIoU against label maps.

A dense task's label map (``labels.Labels.maps``) is cut to the model's view of the sample (the eval
view, view 0) at the model's input resolution, then pooled to the model's token grid by majority: each
token's label is the most frequent class among the pixels it covers (a cell where ignored pixels are
the most frequent is ignored). The probe trains on the train rows' tokens, chooses its weight decay on
the val rows' mIoU and reports the test rows' mIoU, so every model is scored at its own grid.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from ..cache.pixels import crop_labels
from .labels import IGNORE
from .probes import linear_probe

DENSE_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3)


def view_maps(maps: dict[int, bytes], rows: np.ndarray, params: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 (len(rows), resolution, resolution): each row's label map in its view ``params[i]``
    (all ``IGNORE`` for a row without a map)."""
    out = np.full((len(rows), resolution, resolution), IGNORE, np.uint8)
    for i, row in enumerate(rows):
        data = maps.get(int(row))
        if data is None:
            continue
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except OSError:
            raise UserError(f"row {row}: its label map is not a readable PNG") from None
        if image.mode not in ("L", "P"):
            raise UserError(f"row {row}: a label map must be a one-channel PNG of class indices, got mode {image.mode}")
        out[i] = crop_labels(image, params[i], resolution)
    return out


def pool_majority(maps: np.ndarray, grid: tuple[int, int], classes: int) -> np.ndarray:
    """int64 (n, gh * gw): per token (row-major) the most frequent class of the pixels it covers, -1 where
    ignored pixels (``IGNORE`` or any value >= ``classes``) are the most frequent; ties go to the lower class."""
    n, h, w = maps.shape
    gh, gw = grid
    cell = (np.arange(h)[:, None] * gh // h) * gw + np.arange(w)[None, :] * gw // w  # token of each pixel
    labels = np.where(maps < classes, maps, classes).astype(np.int64)  # ignored: class ``classes``
    index = (np.arange(n)[:, None, None] * (gh * gw) + cell[None]) * (classes + 1) + labels
    counts = np.bincount(index.ravel(), minlength=n * gh * gw * (classes + 1)).reshape(n, gh * gw, classes + 1)
    major = counts.argmax(-1)
    return np.where(major == classes, -1, major)


def miou(pred: torch.Tensor, target: torch.Tensor, classes: int) -> float:
    """Mean intersection over union (x 100) over the classes present in the target or the prediction."""
    confusion = torch.bincount(target.long() * classes + pred.long(), minlength=classes * classes).reshape(classes, classes)
    inter = confusion.diag().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - inter
    present = union > 0
    return 100.0 * float((inter[present] / union[present]).mean()) if present.any() else 0.0


def dense_probe(tokens: torch.Tensor, labels: torch.Tensor, split: np.ndarray, classes: int,
                max_iter: int = 200) -> tuple[float, float]:
    """(test mIoU, val mIoU) of a linear probe on tokens (rows, tokens, dim) with labels (rows, tokens),
    rows split 0/1/2 = train/val/test; tokens labelled -1 are left out."""
    parts = []
    for s in range(3):
        rows = torch.from_numpy(np.flatnonzero(split == s)).to(tokens.device)
        x, y = tokens[rows].flatten(0, 1), labels[rows].flatten()
        keep = y >= 0
        parts += [x[keep], y[keep]]
    if min(len(p) for p in parts) == 0:
        raise UserError("too few labelled tokens for a dense probe (every split needs some)")
    test, val, _ = linear_probe(*parts, classes, DENSE_WEIGHT_DECAYS, max_iter, metric=miou)
    return test, val
