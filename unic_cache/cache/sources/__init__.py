"""Input datasets, one module per format: webdataset tar shards (``tar``), Hugging Face parquet shards
(``parquet``) or an image folder (``folder``), behind ``base.Source``, with the index pass that fixes row order.

The index records, for every sample in canonical order, its key, where its image bytes live
(shard, byte offset, length), the decoded image size, a crc32c digest of the image bytes, and why it
is bad if it cannot be decoded. Readers fetch one sample with a ranged read, check the tar header in
front of it and the digest of the bytes, so a row can never silently point at another sample's bytes,
nor at an image replaced in place.
"""

from __future__ import annotations

import fsspec
from braceexpand import braceexpand
from fsspec.implementations.local import LocalFileSystem

from ...errors import UserError
from .base import IMAGE_EXTS, DatasetIndex, LabelRecords, Row, ShardRef, Source, content_digest, key_bytes, member_key
from .folder import FolderSource
from .parquet import ParquetSource
from .tar import TarSource, member_name

__all__ = ["IMAGE_EXTS", "DatasetIndex", "FolderSource", "LabelRecords", "ParquetSource", "Row", "ShardRef", "Source",
           "TarSource", "content_digest", "key_bytes", "member_key", "member_name", "open_source"]
COMPRESSED_TARS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
_COMPRESSED = ("{} is a compressed tar shard; samples are read by byte range, so shards must be plain .tar: "
               "decompress them first (e.g. gunzip)")


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
