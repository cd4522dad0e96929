"""Stage 2 data: images replayed at the student's resolution, paired with cached teacher rows.

The order is a pure function of (seed, epoch, rank): good rows are cut into blocks of ``block_rows``
consecutive rows; each epoch the blocks are permuted and dealt to ranks; a block's rows are read from
the cache in one contiguous range per teacher, for one view per block, and rows are shuffled within
windows of ``window_blocks`` blocks. Epoch e gives block b the view (e + offset(b)) mod K, so every
sample cycles through all K views before any repeats. The stream is endless (epochs follow each
other), so every rank yields the same number of batches, and a position is just a step count: a
resumed loader skips exactly the samples already used, without decoding them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from .errors import UserError
from .sources import decode_image, open_source
from .store import Cache
from .views import PlanConfig, ViewPolicy, plan_views, replay, uniforms


@dataclass(frozen=True)
class Selection:
    """Which cached arrays feed the student: (teacher, kind) pairs, e.g. ("dinov2", "patch")."""

    targets: tuple[tuple[str, str], ...]

    @classmethod
    def all_kinds(cls, cache: Cache, teachers: list[str]) -> "Selection":
        return cls(tuple((t, kind) for t in teachers for kind in cache.teacher(t).kinds))


class DistillStream(IterableDataset):
    """Endless stream of {"image", "row", "view", "<teacher>/<kind>": target} for one rank."""

    def __init__(self, data: str, cache_url: str, selection: Selection, resolution: int, batch_size: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, start_step: int = 0,
                 block_rows: int = 64, window_blocks: int = 4, views: int | None = None,
                 online: dict[str, int] | None = None):
        """``views``: how many of the cached views to use (the first ones; default all). ``online``:
        teacher -> resolution for the reference mode, where every epoch draws a fresh view per sample,
        yields it at each teacher's resolution ("<teacher>/image") and reads no cached target."""
        self.data, self.url, self.selection, self.resolution = data, cache_url, selection, resolution
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world_size
        self.online = online or {}
        cache = Cache.open(cache_url)
        if views is not None and not 1 <= views <= cache.views:
            raise UserError(f"--views must be between 1 and the {cache.views} views in the cache, got {views}")
        self.views, good = views or cache.views, ~cache.bad
        self.cached_views, self.plan = cache.views, cache.plan
        if good.sum() < world_size:
            raise UserError(f"{int(good.sum())} usable samples cannot feed {world_size} processes")
        block_rows = max(1, min(block_rows, int(good.sum()) // world_size))  # every rank gets a block
        self.start_step, self.block_rows, self.window_blocks = start_step, block_rows, window_blocks
        blocks = [np.flatnonzero(good[a:a + block_rows]) + a for a in range(0, cache.n, block_rows)]
        self.blocks = [b for b in blocks if len(b)]

    def epoch_order(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """(view, rows) per block of this rank for ``epoch``, in the order they are read."""
        perm = np.argsort(uniforms(self.seed, np.array([epoch]), np.array([0]), len(self.blocks))[0, 0])
        mine = perm[self.rank::self.world]
        offsets = (uniforms(self.seed + 1, mine, np.array([0]), 1)[:, 0, 0] * self.views).astype(int)
        return [(int((epoch + off) % self.views), self.blocks[b]) for b, off in zip(mine, offsets)]

    def _windows(self, worker: int, workers: int):
        """Endless (epoch, window index, [(view, rows)]) for one DataLoader worker."""
        epoch, index = 0, 0
        while True:
            order = self.epoch_order(epoch)
            for w in range(0, len(order), self.window_blocks):
                if index % workers == worker:
                    yield epoch, index, order[w:w + self.window_blocks]
                index += 1
            epoch += 1

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # DataLoader takes whole batches from workers in turn: this worker made batches worker, worker+W, ...
        skip = max(0, -(-(self.start_step - worker) // workers)) * self.batch_size
        source = open_source(self.data)
        cache = Cache.open(self.url)
        stores = {t: cache.teacher(t) for t, _ in self.selection.targets}
        keys, location, params, image_size = cache.keys, cache.location, cache.group["views/params"], cache.image_size
        fresh = PlanConfig(views=1, seed=self.plan.seed, policy=self.plan.policy)
        for epoch, index, window in self._windows(worker, workers):
            rows = np.concatenate([r for _, r in window])
            views = np.concatenate([np.full(len(r), v) for v, r in window])
            if skip >= len(rows):
                skip -= len(rows)
                continue
            if self.online:  # view numbers past the cached ones: never a view the cache holds
                views[:] = self.cached_views + epoch
                window_params = plan_views(fresh, rows, image_size[rows], first_view=int(views[0]))[:, 0]
                targets = {}
            else:
                window_params = _gather(params, window)
                targets = {f"{t}/{kind}": _gather(stores[t].group[kind], window) for t, kind in self.selection.targets}
            order = np.random.default_rng([self.seed, epoch, index, 7]).permutation(len(rows))[skip:]
            skip = 0
            for i in order:
                row, view = int(rows[i]), int(views[i])
                image = decode_image(source.read(location[row], str(keys[row])))
                sample = {"image": replay(image, window_params[i], self.resolution), "row": row, "view": view}
                for t, res in self.online.items():
                    sample[f"{t}/image"] = replay(image, window_params[i], res)
                for name, values in targets.items():
                    sample[name] = torch.from_numpy(values[i])
                yield sample


def _gather(array, window: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """Rows of ``array`` at one view per block, each block read as one contiguous range."""
    return np.concatenate([array[rows[0]:rows[-1] + 1, view][rows - rows[0]] for view, rows in window])


class EvalViews(Dataset):
    """The eval view (view 0: resize + centre crop) of chosen rows at one resolution, as uint8 (3, R, R)."""

    def __init__(self, data: str, keys: np.ndarray, location: np.ndarray, image_size: np.ndarray,
                 rows: np.ndarray, resolution: int, policy: ViewPolicy = ViewPolicy()):
        """``policy``: the view policy whose eval crop to use (a cache's, so that its view 0 is matched)."""
        self.data, self.keys, self.location, self.rows, self.resolution = data, keys, location, rows, resolution
        self.params = plan_views(PlanConfig(views=1, policy=policy), rows, image_size[rows])[:, 0]
        self._source = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._source is None:  # opened lazily in each worker process
            self._source = open_source(self.data)
        row = int(self.rows[i])
        return replay(decode_image(self._source.read(self.location[row], str(self.keys[row]))), self.params[i], self.resolution)

    def batches(self, batch_size: int = 128, workers: int = 0, desc: str = "images", progress: bool = True):
        """Yield uint8 batches (b, 3, R, R) in row order, with a progress bar."""
        from tqdm import tqdm

        loader = DataLoader(self, batch_size=batch_size, num_workers=workers)
        with tqdm(total=len(self), desc=desc, unit="img", disable=not progress) as bar:
            for images in loader:
                yield images
                bar.update(len(images))
