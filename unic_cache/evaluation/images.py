"""A view of chosen rows (by default the eval view), as batches of uint8 pixels for a model (students, teachers)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..cache.pixels import CURRENT, PixelPipeline
from ..cache.sources import open_source
from ..cache.views import ViewPlan, ViewPolicy, plan_views
from ..models.photometric import photometric
from ..models.device_pixels import cut


def eval_params(policy: ViewPolicy, rows: np.ndarray, image_size: np.ndarray, view: int = 0, seed: int = 0) -> np.ndarray:
    """The parameters of view number ``view`` of ``policy`` drawn with ``seed`` (0: the eval view, the same for any
    seed) of each of ``rows``."""
    return plan_views(ViewPlan(views=1, seed=seed, policy=policy), rows, image_size[rows], first_view=view)[:, 0]


class EvalViews(Dataset):
    """One view of chosen rows at one resolution, as uint8 (3, R, R): by default the eval view (view 0: resize +
    centre crop), or any other view number of a view plan (a cache's, to replay or go past its views)."""

    def __init__(self, data: str, keys: np.ndarray, location: np.ndarray, image_size: np.ndarray,
                 rows: np.ndarray, resolution: int, policy: ViewPolicy = ViewPolicy(), digest: np.ndarray | None = None,
                 pixels: PixelPipeline = CURRENT, view: int = 0, seed: int = 0):
        """``policy``: the view policy whose eval crop to use (a cache's, so that its view 0 is matched);
        ``digest``: the indexed crc32c of each row's image bytes, checked on every read (None: unchecked);
        ``pixels``: the pixel pipeline (a cache's, so that its view 0 is replayed as the teachers saw it);
        ``view``, ``seed``: the view number and the plan's seed (a cache's ``plan.seed``) for a view other than 0."""
        self.data, self.keys, self.location, self.rows, self.resolution = data, keys, location, rows, resolution
        self.digest, self.pixels = digest, pixels
        self.params = eval_params(policy, rows, image_size, view, seed)
        self._source = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, np.ndarray]:
        """The view's geometry, uint8 (3, R, R), and its parameters (the CPU part of the pixel pipeline)."""
        if self._source is None:  # opened lazily in each worker process
            self._source = open_source(self.data)
        row = int(self.rows[i])
        data = self._source.read(self.location[row], str(self.keys[row]), None if self.digest is None else self.digest[row])
        image = self.pixels.decode_array(data) if self.pixels.device_geometry else self.pixels.decode(data)
        return cut(self.pixels, image, self.params[i], self.resolution)[0], self.params[i]

    def batches(self, batch_size: int = 128, workers: int = 0, desc: str = "images", progress: bool = True,
                device: torch.device | str = "cpu"):
        """Yield uint8 batches (b, 3, R, R) of the replayed views on ``device``, in row order, with a progress bar."""
        from tqdm import tqdm

        loader = DataLoader(self, batch_size=batch_size, num_workers=workers)
        with tqdm(total=len(self), desc=desc, unit="img", disable=not progress) as bar:
            for images, params in loader:
                yield photometric(images.to(device), params)
                bar.update(len(images))
