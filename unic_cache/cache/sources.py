"""Input datasets: webdataset tar shards, Hugging Face parquet shards or an image folder, and the index pass
that fixes row order.

The index records, for every sample in canonical order, its key, where its image bytes live
(shard, byte offset, length), the decoded image size, a crc32c digest of the image bytes, and why it
is bad if it cannot be decoded. Readers fetch one sample with a ranged read, check the tar header in
front of it and the digest of the bytes, so a row can never silently point at another sample's bytes,
nor at an image replaced in place.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import fsspec
import google_crc32c
import numpy as np
from fsspec.implementations.local import LocalFileSystem
from braceexpand import braceexpand
from ..errors import UserError
from .pixels import CURRENT, PixelPipeline

MAX_GAP = 4 << 20  # bytes between two samples read in one request; a larger gap starts a new request
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "pgm", "gif")
COMPRESSED_TARS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
_COMPRESSED = ("{} is a compressed tar shard; samples are read by byte range, so shards must be plain .tar: "
               "decompress them first (e.g. gunzip)")
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

    def scan_shard(self, shard: int, pixels: PixelPipeline = CURRENT) -> list[Row]:
        """The samples of one shard, in order (image sizes and bad samples as ``pixels`` decodes them)."""
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


class TarSource(Source):
    """webdataset shards: samples are consecutive tar members sharing a key (``key.jpg``, ``key.json``).
    A sample's image is its member with an image extension (``key.png``); one with a compound extension
    (``key.shape-seg.png``, a label map) is taken only when the sample has no plain one."""

    def scan_shard(self, shard: int, pixels: PixelPipeline = CURRENT) -> list[Row]:
        rows: list[Row] = []
        seen: dict[str, int] = {}
        plain: set[str] = set()  # keys whose image came from a plain image extension
        extensions: set[str] = set()  # of the current sample: a name twice in one sample is refused, as webdataset does
        name = self.shards[shard].name
        with self.fs.open(self.shards[shard].url, "rb") as f:
            try:
                previous = None
                for info in tarfile.open(fileobj=f, mode="r:"):
                    split = member_key(info.name) if info.isfile() else None
                    if split is None:
                        continue
                    key, ext = split[0], split[1].lower()
                    if key != previous and key in seen:  # webdataset: a sample is a run of members with one key
                        raise UserError(f"key {key!r} is used by two samples in {name} (members apart); keys must be "
                                        "unique: re-pack the shard with one sample per key")
                    if key != previous:
                        extensions = set()
                    if ext in extensions:
                        raise UserError(f"member {info.name!r} appears twice in a row in {name} (webdataset refuses it as "
                                        "a duplicate file name); re-pack the shard with one member per name")
                    extensions.add(ext)
                    previous = key
                    if key not in seen:
                        seen[key] = len(rows)
                        rows.append(Row(key, -1, 0, 0, 0, "no image member", 0))
                    is_plain = ext in IMAGE_EXTS
                    if ext.rsplit(".", 1)[-1] in IMAGE_EXTS and (rows[seen[key]].offset < 0 or is_plain and key not in plain):
                        if is_plain:
                            plain.add(key)
                        f.seek(info.offset)
                        chain = f.read(info.offset_data - info.offset)
                        if member_name(chain) != info.name:
                            raise UserError(f"the name of member {info.name!r} in {name} cannot be read from its own "
                                            "headers (a global pax path?); re-pack the shard (e.g. tar --format=posix)")
                        data = f.read(info.size)
                        rows[seen[key]] = Row(key, info.offset_data, info.size, *_check_decodes(data, pixels),
                                              content_digest(data), len(chain))
            except tarfile.TarError as exc:
                raise UserError(f"{self.shards[shard].url} is not a readable uncompressed tar ({exc}); "
                                "re-pack it as a plain .tar (compressed tars cannot be read by byte range)") from None
        return rows

    def _read(self, location: np.ndarray, key: str) -> bytes:
        return self._read_run(np.asarray(location)[None], [key])[0]

    def read_rows(self, locations: np.ndarray, keys: list[str], digests: np.ndarray | None = None) -> list[bytes]:
        """The image bytes of several samples (give them in row order), with one ranged read per run of
        nearby rows of one shard: a block of consecutive rows costs one request per shard, not one per
        sample; each is checked against its key (the name its tar headers give it) and its digest."""
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
        headers = locations[:, 3] if locations.shape[1] > 3 else np.full(len(locations), 512)  # format <= 2: 512
        for (_, offset, _, *_), key, header in zip(locations, keys, headers):
            if offset < header or header < 512:
                raise ValueError(f"sample {key!r} has no image")
        first = int((locations[:, 1] - headers).min())
        last = int((locations[:, 1] + locations[:, 2]).max())
        blob = self.fs.cat_file(self.shards[shard].url, start=first, end=last)
        out = []
        for (_, offset, nbytes, *_), key, header in zip(locations, keys, headers):
            at = int(offset) - first
            full, data = member_name(blob[at - int(header):at]), blob[at:at + int(nbytes)]
            if full is None or not full.startswith(key + "."):
                raise UserError(f"index mismatch: row for key {key!r} points at tar member {full!r} in "
                                f"{self.shards[shard].name}; the shard changed since the cache was made")
            if len(data) != int(nbytes):
                raise UserError(f"{self.shards[shard].name} is shorter than indexed (key {key!r})")
            out.append(data)
        return out


def _number(field: bytes) -> int:
    """A tar header's numeric field: octal digits, or GNU's base-256 (top bit of the first byte set)."""
    if field and field[0] & 0x80:
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _nts(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def member_name(chain: bytes) -> str | None:
    """The name a tar reader (Python's tarfile, so webdataset) gives the member whose header chain is ``chain``:
    its extended headers, then its own 512-byte header. A pax ``path`` record (per member, or a global one in
    the chain) wins, then a GNU long-name record, then the ustar prefix and name. None when ``chain`` is not
    such a chain (the shard changed)."""
    pos, pax_path, long_name = 0, None, None
    while pos + 512 <= len(chain):
        header = chain[pos:pos + 512]
        size, kind = _number(header[124:136]), header[156:157]
        body = chain[pos + 512:pos + 512 + size]
        if kind in (b"x", b"g"):  # pax records: "LENGTH KEY=VALUE\n"
            at = 0
            while at < len(body):
                length, _, rest = body[at:].partition(b" ")
                if not length.isdigit() or int(length) <= 0:
                    return None
                record = body[at + len(length) + 1:at + int(length) - 1]
                keyword, _, value = record.partition(b"=")
                if keyword == b"path":
                    pax_path = value.decode("utf-8", "surrogateescape")
                at += int(length)
        elif kind == b"L":  # GNU long name
            long_name = _nts(body)
        elif kind != b"K":  # the member's own header: the last block of the chain
            if pos + 512 != len(chain):
                return None
            name, prefix = _nts(header[:100]), _nts(header[345:500]) if header[257:262] == b"ustar" else ""
            return pax_path or long_name or (f"{prefix}/{name}" if prefix else name)
        pos += 512 + -(-size // 512) * 512
    return None


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

    def scan_shard(self, shard: int, pixels: PixelPipeline = CURRENT) -> list[Row]:
        rows = []
        for rel, nbytes in self.files[self.shards[shard].name]:
            with self.fs.open(f"{self.root}/{rel}", "rb") as f:
                data = f.read()
            rows.append(Row(rel, -1, nbytes, *_check_decodes(data, pixels), content_digest(data)))
        return rows

    def _read(self, location: np.ndarray, key: str) -> bytes:
        with self.fs.open(f"{self.root}/{key}", "rb") as f:
            return f.read()


class ParquetSource(Source):
    """Hugging Face ``datasets`` parquet shards, the format ImageNet-1k and most image sets are published in on
    the Hub: a row per sample, its image in a struct column ``{bytes, path}`` (``datasets.Image``; the first
    column of that type), other integer columns as labels (``label``, a ``ClassLabel``). A sample's key is
    ``<shard file stem>/<row in the shard>``; its location is (shard, row, bytes). Rows are read by row group,
    the image column only: ranged reads of its column chunks, locally or on any fsspec store."""

    def __init__(self, spec: str, fs: fsspec.AbstractFileSystem, shards: list[ShardRef]):
        super().__init__(spec, fs, shards)
        self._files: dict[int, object] = {}
        self._files_pid = os.getpid()

    def parquet(self, shard: int):
        """The ``pyarrow.parquet.ParquetFile`` of a shard, opened once per process (its footer is one read)."""
        import pyarrow.parquet as pq

        if self._files_pid != os.getpid():
            self._files, self._files_pid = {}, os.getpid()
        if shard not in self._files:
            try:
                self._files[shard] = pq.ParquetFile(self.fs.open(self.shards[shard].url, "rb"))
            except Exception as exc:  # not a parquet file at all
                raise UserError(f"{self.shards[shard].name} is not a readable parquet file ({type(exc).__name__}: "
                                f"{str(exc)[:100]})") from None
        return self._files[shard]

    def image_column(self, shard: int) -> str:
        """The name of the shard's image column: the first struct of ``bytes`` and ``path`` (``datasets.Image``)."""
        import pyarrow as pa

        for column in self.parquet(shard).schema_arrow:
            if pa.types.is_struct(column.type) and {"bytes", "path"} <= {f.name for f in column.type}:
                return column.name
        raise UserError(f"{self.shards[shard].name} has no image column (a struct of bytes and path, as "
                        "datasets.Image writes); this source reads Hugging Face image datasets")

    def key(self, shard: int, row: int) -> str:
        return f"{self.shards[shard].name.rsplit('.', 1)[0]}/{row:08d}"

    def scan_shard(self, shard: int, pixels: PixelPipeline = CURRENT) -> list[Row]:
        rows: list[Row] = []
        file, column = self.parquet(shard), self.image_column(shard)
        for group in range(file.num_row_groups):
            for image in file.read_row_group(group, columns=[column]).column(column).to_pylist():
                key, data = self.key(shard, len(rows)), (image or {}).get("bytes")
                if data is None:
                    path = (image or {}).get("path")
                    rows.append(Row(key, len(rows), 0, 0, 0, f"no image bytes in the file (path {path!r})", 0))
                else:
                    rows.append(Row(key, len(rows), len(data), *_check_decodes(data, pixels), content_digest(data)))
        return rows

    def _read(self, location: np.ndarray, key: str) -> bytes:
        return self.read_rows(np.asarray(location)[None], [key])[0]

    def read_rows(self, locations: np.ndarray, keys: list[str], digests: np.ndarray | None = None) -> list[bytes]:
        """The image bytes of several samples: each row group they fall in is read once (its image column)."""
        locations = np.asarray(locations)
        out: list[bytes] = [b""] * len(locations)
        for shard in np.unique(locations[:, 0]):
            file, column = self.parquet(int(shard)), self.image_column(int(shard))
            starts = np.cumsum([0] + [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)])
            mine = np.flatnonzero(locations[:, 0] == shard)
            groups = np.searchsorted(starts, locations[mine, 1], side="right") - 1
            for group in np.unique(groups):
                images = file.read_row_group(int(group), columns=[column]).column(column)
                for i in mine[groups == group]:
                    row = int(locations[i, 1])
                    if keys[i] != self.key(int(shard), row) or not 0 <= row < starts[-1]:
                        raise UserError(f"index mismatch: row for key {keys[i]!r} points at row {row} of "
                                        f"{self.shards[int(shard)].name}; the shard changed since the cache was made")
                    out[i] = images[row - int(starts[group])]["bytes"].as_py() or b""
        if digests is not None:
            for location, key, data, digest in zip(locations, keys, out, digests):
                self._check_digest(location, key, data, digest)
        return out


