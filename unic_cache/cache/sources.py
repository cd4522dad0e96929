"""Input datasets: webdataset tar shards or an image folder, and the index pass that fixes row order.

The index records, for every sample in canonical order, its key, where its image bytes live
(shard, byte offset, length), the decoded image size, a crc32c digest of the image bytes, and why it
is bad if it cannot be decoded. Readers fetch one sample with a ranged read, check the tar header in
front of it and the digest of the bytes, so a row can never silently point at another sample's bytes,
nor at an image replaced in place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import fsspec
import google_crc32c
import numpy as np
from fsspec.implementations.local import LocalFileSystem
from braceexpand import braceexpand
from PIL import Image

from ..errors import UserError

MAX_GAP = 4 << 20  # bytes between two samples read in one request; a larger gap starts a new request
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "pgm", "gif")
KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset rule: key = path up to the first dot of the basename


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
    location: np.ndarray  # (N, 3) int64: shard, byte offset of the image data (-1 for files), byte length
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
            h.update(key.encode() + b"\0")
        return h.hexdigest()


def content_digest(data: bytes) -> int:
    """crc32c of a sample's image bytes, as the index records it."""
    return int(google_crc32c.value(data))


def decode_image(data: bytes) -> Image.Image:
    """Decode bytes to an RGB image; odd modes (CMYK, palette, RGBA, 16-bit, float) are converted."""
    if not data:
        raise ValueError("empty file")
    image = Image.open(io.BytesIO(data))
    image.load()
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" else max(float(arr.max()), 1.0)
        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_decodes(data: bytes) -> tuple[int, int, str | None]:
    """(width, height, None) for a good image, (0, 0, reason) for one that cannot be decoded."""
    try:
        image = decode_image(data)
    except Exception as exc:  # any decoder failure marks the sample bad, never stops the run
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        return 0, 0, reason
    return image.width, image.height, None


