"""What every input format shares: the ``Source`` interface (shards, checked reads, the index pass that fixes
row order, label records), the index it makes (``DatasetIndex``) and webdataset's key rules."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import fsspec
import google_crc32c
import numpy as np

from ...errors import UserError
from ..pixels import CURRENT, PixelPipeline

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "pgm", "gif")
# webdataset's rules (tariterators): a member matching META_RE is skipped (``__key__``, ``__pycache__/x.jpg``); the key
# is the name up to the first dot that follows a run of non-dots (``sub/._y.jpg`` is key ``sub/``, extension ``_y.jpg``)
KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
META_RE = re.compile(r"__[^/]*__($|/)")


def key_bytes(key: str) -> bytes:
    """A key's bytes: UTF-8, a tar name that is not UTF-8 (a key with surrogates, as webdataset gives it) as it was."""
    return key.encode("utf-8", "surrogateescape")


def member_key(name: str) -> tuple[str, str] | None:
    """(key, extension) of a tar member's name as webdataset reads it, or None for a member it skips."""
    if META_RE.match(name) or ("/" not in name and name.startswith("__") and name.endswith("__")):
        return None
    m = KEY_RE.match(name)
    return (m.group(1), m.group(2)) if m else None


class LabelRecords(NamedTuple):
    """What a format stores as labels: row -> {task: value}, dense task -> row -> label-map PNG bytes, and the
    number of classes of the tasks whose files say it (a parquet ``ClassLabel``, an image folder's folders)."""

    found: dict[int, dict]
    maps: dict[str, dict[int, bytes]]
    classes: dict[str, int]


class Row(NamedTuple):
    """One sample as the scan of its shard finds it."""

    key: str
    offset: int  # tar: byte offset of the image data; parquet: the row in the shard; -1: a file, or no image
    nbytes: int
    width: int  # of the image as the pixel pipeline decodes it (0 for a bad sample)
    height: int
    reason: str | None  # why the image cannot be decoded, or None
    digest: int  # crc32c of the image bytes
    header: int = 0  # tar: bytes of the member's header chain (extended headers, then its own) before its data


@dataclass(frozen=True)
class ShardRef:
    """One input shard: a tar file, or one folder of an image-folder dataset."""

    name: str
    url: str
    nbytes: int


@dataclass
class DatasetIndex:
    """Canonical row order of a dataset; row i of every cache array is sample i."""

    shards: list[dict]  # name, nbytes, count, first_row
    keys: np.ndarray  # (N,) str
    location: np.ndarray  # (N, 4) int64: shard, where the image is (see Row.offset), byte length, tar header-chain
    # bytes before the image (Row.header); caches of format <= 2 have (N, 3): their header chains are 512 bytes
    image_size: np.ndarray  # (N, 2) int32: width, height (0 for bad samples)
    bad: dict[int, str] = field(default_factory=dict)  # row -> reason
    digest: np.ndarray | None = None  # (N,) uint32: crc32c of each image's bytes (None: a cache made before digests)

    @property
    def n(self) -> int:
        return len(self.keys)

    def fingerprint(self) -> str:
        """Digest of shard names, sizes, sample counts and every key: what a cache is bound to."""
        h = hashlib.sha256(json.dumps([[s["name"], s["nbytes"], s["count"]] for s in self.shards]).encode())
        for key in self.keys:
            h.update(key_bytes(key) + b"\0")
        return h.hexdigest()


def content_digest(data: bytes) -> int:
    """crc32c of a sample's image bytes, as the index records it."""
    return int(google_crc32c.value(data))


def bad_reason(exc: Exception) -> str:
    """Why a sample cannot be decoded, in one line that depends only on its bytes (PIL names the in-memory file
    it read, with its address: that part is dropped)."""
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", f"{type(exc).__name__}: {exc}")
    return text.splitlines()[0][:200]


def _check_decodes(data: bytes, pixels: PixelPipeline) -> tuple[int, int, str | None]:
    """(width, height, None) for a good image under the pixel pipeline, (0, 0, reason) for one that cannot be decoded."""
    try:
        image = pixels.decode(data)
    except Exception as exc:  # any decoder failure marks the sample bad, never stops the run
        return 0, 0, bad_reason(exc)
    return image.width, image.height, None


