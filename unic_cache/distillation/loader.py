"""Stage 2 data: the cache's pixel pipeline's worker part (pipeline 3: the decoded images, packed; 1 and 2: the
views' geometry cut too; the rest runs on the device, per batch), paired with cached teacher rows.

The order is a pure function of (seed, epoch, rank), never of the number of DataLoader workers: good
rows are cut into blocks of ``block_rows`` consecutive rows; each epoch the blocks are permuted and
dealt to ranks; a block's rows are read from the cache in one contiguous range per teacher, for one
view per block, and rows are shuffled within windows of ``window_blocks`` blocks. Workers read whole
windows; the main process cuts them into batches in stream order. Epoch e gives block b the view
(e + offset(b)) mod K, so every sample cycles through all K views before any repeats. The stream is
endless (epochs follow each other), so every rank yields the same number of batches, and a position
is just a step count: a resumed loader skips exactly the samples already used, without decoding them.
Targets are read checked (damaged, missing or non-finite data is an error), and every image's bytes
are checked against the digest in the index.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import UserError
from ..cache.sources import open_source
from ..cache.store import Cache
from ..cache.views import ViewPlan, plan_views, uniforms
from ..models.pixel_worker import PixelWorker
from ..models.geometry import cut_views, join, offsets, settle


class Target(NamedTuple):
    """One target of the student: a (teacher, kind) pair, e.g. ("dinov2", "patch"). ``name`` ("dinov2/patch") keys
    its predictions, a run's record and a pipeline's; ``module`` ("dinov2__patch") names its norm and head modules
    (a torch module name holds no '/'), so checkpoints keep the keys they always had."""

    teacher: str
    kind: str

    @classmethod
    def named(cls, name: str) -> "Target":
        """The target a ``name`` ("dinov2/patch", as a run's record keys it) stands for."""
        teacher, _, kind = name.rpartition("/")
        return cls(teacher, kind)

    @property
    def name(self) -> str:
        return f"{self.teacher}/{self.kind}"

    @property
    def module(self) -> str:
        return f"{self.teacher}__{self.kind}"


@dataclass(frozen=True)
class Selection:
    """Which cached arrays feed the student: its targets, in order."""

    targets: tuple[Target, ...]

    @classmethod
    def of(cls, cache: Cache, teachers: list[str], kinds: list[str] = ()) -> "Selection":
        """Every cached kind of each teacher, or only those in ``kinds``; a teacher left without any is an error."""
        targets = tuple(Target(t, kind) for t in teachers for kind in cache.teacher(t).kinds if not kinds or kind in kinds)
        for t in teachers:
            if not any(u == t for u, _ in targets):
                raise UserError(f"teacher {t} has none of the kinds {', '.join(kinds)} in the cache "
                                f"(it has {', '.join(cache.teacher(t).kinds)}); change --kinds or --teachers")
        return cls(targets)


_PREFETCH = 2  # windows in flight per DataLoader worker


class DistillStream(Dataset):
    """This rank's endless stream of samples {"image", "params", "row", "view", "<teacher>/<array>": stored
    target}: "image" is uint8 (3, R, R) with the view's geometry, "params" its view parameters (P,) for
    ``models.photometric`` (the colour part, applied per batch on the device). Under pixel pipeline 3 the
    batches carry the decoded images instead ("pixels", packed, and "pixel_shapes", ``models.geometry.Packed``),
    and the device cuts the views (``models.device_pixels.device_views``).

    An item is one window of blocks (``WindowRef``), read by a DataLoader worker as whole stacked
    arrays; ``batches`` cuts the windows, in stream order, into batches in the main process, so the
    samples of every step are the same whatever the number of workers. Iterating the stream itself
    yields single samples, in the same order (for inspection and tests).
    """

    def __init__(self, data: str, cache: Cache | str, selection: Selection, resolution: int, batch_size: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, start_step: int = 0,
                 block_rows: int = 64, window_blocks: int = 4, views: int | None = None,
                 online: dict[str, int] | None = None):
        """``views``: how many of the cached views to use (the first ones; default all). ``online``:
        teacher -> resolution for the reference mode, where every epoch draws a fresh view per sample,
        yields it at each teacher's resolution ("<teacher>/image") and reads no cached target. ``cache``: the cache
        (opened: the trainer's, not opened again) or its URL; each worker process opens its own."""
        cache = Cache.open(cache) if isinstance(cache, str) else cache
        self.data, self.url, self.selection, self.resolution = data, cache.url, selection, resolution
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world_size
        self.online = online or {}
        cached = cached_views(cache, selection)
        if views is not None and not 1 <= views <= cached:
            raise UserError(f"--views must be between 1 and the {cached} views the cache holds for "
                            f"{', '.join(sorted({t for t, _ in selection.targets}))}, got {views}")
        self.views, good = views or cached, ~cache.bad
        # what the workers read of the index, read once here and shared with the forked workers (never per worker)
        self.keys, self.location, self.digest = cache.keys, cache.location, cache.digest
        self.image_size = cache.image_size
        self.cached_views, self.plan = cache.views, cache.plan
        if good.sum() < world_size:
            raise UserError(f"{int(good.sum())} usable samples cannot feed {world_size} processes")
        block_rows = max(1, min(block_rows, int(good.sum()) // world_size))  # every rank gets a block
        self.start_step, self.block_rows, self.window_blocks = start_step, block_rows, window_blocks
        blocks = [np.flatnonzero(good[a:a + block_rows]) + a for a in range(0, cache.n, block_rows)]
        self.blocks = [b for b in blocks if len(b)]
        self._opened = None  # (source, cache, stores), opened lazily in each worker process
        self.worker = PixelWorker(cache.pixels, _PREFETCH + 2)  # decode, then pack (pipeline 3) or cut the views
        self._order: tuple[int, list] | None = None

    @property
    def geometry(self) -> dict:
        """What the stream's order depends on (a resume must find it unchanged)."""
        return {"block_rows": self.block_rows, "window_blocks": self.window_blocks, "batch_size": self.batch_size,
                "views": self.views, "seed": self.seed, "world_size": self.world, "blocks": len(self.blocks)}

    def epoch_order(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """(view, rows) per block of this rank for ``epoch``, in the order they are read."""
        perm = np.argsort(uniforms(self.seed, np.array([epoch]), np.array([0]), len(self.blocks))[0, 0])
        mine = perm[self.rank::self.world]
        offsets = (uniforms(self.seed + 1, mine, np.array([0]), 1)[:, 0, 0] * self.views).astype(int)
        return [(int((epoch + off) % self.views), self.blocks[b]) for b, off in zip(mine, offsets)]

    def windows(self):
        """Endless (epoch, window in epoch, window number, samples to skip) from the start step on."""
        skip, number, epoch = self.start_step * self.batch_size, 0, 0
        while True:
            order = self.epoch_order(epoch)
            for w in range(0, len(order), self.window_blocks):
                size = sum(len(rows) for _, rows in order[w:w + self.window_blocks])
                if skip >= size:
                    skip -= size
                else:
                    yield epoch, w // self.window_blocks, number, skip
                    skip = 0
                number += 1
            epoch += 1

    def __getitem__(self, ref: tuple[int, int, int, int]) -> dict[str, torch.Tensor]:
        """The samples of one window (after ``skip``), stacked, in stream order."""
        epoch, w, number, skip = ref
        if self._opened is None:
            cache = Cache.open(self.url)
            self._opened = (open_source(self.data), cache, {t: cache.teacher(t) for t, _ in self.selection.targets})
        source, cache, stores = self._opened
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.epoch_order(epoch))
        window = self._order[1][w * self.window_blocks:(w + 1) * self.window_blocks]
        rows = np.concatenate([r for _, r in window])
        views_of_rows = np.concatenate([np.full(len(r), v) for v, r in window])
        if self.online:  # view numbers past the cached ones: never a view the cache holds
            views_of_rows[:] = self.cached_views + epoch
            fresh = ViewPlan(views=1, seed=self.plan.seed, policy=self.plan.policy)
            params = plan_views(fresh, rows, self.image_size[rows], first_view=int(views_of_rows[0]))[:, 0]
            targets = {}
        else:
            first = stores[self.selection.targets[0][0]]  # the plan's views: the same in every teacher holding them
            params = _gather(lambda r, v: first.params(r)[:, v], window)
            targets = {f"{t}/{name}": _gather(functools.partial(stores[t].read_stored, name), window)
                       for t, kind in self.selection.targets for name in stores[t].arrays(kind)}  # decoded on the device
        order = np.random.default_rng([self.seed, epoch, number, 7]).permutation(len(rows))[skip:]
        needed = np.sort(rows[order])  # read in row order: nearby rows of a shard come in one request
        digest = None if self.digest is None else self.digest[needed]
        data = dict(zip(needed.tolist(), source.read_rows(self.location[needed], [str(k) for k in self.keys[needed]],
                                                          digest)))
        blobs = (data[int(rows[i])] for i in order)
        if self.worker.pixels.device_geometry:  # decoded only: the device cuts the views, at every resolution needed
            out = self.worker.packed(blobs, self.image_size[rows[order]][:, ::-1].tolist()).items()
        else:
            out = {name: views[:, 0] for name, views in self.worker.cut(blobs, params[order][:, None], self.resolutions).items()}
        out.update(params=torch.from_numpy(np.ascontiguousarray(params[order], np.float32)),
                   row=torch.from_numpy(rows[order]), view=torch.from_numpy(views_of_rows[order]))
        out.update({name: torch.from_numpy(values[order]) for name, values in targets.items()})
        return out

    def __iter__(self):
        for ref in self.windows():
            window = self[ref]
            if "pixels" in window:  # a sample's view, cut here as the device would
                packed = window.pop("pixels"), window.pop("pixel_shapes")
                window.update({name: cut_views(*packed, np.arange(len(window["row"])), window["params"].numpy(), res)
                               for name, res in self.resolutions.items()})
            for j in range(len(window["row"])):
                sample = {name: value[j] for name, value in window.items()}
                sample.update(row=int(sample["row"]), view=int(sample["view"]))
                yield sample

    @property
    def resolutions(self) -> dict[str, int]:
        """The views a sample has: "image" at the student's resolution, "<teacher>/image" at an online teacher's."""
        return {"image": self.resolution, **{f"{t}/image": res for t, res in self.online.items()}}

    def batches(self, workers: int = 0, pin_memory: bool = False):
        """Endless batches of ``batch_size`` samples; the same batches for any number of ``workers``."""
        loader = DataLoader(self, batch_size=None, sampler=_Endless(self.windows), num_workers=workers,
                            persistent_workers=workers > 0, prefetch_factor=_PREFETCH if workers else None,
                            worker_init_fn=_ignore_interrupts,  # Ctrl-C is the main process's to handle
                            generator=torch.Generator().manual_seed(self.seed))  # leaves the global RNG alone
        pending: list[dict[str, torch.Tensor]] = []
        have = 0
        for window in loader:
            pending.append(settle(window))  # out of the worker's reused buffer at once
            have += len(window["row"])
            while have >= self.batch_size:
                merged = pending[0] if len(pending) == 1 else {k: (join if k == "pixels" else torch.cat)([p[k] for p in pending])
                                                               for k in window}
                batch, rest = _split(merged, self.batch_size)
                pending, have = [rest], have - self.batch_size
                yield {k: v.pin_memory() for k, v in batch.items()} if pin_memory else batch


def _split(samples: dict[str, torch.Tensor], n: int) -> tuple[dict, dict]:
    """The first ``n`` samples and the rest (views, no copies); packed images are cut at the n-th image's end."""
    first, rest = {k: v[:n] for k, v in samples.items()}, {k: v[n:] for k, v in samples.items()}
    if "pixels" in samples:
        end = int(offsets(samples["pixel_shapes"][:n])[-1])
        first["pixels"], rest["pixels"] = samples["pixels"][:end], samples["pixels"][end:]
    return first, rest


def _ignore_interrupts(worker: int) -> None:
    """In a DataLoader worker: Ctrl-C reaches the whole process group; the main process stops the run
    cleanly (a checkpoint first) and then ends its workers."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Endless(Sampler):
    """A sampler over an endless generator of dataset keys."""

    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return iter(self.make())


def cached_views(cache: Cache, selection: Selection) -> int:
    """The views every teacher of ``selection`` holds (a cache's own, plus those added to a teacher since)."""
    return min(cache.teacher(t).views for t in {t for t, _ in selection.targets})


def _gather(read, window: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """``read(rows, view)`` per block, each block read as one contiguous range at its view."""
    return np.concatenate([read(slice(int(rows[0]), int(rows[-1]) + 1), view)[rows - rows[0]] for view, rows in window])
