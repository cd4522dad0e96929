"""Hugging Face ``datasets`` parquet shards: rows read by row group (the image column only), labels from columns."""

from __future__ import annotations

import json
import os

import fsspec
import numpy as np

from ...errors import UserError
from ..pixels import CURRENT, PixelPipeline
from .base import LabelRecords, Row, ShardRef, Source, _check_decodes, content_digest


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

    def label_records(self, rows: dict[str, int], dense: set[str]) -> LabelRecords:
        """Labels from the integer and float columns, with the classes of each ``ClassLabel`` column (the number
        of its names in the file's Hugging Face metadata)."""
        import pyarrow as pa

        found: dict[int, dict] = {}
        classes: dict[str, int] = {}
        for shard in range(len(self.shards)):
            file = self.parquet(shard)
            features = json.loads((file.schema_arrow.metadata or {}).get(b"huggingface", b"{}")).get("info", {}).get("features", {})
            columns = [c.name for c in file.schema_arrow if pa.types.is_integer(c.type) or pa.types.is_floating(c.type)]
            classes.update({c: len(features[c]["names"]) for c in columns if features.get(c, {}).get("_type") == "ClassLabel"})
            table = file.read(columns=columns)
            for i, values in enumerate(zip(*(table.column(c).to_pylist() for c in columns))):
                row = rows.get(self.key(shard, i))
                if row is not None:
                    found[row] = {c: v for c, v in zip(columns, values) if v is not None}
        return LabelRecords(found, {}, classes)

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