class Source:
    """A dataset on a local path or fsspec URL, split into shards that are indexed independently."""

    tasks_file = True  # whether a tasks.json beside the shards declares the tasks (an image folder's are its folders)

    def __init__(self, spec: str, fs: fsspec.AbstractFileSystem, shards: list[ShardRef]):
        self.spec, self.shards = spec, shards
        self._fs, self._pid = fs, os.getpid()

    @property
    def folder(self) -> str:
        """The dataset's folder, where ``split.json`` and ``tasks.json`` live: the first shard's."""
        return self.shards[0].url.rsplit("/", 1)[0]

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The filesystem, made anew in a forked process (DataLoader workers): object-store filesystems
        run an event loop that must not cross a fork."""
        if self._pid != os.getpid():
            self._fs, self._pid = type(self._fs)(**self._fs.storage_options), os.getpid()
        return self._fs

    def scan_shard(self, shard: int, pixels: PixelPipeline = CURRENT) -> list[Row]:
        """The samples of one shard, in order (image sizes and bad samples as ``pixels`` decodes them)."""
        raise NotImplementedError

    def _read(self, location: np.ndarray, key: str) -> bytes:
        raise NotImplementedError

    def label_records(self, rows: dict[str, int], dense: set[str]) -> LabelRecords:
        """The labels the samples ``rows`` (key -> row) carry in this format, and the label maps of the ``dense``
        tasks."""
        raise NotImplementedError

    def read(self, location: np.ndarray, key: str, digest: int | None = None) -> bytes:
        """The image bytes of the sample at ``location``; raises if they do not belong to ``key`` or,
        given the indexed ``digest``, if they changed since the dataset was indexed."""
        data = self._read(location, key)
        if digest is not None:
            self._check_digest(location, key, data, digest)
        return data

    def read_rows(self, locations: np.ndarray, keys: list[str], digests: np.ndarray | None = None) -> list[bytes]:
        """The image bytes of several samples (one read each here; tar shards coalesce them)."""
        return [self.read(loc, key, None if digests is None else digests[i]) for i, (loc, key) in
                enumerate(zip(locations, keys))]

    def _check_digest(self, location: np.ndarray, key: str, data: bytes, digest: int) -> None:
        if content_digest(data) != int(digest):
            shard = self.shards[int(location[0])].name if len(self.shards) > int(location[0]) >= 0 else "?"
            raise UserError(f"sample {key!r} in {shard} changed since the cache was made (crc32c differs); "
                            "the dataset no longer matches the cache: restore it or extract into a new cache")

    def quick_fingerprint(self) -> list[list]:
        """Shard names and byte sizes, known without reading any data."""
        return [[s.name, s.nbytes] for s in self.shards]

    def index(self, workers: int = 1, progress: bool = True, pixels: PixelPipeline = CURRENT) -> DatasetIndex:
        """Scan every shard (in parallel processes when ``workers`` > 1) and fix the canonical order; image
        sizes and bad samples are those of the pixel pipeline ``pixels`` decodes."""
        from tqdm import tqdm

        shard_ids = range(len(self.shards))
        bar = tqdm(total=len(self.shards), desc="index", unit="shard", disable=not progress)
        if workers > 1 and len(self.shards) > 1:
            with ProcessPoolExecutor(workers) as pool:
                results = []
                for rows in pool.map(functools.partial(self.scan_shard, pixels=pixels), shard_ids):
                    results.append(rows)
                    bar.update()
        else:
            results = []
            for i in shard_ids:
                results.append(self.scan_shard(i, pixels))
                bar.update()
        bar.close()
        shards, rows = [], [row for shard_rows in results for row in shard_rows]
        for i, shard_rows in enumerate(results):
            first = sum(len(r) for r in results[:i])
            shards.append({"name": self.shards[i].name, "nbytes": self.shards[i].nbytes, "count": len(shard_rows), "first_row": first})
        if not rows:
            raise UserError(f"no samples found in {self.spec}")
        keys = np.array([r.key for r in rows], dtype=str)
        uniq, counts = np.unique(keys, return_counts=True)
        if (counts > 1).any():
            dup = str(uniq[counts > 1][0])
            raise UserError(f"duplicate sample key {dup!r} in {self.spec}: keys must be unique across all shards")
        shard_of = np.repeat(np.arange(len(results)), [len(r) for r in results])
        location = np.array([(s, r.offset, r.nbytes, r.header) for s, r in zip(shard_of, rows)], np.int64).reshape(-1, 4)
        return DatasetIndex(shards, keys, location, np.array([(r.width, r.height) for r in rows], np.int32).reshape(-1, 2),
                            {i: r.reason for i, r in enumerate(rows) if r.reason is not None},
                            np.array([r.digest for r in rows], np.uint32))
