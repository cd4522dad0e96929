"""Stage 1: run a teacher once over every (sample, view) and write its features into the cache.

Work is split into units (one zarr shard of rows); a process owns the units ``u % world_size ==
rank``, and within a unit the batches are always the same rows in the same order, so features and
statistics are bit-identical whatever the number of processes or restarts. Units already flagged in
``progress`` are skipped: re-running the same command resumes.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .. import __version__
from ..cache.claims import clean_stale_temp_files, clear_stale
from ..cache.codecs import kind_codecs
from ..cache.sources import Source
from ..cache.sizing import check_free_space
from ..cache.store import Cache
from ..cache.statistics import Moments
from ..cache.teacher import TeacherStore, UnitDigest
from ..cache.views import plan_views
from ..errors import UserError
from ..models.device_codecs import DeviceCodec
from ..models.geometry import Packed
from ..models.pixel_worker import PixelWorker
from ..models.device_pixels import device_views
from ..models.teachers import build_teacher
from ..runtime import HostCopy, autocast_for, pick_device, prepare_model, rank_world, share_cores, to_device
from .calibration import CALIBRATION_VIEWS, calibrate, calibration_views, held_out_views
from .options import ExtractOptions, Prepared, prepare


@dataclass
class ExtractReport:
    """What one extract call did."""

    teacher: str
    cache: str
    units_total: int
    units_done_before: int
    units_done_now: int
    samples: int
    seconds: float
    complete: bool
    bad_samples: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


_PREFETCH = 4  # batches in flight per DataLoader worker


class ViewBatches(Dataset):
    """Rows -> (rows, pixels, valid (b,), view params (b, K, P)); an image is decoded once for its K views.
    ``pixels``: pipeline 3, the decoded images packed (``Packed``; the device cuts the views); pipelines 1 and
    2, the views' geometry cut here, uint8 (b, K, 3, R, R). The photometric part runs on the device. The views are
    the ``views`` planned from ``first_view`` on (those of a teacher group: the cache's, or a view block's)."""

    def __init__(self, source: Source, cache: Cache, resolution: int, views: int, first_view: int = 0):
        self.source, self.url, self.resolution, self.views = source, cache.url, resolution, views
        self.keys, self.location, self.bad, self.digest = cache.keys, cache.location, cache.bad, cache.digest
        self.pixels, self.image_size, self.first_view = cache.pixels, cache.image_size, first_view
        self.plan = replace(cache.plan, views=views)
        self.worker = PixelWorker(cache.pixels, _PREFETCH + 2)  # decode, then pack (pipeline 3) or cut the views

    def __len__(self) -> int:
        return len(self.keys)

    def __getitems__(self, rows: list[int]) -> tuple[np.ndarray, torch.Tensor | Packed, torch.Tensor, np.ndarray]:
        picked = np.asarray(rows)  # the plan is a pure function of (seed, row, view): what the cache stores
        params = plan_views(self.plan, picked, self.image_size[picked], self.first_view)
        valid = torch.zeros(len(rows), dtype=torch.bool)
        good = [(i, row) for i, row in enumerate(rows) if not self.bad[row]]  # rows come in row order
        good_rows = np.array([row for _, row in good], dtype=int)
        data = self.source.read_rows(self.location[good_rows], [str(k) for k in self.keys[good_rows]],
                                     None if self.digest is None else self.digest[good_rows]) if good else []
        valid[[i for i, _ in good]] = True
        blobs = dict(zip((i for i, _ in good), data))
        in_order = (blobs.get(i) for i in range(len(rows)))  # None: a bad sample
        if self.pixels.device_geometry:
            shapes = [tuple(self.image_size[row][::-1]) if ok else (0, 0) for row, ok in zip(rows, valid.tolist())]
            return np.asarray(rows), self.worker.packed(in_order, shapes), valid, params
        return np.asarray(rows), self.worker.cut(in_order, params, {"image": self.resolution})["image"], valid, params


def batch_views(pixels: torch.Tensor | Packed, params: np.ndarray, rows: np.ndarray, views: np.ndarray,
                resolution: int, device: torch.device) -> torch.Tensor:
    """The views (rows[i], views[i]) of a ``ViewBatches`` batch (rows: its positions), on ``device``, ready for
    the teacher: uint8 (len(rows), 3, R, R)."""
    picked = params[rows, views]
    if isinstance(pixels, Packed):
        return device_views(pixels, picked, resolution, device, image_of_view=rows)
    return device_views(pixels[torch.from_numpy(rows), torch.from_numpy(views)], picked, resolution, device)


def _as_is(batch):
    return batch


def cosine_sum(original: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    """Sum over vectors (last dim) of cos(original, decoded), a float64 scalar on their device: the codec's
    fidelity, before averaging."""
    return torch.nn.functional.cosine_similarity(original.double(), decoded.double(), dim=-1, eps=1e-12).sum()


def batch_moments(x: torch.Tensor) -> Moments:
    """Moments of the rows of x (M, D), computed in float64 and left on x's device."""
    x = x.double()
    mean = x.mean(0)
    xc = x - mean
    return Moments(float(x.shape[0]), mean, xc.T @ xc)


