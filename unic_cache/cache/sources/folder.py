"""An image folder as a dataset: each parent folder a shard and a class."""

from __future__ import annotations

import fsspec
import numpy as np

from ...errors import UserError
from ..pixels import CURRENT, PixelPipeline
from .base import LabelRecords, Row, ShardRef, Source, _check_decodes, content_digest


class FolderSource(Source):
    """An image folder, searched recursively; each parent folder is a class and a shard."""

    tasks_file = False

    def __init__(self, spec: str, fs: fsspec.AbstractFileSystem, root: str, files: dict[str, list[tuple[str, int]]]):
        self.root = root.rstrip("/")
        self.files = files  # shard name (relative folder) -> [(relative path, nbytes)]
        shards = [ShardRef(name, f"{self.root}/{name}" if name else self.root, sum(n for _, n in members))
                  for name, members in files.items()]
        super().__init__(spec, fs, shards)

    @property
    def folder(self) -> str:
        return self.root

    def quick_fingerprint(self) -> list[list]:
        return [[rel, n] for members in self.files.values() for rel, n in members]

    def label_records(self, rows: dict[str, int], dense: set[str]) -> LabelRecords:
        """One task, ``class``: the folder of each image, numbered in the shards' order."""
        names = [s.name for s in self.shards]
        if len(names) < 2:
            raise UserError(f"{self.spec} has no class folders; put each class's images in its own folder")
        folder = {name: i for i, name in enumerate(names)}
        found = {row: {"class": folder[key.rsplit("/", 1)[0] if "/" in key else ""]} for key, row in rows.items()}
        return LabelRecords(found, {}, {"class": len(names)})

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