class Source:
    """A dataset on a local path or fsspec URL, split into shards that are indexed independently."""

    def __init__(self, spec: str, fs: fsspec.AbstractFileSystem, shards: list[ShardRef]):
        self.spec, self.shards = spec, shards
        self._fs, self._pid = fs, os.getpid()

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The filesystem, made anew in a forked process (DataLoader workers): object-store filesystems
        run an event loop that must not cross a fork."""
        if self._pid != os.getpid():
            self._fs, self._pid = type(self._fs)(**self._fs.storage_options), os.getpid()
        return self._fs

    def scan_shard(self, shard: int) -> list[tuple[str, int, int, int, int, str | None, int]]:
        """Rows of one shard: (key, offset, nbytes, width, height, bad reason, crc32c of the bytes)."""
        raise NotImplementedError

    def _read(self, location: np.ndarray, key: str) -> bytes:
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

    def index(self, workers: int = 1, progress: bool = True) -> DatasetIndex:
        """Scan every shard (in parallel processes when ``workers`` > 1) and fix the canonical order."""
        from tqdm import tqdm

        shard_ids = range(len(self.shards))
        bar = tqdm(total=len(self.shards), desc="index", unit="shard", disable=not progress)
        if workers > 1 and len(self.shards) > 1:
            with ProcessPoolExecutor(workers) as pool:
                results = []
                for rows in pool.map(self.scan_shard, shard_ids):
                    results.append(rows)
                    bar.update()
        else:
            results = []
            for i in shard_ids:
                results.append(self.scan_shard(i))
                bar.update()
        bar.close()
        shards, keys, location, sizes, bad, digests = [], [], [], [], {}, []
        for i, rows in enumerate(results):
            shards.append({"name": self.shards[i].name, "nbytes": self.shards[i].nbytes, "count": len(rows), "first_row": len(keys)})
            for key, offset, nbytes, width, height, reason, digest in rows:
                if reason is not None:
                    bad[len(keys)] = reason
                keys.append(key)
                location.append((i, offset, nbytes))
                sizes.append((width, height))
                digests.append(digest)
        if not keys:
            raise UserError(f"no samples found in {self.spec}")
        keys_arr = np.array(keys, dtype=str)
        uniq, counts = np.unique(keys_arr, return_counts=True)
        if (counts > 1).any():
            dup = str(uniq[counts > 1][0])
            raise UserError(f"duplicate sample key {dup!r} in {self.spec}: keys must be unique across all shards")
        return DatasetIndex(shards, keys_arr, np.array(location, np.int64).reshape(-1, 3),
                            np.array(sizes, np.int32).reshape(-1, 2), bad, np.array(digests, np.uint32))


class TarSource(Source):
    """webdataset shards: samples are consecutive tar members sharing a key (``key.jpg``, ``key.json``).
    A sample's image is its member with an image extension (``key.png``); one with a compound extension
    (``key.shape-seg.png``, a label map) is taken only when the sample has no plain one."""

    def scan_shard(self, shard: int) -> list[tuple[str, int, int, int, int, str | None, int]]:
        rows: list[tuple[str, int, int, int, int, str | None, int]] = []
        seen: dict[str, int] = {}
        plain: set[str] = set()  # keys whose image came from a plain image extension
        with self.fs.open(self.shards[shard].url, "rb") as f:
            try:
                members = tarfile.open(fileobj=f, mode="r:")
                for info in members:
                    if not info.isfile():
                        continue
                    m = KEY_RE.match(info.name)
                    if m is None:
                        continue
                    key, ext = m.group(1), m.group(2).lower()
                    if key not in seen:
                        seen[key] = len(rows)
                        rows.append((key, -1, 0, 0, 0, "no image member", 0))
                    is_plain = ext in IMAGE_EXTS
                    if ext.rsplit(".", 1)[-1] in IMAGE_EXTS and (rows[seen[key]][1] < 0 or is_plain and key not in plain):
                        if is_plain:
                            plain.add(key)
                        f.seek(info.offset_data)
                        data = f.read(info.size)
                        rows[seen[key]] = (key, info.offset_data, info.size, *_check_decodes(data), content_digest(data))
            except tarfile.TarError as exc:
                raise UserError(f"{self.shards[shard].url} is not a readable uncompressed tar ({exc}); "
                                "re-pack it as a plain .tar (compressed tars cannot be read by byte range)") from None
        return rows

    def _read(self, location: np.ndarray, key: str) -> bytes:
        return self._read_run(np.asarray(location)[None], [key])[0]

    def read_rows(self, locations: np.ndarray, keys: list[str], digests: np.ndarray | None = None) -> list[bytes]:
        """The image bytes of several samples (give them in row order), with one ranged read per run of
        nearby rows of one shard: a block of consecutive rows costs one request per shard, not one per
        sample; checked as ``read``."""
        locations = np.asarray(locations)
        out: list[bytes] = []
        start = 0
        gap = np.diff(locations[:, 1]) - locations[:-1, 2]
        cuts = (np.diff(locations[:, 0]) != 0) | (gap < 0) | (gap > MAX_GAP)
        for end in [*np.flatnonzero(cuts) + 1, len(locations)]:
            out += self._read_run(locations[start:end], keys[start:end])
            start = end
        if digests is not None:
            for location, key, data, digest in zip(locations, keys, out, digests):
                self._check_digest(location, key, data, digest)
        return out

    def _read_run(self, locations: np.ndarray, keys: list[str]) -> list[bytes]:
        """Samples of one shard, read as the one byte range that spans their tar headers and data."""
        shard = int(locations[0, 0])
        for (_, offset, _), key in zip(locations, keys):
            if offset < 512:
                raise ValueError(f"sample {key!r} has no image")
        first = int(locations[:, 1].min()) - 512
        last = int((locations[:, 1] + locations[:, 2]).max())
        blob = self.fs.cat_file(self.shards[shard].url, start=first, end=last)
        out = []
        for (_, offset, nbytes), key in zip(locations, keys):
            at = int(offset) - first
            header, data = blob[at - 512:at], blob[at:at + int(nbytes)]
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") if header[257:262] == b"ustar" else ""
            full = f"{prefix}/{name}" if prefix else name
            # GNU and pax archives truncate long names in this header; the truncated name is then a prefix
            if not (full.startswith(key + ".") or (len(full) >= 99 and key.startswith(full[: len(key)]))):
                raise UserError(f"index mismatch: row for key {key!r} points at tar member {full!r} in "
                                f"{self.shards[shard].name}; the shard changed since the cache was made")
            if len(data) != int(nbytes):
                raise UserError(f"{self.shards[shard].name} is shorter than indexed (key {key!r})")
            out.append(data)
        return out


class FolderSource(Source):
    """An image folder, searched recursively; each parent folder is a class and a shard."""

    def __init__(self, spec: str, fs: fsspec.AbstractFileSystem, root: str, files: dict[str, list[tuple[str, int]]]):
        self.root = root.rstrip("/")
        self.files = files  # shard name (relative folder) -> [(relative path, nbytes)]
        shards = [ShardRef(name, f"{self.root}/{name}" if name else self.root, sum(n for _, n in members))
                  for name, members in files.items()]
        super().__init__(spec, fs, shards)

    def quick_fingerprint(self) -> list[list]:
        return [[rel, n] for members in self.files.values() for rel, n in members]

    def scan_shard(self, shard: int) -> list[tuple[str, int, int, int, int, str | None, int]]:
        rows = []
        for rel, nbytes in self.files[self.shards[shard].name]:
            with self.fs.open(f"{self.root}/{rel}", "rb") as f:
                data = f.read()
            rows.append((rel, -1, nbytes, *_check_decodes(data), content_digest(data)))
        return rows

    def _read(self, location: np.ndarray, key: str) -> bytes:
        with self.fs.open(f"{self.root}/{key}", "rb") as f:
            return f.read()


def _expand(spec: str) -> list[str]:
    return [p for part in spec.split("::") for p in braceexpand(part)]


def open_source(spec: str) -> Source:
    """A dataset from ``spec``: tar shards (path, brace pattern ``data-{000..009}.tar``, glob, URL,
    or a folder holding ``*.tar``), or an image folder. ``::`` joins several specs."""
    fs, _ = fsspec.core.url_to_fs(_expand(spec)[0])
    paths: list[str] = []
    for pattern in _expand(spec):
        _, path = fsspec.core.url_to_fs(pattern)
        if any(ch in path for ch in "*?["):
            paths.extend(sorted(fs.glob(path)))
        else:
            paths.append(path)
    if len(paths) == 1 and fs.isdir(paths[0]):
        root = paths[0]
        tars = sorted(p for p in fs.ls(root, detail=False) if p.endswith(".tar"))
        if tars:
            paths = tars
        else:
            return _open_folder(spec, fs, root)
    missing = [p for p in paths if not fs.exists(p)]
    if missing:
        raise UserError(f"input shard not found: {missing[0]} (from {spec!r})")
    not_tar = [p for p in paths if not p.endswith(".tar")]
    if not_tar:
        raise UserError(f"{not_tar[0]} is not a .tar shard; give webdataset .tar shards or an image folder")
    local = isinstance(fs, LocalFileSystem)
    shards = [ShardRef(p.rsplit("/", 1)[-1], p if local else fs.unstrip_protocol(p), int(fs.size(p))) for p in paths]
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise UserError(f"two input shards share a file name in {spec!r}; shard names must be unique")
    return TarSource(spec, fs, shards)


def _open_folder(spec: str, fs: fsspec.AbstractFileSystem, root: str) -> FolderSource:
    files: dict[str, list[tuple[str, int]]] = {}
    root = root.rstrip("/")
    for path, info in sorted(fs.find(root, detail=True).items()):
        if path.rsplit(".", 1)[-1].lower() not in IMAGE_EXTS:
            continue
        rel = path[len(root) + 1:]
        files.setdefault(rel.rsplit("/", 1)[0] if "/" in rel else "", []).append((rel, int(info["size"])))
    if not files:
        raise UserError(f"no images or .tar shards found under {spec}")
    return FolderSource(spec, fs, root, dict(sorted(files.items())))