class _UnitWriter:
    """Writes finished shards and units on a background thread so that the teacher keeps running."""

    def __init__(self, store: TeacherStore):
        self.store, self.error = store, None
        self.jobs: queue.Queue = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            if self.error is None:
                try:
                    job[0](*job[1:])
                except BaseException as exc:  # re-raised in the main thread by submit/close
                    self.error = exc

    def submit(self, write, *args) -> None:
        """Run ``write(*args)`` after the writes submitted before it."""
        if self.error is not None:
            raise self.error
        self.jobs.put((write, *args))

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def _open_or_create_cache(source: Source, url: str, opts: ExtractOptions, existing: Cache | None) -> Cache:
    """``existing`` (the cache at ``url``, already checked to be this dataset's), or the cache created there now
    (or by a racing process, checked here); its plan must be the options'."""
    plan = opts.view_plan(existing.plan if existing else None)
    cache = existing
    if cache is None:
        cache = Cache.open_or_create(url, lambda: source.index(workers=min(8, os.cpu_count() or 1), progress=opts.progress),
                                     source, plan)
        cache.check_source(source)
    cache.check_plan(plan)
    return cache


def extract(data: str, cache_url: str, opts: ExtractOptions, prepared: Prepared | None = None) -> ExtractReport:
    """Extract one teacher's features for ``data`` into the cache at ``cache_url`` (created if missing); ``prepared``:
    the checks ``prepare`` made already (the CLI makes them before importing torch)."""
    from tqdm import tqdm

    if prepared is None:
        if opts.teacher is None:
            raise UserError("extract takes one teacher (teacher=...); `unic-cache extract` without --teacher grows each "
                            "teacher of a cache in turn (`extraction.options.prepare` lists them)")
        prepared = prepare(data, cache_url, opts)[0][1]
    source, existing, finished = prepared.source, prepared.existing, prepared.finished
    rank, world = rank_world(opts.rank, opts.world_size)
    name = opts.default_name()
    codecs = kind_codecs(opts.codec, opts.patch_codec, opts.patch)
    device = pick_device(opts.device)
    workers = opts.workers if opts.workers is not None else (0 if device.type == "cpu" else min(8, (os.cpu_count() or 2) - 1))
    if finished is not None:  # nothing to do: said at once, without building the teacher
        return ExtractReport(name, cache_url, finished.units, finished.units, 0, 0, 0.0, True,
                             int(finished.cache.bad.sum()), {"already_complete": True})
    share_cores(device, workers)
    # the teacher before the cache: bad names or weights fail before a dataset is indexed or a cache written
    teacher = build_teacher(opts.teacher, opts.size, opts.resolution, opts.weights, opts.model_args).to(device)
    cache = _open_or_create_cache(source, cache_url, opts, existing)
    res, wanted = teacher.info.resolution, opts.view_plan(cache.plan).views
    if cache.pixels.note() and opts.progress and rank == 0:
        print(cache.pixels.note(), file=sys.stderr, flush=True)

    def fit():
        fit_views = calibration_views(cache, opts.calibration)
        test_views = held_out_views(cache, max(16, opts.calibration // 4), fit_views)
        with tqdm(total=opts.calibration + len(test_views[0]), desc=f"calibrate {name}", unit="view",
                  disable=not opts.progress or rank != 0) as bar:
            return calibrate(teacher, _calibration_images(source, cache, res, fit_views, opts.batch_size, device),
                             codecs, device, bar, _calibration_images(source, cache, res, test_views, opts.batch_size, device))

    base = cache.require_teacher(name, teacher.info, codecs, fit, opts.shard_mb, opts.unit_rows, __version__)
    # the teacher's own views, then the views added to it (a view block: a cache grown with --views)
    groups = [base] + ([cache.add_views(base, wanted, opts.shard_mb, opts.unit_rows, __version__)]
                       if wanted > base.views else [])
    clean_stale_temp_files(cache.url)
    model = prepare_model(teacher, device, opts.compile, opts.channels_last)
    start = time.perf_counter()
    report = ExtractReport(name, cache.url, 0, 0, 0, 0, 0.0, False, int(cache.bad.sum()))
    dones = [store.done() for store in groups]
    todo = [(store, done) for store, done in zip(groups, dones) if not done.all()]  # the views this command computes
    views = ", ".join(f"{s.first_view}-{s.first_view + s.own_views - 1}" for s, _ in todo) or "none"
    check_free_space(cache.url, sum(s.nbytes_encoded() * float((~done).mean()) for s, done in todo), opts.force,
                     f"teacher {name} views {views} to compute ({res} px, {teacher.info.grid[0]}x{teacher.info.grid[1]} "
                     f"tokens of {teacher.info.dim}; {', '.join(f'{kind} {c.spec}' for kind, c in base.codec_specs().items())})",
                     quiet=not opts.progress or rank != 0)
    for store, done in zip(groups, dones):
        report.units_total, report.units_done_before = report.units_total + store.units, report.units_done_before + int(done.sum())
        views = f"views {store.first_view}-{store.first_view + store.own_views - 1}"
        pending = [u for u in range(store.units) if u % world == rank and not done[u]]
        rows_per_batch = max(1, opts.batch_size // store.own_views)
        batches = [list(rows[i:i + rows_per_batch]) for u in pending for rows in store.unit_shards(u)
                   for i in range(0, len(rows), rows_per_batch)]
        if batches:
            loader = DataLoader(ViewBatches(source, cache, res, store.own_views, store.first_view), batch_sampler=batches,
                                num_workers=workers, collate_fn=_as_is, pin_memory=device.type == "cuda",
                                prefetch_factor=_PREFETCH if workers else None)
            bar = tqdm(total=sum(len(store.unit_rows(u)) for u in pending), unit="sample",
                       desc=f"extract {name}" + (f" {views}" if store.first_view else ""),
                       disable=not opts.progress or rank != 0, smoothing=0.1)
            _run_units(loader, model, store, pending, device, opts.channels_last, report, bar)
    report.seconds = time.perf_counter() - start
    report.complete = all([store.finalize() or store.complete for store in groups])  # in order: a block's merge needs the teacher's
    clear_stale(cache.url)
    return report


def _calibration_images(source: Source, cache: Cache, resolution: int, picked: tuple[np.ndarray, np.ndarray],
                        batch_size: int, device: torch.device):
    """uint8 batches (B, 3, R, R) on ``device`` of the sample-views ``picked`` (rows, views), replayed as the teacher
    sees them; a row picked twice (fewer rows than sample-views) gives two of its views."""
    rows, views = picked
    replayed = ViewBatches(source, cache, resolution, CALIBRATION_VIEWS)
    for i in range(0, len(rows), batch_size):
        unique, where = np.unique(rows[i:i + batch_size], return_inverse=True)
        _, images, _, params = replayed.__getitems__(unique.tolist())
        yield batch_views(images, params, where, views[i:i + batch_size], resolution, device)


def _run_units(loader: DataLoader, teacher: torch.nn.Module, store: TeacherStore, pending: list[int],
               device: torch.device, channels_last: bool, report: ExtractReport, bar) -> None:
    """The hot loop: forward each batch, fill the shard's buffers, hand full shards, then each finished unit
    (its statistics), to the writer. Nothing waits for the device per batch: statistics and fidelity add up
    on it, and the stored arrays of a batch are copied to the host while the next batch's forward is queued
    (``HostCopy``); a unit's statistics are waited for once, when it is complete. Host memory holds a few
    shards, however many a unit has."""
    kinds, k, info = store.kinds, store.own_views, store.info
    res = info.resolution
    codecs = {kind: DeviceCodec(store.codecs[kind], info.grid, device) for kind in kinds}
    shapes, dtypes = {}, {}
    for kind in kinds:
        vectors = (k, *store.stored_shape(kind))
        for name, part in zip(store.arrays(kind), ("values", *store.codecs[kind].parts)):
            shapes[name] = (*vectors, store.codecs[kind].stored_dim) if part == "values" else vectors
            dtypes[name] = store.codecs[kind].codec.dtype if part == "values" else "float16"
    writer = _UnitWriter(store)
    unit_iter = iter(pending)
    unit, shards, rows, buffers, moments, cos, digest, filled = None, [], range(0), {}, {}, {}, None, 0
    copies: list[tuple[np.ndarray, np.ndarray, HostCopy]] = []  # (buffer, its rows, values) of the last batch
    try:
        for batch_rows, images, valid, params in loader:
            images = images.settle() if isinstance(images, Packed) else images  # out of the worker's ring at once
            if filled == len(rows):  # start the next shard, and at its first shard the next unit
                if not shards:
                    unit = next(unit_iter)
                    shards, digest = store.unit_shards(unit), UnitDigest(store)
                    moments = {kind: Moments.empty(info.width(kind)) for kind in kinds}
                    cos = {kind: torch.zeros((), dtype=torch.float64, device=device) for kind in kinds}
                rows, shards, filled = shards[0], shards[1:], 0
                buffers = {name: np.zeros((len(rows), *shapes[name]), dtypes[name]) for name in shapes}
            local = batch_rows - rows.start
            queued = []
            if valid.any():
                good = np.repeat(np.flatnonzero(valid.numpy()), k)  # each good row's K views, in order
                x = batch_views(images, params, good, np.tile(np.arange(k), len(good) // k), res, device)
                x = to_device(x, device, channels_last)
                with autocast_for(device):
                    out = dict(zip(("summary", "patch"), teacher(x)))
                for kind in kinds:  # statistics and fidelity of what stage 2 rebuilds from the stored arrays
                    vectors = codecs[kind].original(out[kind])
                    stored = codecs[kind].encode(vectors)
                    decoded = codecs[kind].decode(stored, torch.float64)
                    moments[kind] = moments[kind].merge(batch_moments(decoded.reshape(-1, info.width(kind))))
                    cos[kind] = cos[kind] + cosine_sum(vectors, decoded)
                    queued += [(buffers[name], local[valid.numpy()], HostCopy(values.reshape(-1, *shapes[name])))
                               for name, values in zip(store.arrays(kind), stored)]
            _land(copies)  # the previous batch's arrays: copied while this batch was queued
            copies = queued
            filled += len(batch_rows)
            report.samples += len(batch_rows)
            bar.update(len(batch_rows))
            if filled == len(rows):
                _land(copies)
                copies = []
                writer.submit(store.write_shard, rows, buffers, digest)
                if not shards:
                    writer.submit(store.finish_unit, unit, {kind: m.to_host() for kind, m in moments.items()},
                                  {kind: float(c) for kind, c in cos.items()}, digest)
                    report.units_done_now += 1
    finally:
        bar.close()
        writer.close()


def _land(copies: list[tuple[np.ndarray, np.ndarray, HostCopy]]) -> None:
    """Write copied values into their unit buffers (waiting for each copy to arrive)."""
    for buffer, rows, values in copies:
        buffer[rows] = values.numpy()
