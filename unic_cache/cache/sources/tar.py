"""webdataset tar shards: the index pass over their members, ranged reads checked against each member's own tar
headers (``member_name``, a parser of the header chain), and the labels stored as members."""

from __future__ import annotations

import json
import tarfile

import numpy as np

from ...errors import UserError
from ..pixels import CURRENT, PixelPipeline
from .base import IMAGE_EXTS, LabelRecords, Row, Source, _check_decodes, content_digest, member_key

SAMPLE_FIELDS = {"__key__", "__url__", "__local_path__"}  # what webdataset puts in every sample: no member may add one
MAX_GAP = 4 << 20  # bytes between two samples read in one request; a larger gap starts a new request


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
                    if ext in extensions or ext in SAMPLE_FIELDS:
                        why = (f"its extension {ext!r} is a field webdataset gives every sample" if ext in SAMPLE_FIELDS
                               else "it appears twice in a row")
                        raise UserError(f"member {info.name!r} in {name}: {why}, so webdataset refuses it as a duplicate "
                                        "file name; re-pack the shard with one member per name, none named like that")
                    extensions.add(ext)
                    previous = key
                    if key not in seen:
                        seen[key] = len(rows)
                        rows.append(Row(key, -1, 0, 0, 0, "no image member", 0))
                    is_plain = ext in IMAGE_EXTS
                    if ext.rsplit(".", 1)[-1] in IMAGE_EXTS and (rows[seen[key]].offset < 0 or is_plain and key not in plain):
                        if info.sparse is not None or info.type == tarfile.GNUTYPE_SPARSE:
                            raise UserError(f"member {info.name!r} in {name} is stored sparse (tar --sparse), so its bytes "
                                            "are not one range of the shard; re-pack the shard without --sparse (e.g. "
                                            "`tar --format=ustar -cf`, or webdataset's TarWriter)")
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

    def label_records(self, rows: dict[str, int], dense: set[str]) -> LabelRecords:
        """Labels from each sample's ``.json`` (task -> value) or ``.cls`` member, and ``.<task>.png`` label maps."""
        found: dict[int, dict] = {}
        maps: dict[str, dict[int, bytes]] = {t: {} for t in dense}
        for shard in self.shards:
            with self.fs.open(shard.url, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
                for info in tar:
                    split = member_key(info.name) if info.isfile() else None
                    if split is None or split[0] not in rows:
                        continue
                    ext = split[1].lower()
                    if ext.endswith(".png") and ext[:-4] in dense:
                        maps[ext[:-4]][rows[split[0]]] = tar.extractfile(info).read()
                        continue
                    if ext not in ("json", "cls"):
                        continue
                    raw = tar.extractfile(info).read()
                    try:
                        value = json.loads(raw) if ext == "json" else {"class": int(raw.strip())}
                    except (ValueError, UnicodeDecodeError):
                        raise UserError(f"unreadable label member {info.name} in {shard.name}") from None
                    if isinstance(value, dict):
                        found.setdefault(rows[split[0]], {}).update(value)
        return LabelRecords(found, maps, {})

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
        try:
            size, kind = _number(header[124:136]), header[156:157]
        except ValueError:  # not a tar header: other bytes than when indexed
            return None
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