def _expand(spec: str) -> list[str]:
    return [p for part in spec.split("::") for p in braceexpand(part)]


def open_source(spec: str) -> Source:
    """A dataset from ``spec``: webdataset tar shards or Hugging Face parquet shards (path, brace pattern
    ``data-{000..009}.tar``, glob, URL, or a folder holding ``*.tar`` or ``*.parquet``), or an image folder.
    ``::`` joins several specs."""
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
        listed = sorted(fs.ls(root, detail=False))
        shards = [p for p in listed if p.endswith(".tar")] or [p for p in listed if p.endswith(".parquet")]
        if shards:
            paths = shards
        else:
            return _open_folder(spec, fs, root)
    missing = [p for p in paths if not fs.exists(p)]
    if missing:
        raise UserError(f"input shard not found: {missing[0]} (from {spec!r})")
    kind = ParquetSource if paths and all(p.endswith(".parquet") for p in paths) else TarSource
    other = [p for p in paths if kind is TarSource and not p.endswith(".tar")]
    if other and other[0].endswith(COMPRESSED_TARS):
        raise UserError(_COMPRESSED.format(other[0].rsplit("/", 1)[-1]))
    if other:
        raise UserError(f"{other[0]} is not a .tar shard; give webdataset .tar shards, Hugging Face .parquet shards "
                        "(all of one kind) or an image folder")
    local = isinstance(fs, LocalFileSystem)
    shards = [ShardRef(p.rsplit("/", 1)[-1], p if local else fs.unstrip_protocol(p), int(fs.size(p))) for p in paths]
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise UserError(f"two input shards share a file name in {spec!r}; shard names must be unique")
    return kind(spec, fs, shards)


def _open_folder(spec: str, fs: fsspec.AbstractFileSystem, root: str) -> FolderSource:
    files: dict[str, list[tuple[str, int]]] = {}
    root = root.rstrip("/")
    for path, info in sorted(fs.find(root, detail=True).items()):
        if path.rsplit(".", 1)[-1].lower() not in IMAGE_EXTS:
            continue
        rel = path[len(root) + 1:]
        files.setdefault(rel.rsplit("/", 1)[0] if "/" in rel else "", []).append((rel, int(info["size"])))
    if not files:
        compressed = sorted(p for p in fs.find(root) if p.endswith(COMPRESSED_TARS))
        if compressed:
            raise UserError(_COMPRESSED.format(compressed[0].rsplit("/", 1)[-1]))
        raise UserError(f"no images, .tar or .parquet shards found under {spec}")
    return FolderSource(spec, fs, root, dict(sorted(files.items())))
