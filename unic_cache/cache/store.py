"""The cache: one zarr v3 group (local path or fsspec URL) holding the index, the view plan and teachers.

Layout (docs/cache-format.md): root attrs (format, fingerprint, plan), ``index/*``, ``views/params`` and
``teachers/<name>/{summary, patch, progress, stats/}``. A teacher's rows are split into *units* of work,
each one or more whole zarr shards of every feature array (format 5: as many as keep the unit's partial
statistics under 1/200 of its features; format 4: one). A writer owns whole units; a unit's features (shard
by shard), then its partial statistics and digest, then its progress flag are written, so a unit whose flag
is set is complete, and nothing else needs to be trusted on resume.

Integrity (format 2): every array's codec chain ends in crc32c (inside shards too), so a damaged
chunk fails on read; float arrays are filled with NaN and every written chunk is stored, so a missing
chunk never reads as plausible data; ``read_checked`` turns both into one-line errors naming the
array and rows. A cache is created only where nothing exists or where our own unfinished creation is
(``claims``), and creation, teacher addition and the statistics merge are done by one process.
Format-1 caches (no checksums, no image digests) still open; ``checksummed`` says which is which.

Format 4 seals the metadata (``seal``): the root's documents in ``index/seal.json`` (written last by creation,
so its presence means the cache was made), each teacher's in ``teachers/<name>/seal.json`` (written last when
the teacher is added, and again with its merged statistics). A cache or teacher whose metadata differs from
its seal is refused on open; ``verify --repair`` restores it. Formats 1-3 open as before, unsealed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable

import fsspec
import google_crc32c
import numpy as np
import zarr
from zarr.core.sync import sync
from zarr.storage import StorePath
from zarr.storage._common import make_store_path

from . import claims, seal
from .codecs import INT8_MISSING, ZSTD_LEVEL, Codec, FittedCodec, checked
from ..errors import UserError
from .pixels import CURRENT, PixelPipeline, pixel_pipeline
from .sizing import PARTIALS, UnitLayout, partial_stats_bytes
from .sources import DatasetIndex, Source, key_bytes
from .views import P, PlanConfig, plan_views

# a cache holds two kinds of files that are not zarr nodes: claims (CLAIM_DIR) and seals; listing a group says so
warnings.filterwarnings("ignore", message=rf"Object at (.*/)?({re.escape(seal.SEAL)}|{re.escape(claims.CLAIM_DIR)}) is not "
                        "recognized as a component of a Zarr hierarchy")

FORMAT_VERSION = 5
# 1: before checksums and image digests; 2: keys as zarr-python strings, no header spans; 3: metadata not sealed
READABLE_FORMATS = (1, 2, 3, 4, 5)
KINDS = ("summary", "patch")
# the index arrays a cache of any readable format may hold (format 3 stores keys as UTF-8 bytes and offsets, which
# every zarr v3 reader supports; formats 1-2 as zarr-python's variable-length strings, in "keys")
INDEX_ARRAYS = ("keys_utf8", "keys_offsets", "keys", "location", "image_size", "bad", "digest")
TOP_LEVEL = {"zarr.json", "index", "views", "teachers"}  # all that a cache holds at its top level
ALWAYS_WRITE = {"write_empty_chunks": True}  # every written chunk exists, so a missing one is damage
_PLAN_BLOCK = 65536  # rows planned per step, bounding memory on ImageNet-size datasets


def quick_digest(source: Source) -> str:
    """Digest of what can be known of a dataset without reading it (shard names and byte sizes)."""
    return hashlib.sha256(json.dumps(source.quick_fingerprint()).encode()).hexdigest()


def json_normal(value):
    """``value`` as it reads back from zarr attrs (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value))


def local_path(url: str) -> str:
    """``file://`` URLs as plain paths: zarr's LocalStore creates folders, fsspec's local store does not."""
    return url[len("file://"):] if url.startswith("file://") else url


def checksummed(array: zarr.Array) -> bool:
    """Whether an array's chunks carry a crc32c (format 2), inside shards or directly."""
    return "crc32c" in json.dumps(array.metadata.to_dict()["codecs"])




def _fill(dtype: str):
    """NaN for floats and INT8_MISSING for int8 features (a missing chunk can never pass as data), else 0."""
    kind = np.dtype(dtype)
    return float("nan") if kind.kind == "f" else INT8_MISSING if kind == np.int8 else 0


def create_checked(group: zarr.Group, name: str, shape: tuple, dtype, chunks: tuple | None = None, **kw) -> zarr.Array:
    """A format-2 array: crc32c last in its codec chain, NaN fill for floats, every chunk stored."""
    compressors = checked(*kw.pop("compressors", ()))
    fill = kw.pop("fill_value", _fill(dtype) if dtype is not str else "")
    return group.create_array(name, shape=shape, chunks=chunks or shape, dtype=dtype, compressors=compressors,
                              fill_value=fill, config=ALWAYS_WRITE, **kw)


def read_checked(array: zarr.Array, selection, what: str):
    """``array[selection]``, with a damaged chunk as a one-line error naming ``what`` (array and rows)."""
    try:
        return array[selection]
    except UserError:
        raise
    except Exception as exc:  # a crc32c mismatch, or a chunk that does not decode at all (truncated, garbled header)
        text = str(exc).splitlines()[0][:120] if str(exc) else ""
        reason = "crc32c mismatch" if "checksum" in str(exc) else f"{type(exc).__name__}: {text}"
        raise UserError(f"{what}: damaged data ({reason}); run `unic-cache verify --repair` and re-run extract") from None


def store_path(url: str, mode: str = "r") -> StorePath:
    """The store at ``url`` (local path or fsspec URL), opened without reading any of its metadata."""
    return sync(make_store_path(local_path(url), mode=mode))


def read_whole(array: zarr.Array, what: str) -> np.ndarray:
    """A whole small array, read checked; a missing chunk of a checksummed array (every written chunk is stored)
    is an error, never its fill value."""
    values = read_checked(array, ..., what)
    if checksummed(array) and array.nchunks_initialized != array.nchunks:
        raise UserError(f"{what}: {array.nchunks - array.nchunks_initialized} chunk(s) missing (deleted?); "
                        "run `unic-cache verify --repair`")
    return values


def _looks_like_data(url: str) -> bool:
    """Whether a local folder holds a dataset (shards or images) rather than a cache."""
    from pathlib import Path

    from .sources import IMAGE_EXTS

    folder = Path(local_path(url))
    if not folder.is_dir() or (folder / "zarr.json").exists():
        return False
    suffixes = {".tar", ".parquet", *(f".{e}" for e in IMAGE_EXTS)}
    return any(p.suffix.lower() in suffixes for p in itertools.islice(folder.rglob("*"), 1000))


def _open_group(url: str, mode: str) -> zarr.Group:
    try:
        return zarr.open_group(local_path(url), mode=mode, zarr_format=3)
    except FileNotFoundError:
        if _looks_like_data(url):
            raise UserError(f"{url} is a dataset, not a cache; make a cache from it in a new folder: `unic-cache extract "
                            f"{url} --cache NEW.zarr --teacher NAME`") from None
        raise UserError(f"no cache at {url}; create it with `unic-cache extract DATA --cache {url} --teacher NAME`") from None
    except (ValueError, TypeError) as exc:  # zarr.json that does not parse: damaged metadata
        raise UserError(f"cannot read the metadata of {url} ({type(exc).__name__}: {str(exc)[:100]})") from None


def encode_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys as (every key's UTF-8 bytes one after another: uint8, where each starts and the end: int64 (N + 1,))."""
    encoded = [key_bytes(str(k)) for k in keys]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), np.uint8).copy(), offsets


def decode_keys(utf8: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The keys ``encode_keys`` stored, as a str array."""
    data = utf8.tobytes()
    return np.array([data[a:b].decode("utf-8", "surrogateescape") for a, b in zip(offsets[:-1], offsets[1:])], dtype=str)


def index_arrays(index: DatasetIndex, bad: np.ndarray, version: int = FORMAT_VERSION) -> dict[str, np.ndarray]:
    """The arrays of ``index/`` for a dataset index (``bad``: (N,) uint8 flags) in a cache of format ``version``."""
    keys = dict(zip(("keys_utf8", "keys_offsets"), encode_keys(index.keys))) if version >= 3 else {"keys": index.keys}
    location = index.location if version >= 3 else index.location[:, :3]
    return {**keys, "location": location, "image_size": index.image_size, "bad": bad, "digest": index.digest}


def write_plan(params: zarr.Array, plan: PlanConfig, image_size: np.ndarray, rows: slice | None = None) -> None:
    """Fill ``views/params`` (or its ``rows``) from the plan, a block of rows at a time (bounded memory)."""
    start, stop = (rows.start, rows.stop) if rows is not None else (0, params.shape[0])
    for a in range(start, stop, _PLAN_BLOCK):
        b = min(stop, a + _PLAN_BLOCK)
        params[a:b] = plan_views(plan, np.arange(a, b), image_size[a:b])


def seal_root(group: zarr.Group) -> None:
    """Seal the root's metadata as it is now: root attrs, ``index/*`` and ``views/*`` (teachers have their own)."""
    seal.write_seal(group.store_path, seal.ROOT_SEAL_AT, [p for p in seal.member_paths(group, "") if not p.startswith("teachers/")])


def _remove_unfinished(url: str) -> None:
    """Delete an unfinished creation of ours (only the names a cache holds), before creating it again."""
    fs, root = fsspec.core.url_to_fs(url)
    for name in TOP_LEVEL:
        path = f"{root.rstrip('/')}/{name}"
        if fs.exists(path):
            fs.rm(path, recursive=True)


@dataclass(frozen=True)
class TeacherInfo:
    """What a cache records about a teacher (its attrs) and what stage 2 needs to use its features."""

    model_id: str
    weights: str  # "hub", "random[:SEED]", or the weight file's path
    weights_sha256: str
    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    grid: tuple[int, int]
    prefix_tokens: int
    dim: int
    summary_kind: str  # "cls" or "pooled"
    model_args: dict = field(default_factory=dict)  # extra timm.create_model arguments (depth=2, ...)

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Moments:
    """Count, mean and centred second moment (sum of outer products) of vectors, in float64: numpy arrays,
    or torch tensors while extraction accumulates them on its device (``to_host`` before writing)."""

    count: float
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> "Moments":
        return cls(0.0, np.zeros(dim), np.zeros((dim, dim)))

    def merge(self, other: "Moments") -> "Moments":
        """Chan et al.'s exact pairwise merge; folding in a fixed order gives bit-identical results."""
        n = self.count + other.count
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta[:, None] * delta[None, :] * (self.count * other.count / n)
        return Moments(n, mean, m2)

    def to_host(self) -> "Moments":
        """The same moments as numpy arrays (they may be accumulated as float64 tensors on a device)."""
        host = lambda a: a.cpu().numpy() if hasattr(a, "cpu") else np.asarray(a)  # noqa: E731
        return Moments(self.count, host(self.mean), host(self.m2))


class Cache:
    """An open cache; ``Cache.create`` makes one for a dataset and plan, ``Cache.open`` reopens it."""

    def __init__(self, group: zarr.Group, url: str):
        self.group, self.url = group, url
        attrs = json_normal(group.attrs.asdict())
        if attrs.get("format") != "unic-cache":
            raise UserError(f"{url} is a zarr group but not a unic-cache cache")
        if attrs.get("format_version") not in READABLE_FORMATS:
            raise UserError(f"{url} has cache format {attrs.get('format_version')}, this version reads "
                            f"{', '.join(map(str, READABLE_FORMATS))}")
        self.attrs = attrs
        self.pixels: PixelPipeline = pixel_pipeline(attrs.get("pixels"))  # an unknown version is refused here
        self._index_cache: dict[str, np.ndarray] = {}
        self._teacher_sealed: dict[str, bool] = {}  # teachers checked against their seal: whether they have one

    @classmethod
    def exists(cls, url: str) -> bool:
        """Whether a made cache is at ``url``: its root seal (format 4) or its ``ready`` flag (formats 1-3), so that a
        damaged root ``zarr.json`` of a made cache is never taken for an unfinished creation."""
        try:
            if seal.has_seal(store_path(url), seal.ROOT_SEAL_AT):
                return True
            return _open_group(url, mode="r").attrs.get("ready", False)
        except (UserError, zarr.errors.GroupNotFoundError, FileNotFoundError):
            return False

    @classmethod
    def open(cls, url: str, mode: str = "r") -> "Cache":
        """Open a made cache; metadata that differs from its seal is refused in one line (``verify --repair``)."""
        try:
            root = store_path(url, mode)
        except FileNotFoundError:
            root = None
        sealed = root is not None and seal.has_seal(root, seal.ROOT_SEAL_AT)
        if sealed:
            seal.check(root, seal.ROOT_SEAL_AT, url)
        group = _open_group(url, mode)
        if not sealed and not group.attrs.get("ready", False):
            raise UserError(f"{url} is not a complete cache (its creation was interrupted); "
                            "run the same extract command again to finish creating it")
        cache = cls(group, url)
        if cache.format >= 4 and not sealed:
            raise UserError(f"cache {url}: index/{seal.SEAL} is missing, so its metadata cannot be checked; extract into "
                            "a new --cache")
        return cache

    @classmethod
    def open_or_create(cls, url: str, make_index, source: Source, plan: PlanConfig,
                       pixels: PixelPipeline = CURRENT) -> "Cache":
        """Open the cache at ``url``, or create it there for ``source`` and ``plan``.

        Only a path that does not exist, an empty folder, or our own unfinished creation is written to;
        anything else is refused. When processes race, one indexes the dataset (``make_index()``) and
        creates the cache; the others wait for it and use it.
        """
        if not cls.exists(url):
            claims.check_writable_target(url, TOP_LEVEL)
            fs, root = fsspec.core.url_to_fs(url)
            new = not fs.exists(root)
            try:
                claims.once(url, "create", lambda: cls.exists(url), lambda: cls._create(url, make_index(), source, plan, pixels),
                            lambda: _remove_unfinished(url), "creating this cache")
            except UserError:  # the dataset cannot be indexed (empty, not a tar, ...): leave nothing behind
                if new and not cls.exists(url):
                    _remove_unfinished(url)
                    with contextlib.suppress(OSError):
                        fs.rmdir(root)
                raise
        return cls.open(url, mode="a")

    @classmethod
    def _create(cls, url: str, index: DatasetIndex, source: Source, plan: PlanConfig, pixels: PixelPipeline) -> None:
        """Write the index and the view plan; the seal is written last, so a crash leaves no half-cache in use."""
        # our marker first: a creation that fails is taken over by the next run (``claims.check_writable_target``)
        group = zarr.open_group(local_path(url), mode="a", zarr_format=3, attributes={"format": "unic-cache"})
        n = index.n
        idx = group.create_group("index", attributes={"shards": index.shards,
                                                      "bad_reasons": {str(r): m for r, m in index.bad.items()}})
        bad = np.zeros(n, np.uint8)
        bad[list(index.bad)] = 1
        for name, values in index_arrays(index, bad).items():
            create_checked(idx, name, values.shape, values.dtype,
                           chunks=(max(1, min(len(values), 1 << (20 if name == "keys_utf8" else 16))), *values.shape[1:]))[...] = values
        params = create_checked(group.create_group("views"), "params", (n, plan.views, P), "float32",
                                chunks=(min(n, 4096), plan.views, P), compressors=(zarr.codecs.ZstdCodec(level=3),))
        write_plan(params, plan, index.image_size)
        group.create_group("teachers")
        group.attrs.update({
            "format": "unic-cache", "format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "samples": n, "bad_samples": len(index.bad), "fingerprint": index.fingerprint(),
            "quick_digest": quick_digest(source), "source": source.spec, "plan": plan.to_dict(), "pixels": pixels.to_dict(),
        })
        seal_root(group)
        group.attrs["ready"] = True  # for readers of formats 1-3; a format-4 cache is made once its seal exists

    # --- the dataset and plan this cache is bound to
    @property
    def n(self) -> int:
        return int(self.attrs["samples"])

    @property
    def plan(self) -> PlanConfig:
        return PlanConfig.from_dict(self.attrs["plan"])

    @property
    def views(self) -> int:
        return self.plan.views

    @property
    def format(self) -> int:
        return int(self.attrs["format_version"])

    @property
    def sealed(self) -> bool:
        """Whether the cache's metadata is sealed (format 4), so that its plan and layout were checked on open."""
        return seal.has_seal(self.group.store_path, seal.ROOT_SEAL_AT)

    def check_source(self, source: Source) -> None:
        """Refuse a dataset other than the cache's, naming what differs (shards added, removed or resized; files
        of an image folder) and what the user can do."""
        if quick_digest(source) != self.attrs["quick_digest"]:
            raise UserError(f"cache {self.url} was made for another dataset ({self.attrs['source']}); {source.spec} differs "
                            f"from it: {self.dataset_difference(source)}; restore those files, or use a new --cache for "
                            "this dataset")

    def dataset_difference(self, source: Source) -> str:
        """What differs between the dataset this cache was made from and ``source``, as a short phrase."""
        have = {s["name"]: int(s["nbytes"]) for s in self.shards}
        now = {s.name: int(s.nbytes) for s in source.shards}
        parts = []
        if set(have) - set(now):
            parts.append(f"shard(s) missing: {', '.join(sorted(set(have) - set(now))[:3])}")
        if set(now) - set(have):
            parts.append(f"new shard(s): {', '.join(sorted(set(now) - set(have))[:3])}")
        resized = sorted(n for n in set(have) & set(now) if have[n] != now[n])
        files = getattr(source, "files", None)
        if files is not None and resized:  # an image folder: name the files, and the rows they are
            row_of = {str(k): i for i, k in enumerate(self.keys)}
            sizes = self.location[:, 2]
            changed = [(rel, row_of.get(rel)) for members in files.values() for rel, n in members
                       if rel not in row_of or int(sizes[row_of[rel]]) != n]
            parts += [f"{rel} ({'new' if row is None else f'row {row}, changed size'})" for rel, row in changed[:3]]
            parts += [f"and {len(changed) - 3} more file(s)"] if len(changed) > 3 else []
        else:
            parts += [f"shard {n}: {have[n]} bytes when the cache was made, {now[n]} now" for n in resized[:3]]
        return "; ".join(parts) or "the shard order differs"

    def check_plan(self, plan: PlanConfig) -> None:
        """Refuse another view plan than the cache's, naming what differs (views, seed, crop scale, ...)."""
        have, want = self.attrs["plan"], json_normal(plan.to_dict())
        if want != have:
            flat = lambda d: {**{k: v for k, v in d.items() if k != "policy"}, **d.get("policy", {})}  # noqa: E731
            a, b = flat(have), flat(want)
            differ = [f"{k}: {a.get(k)} (cache) vs {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            raise UserError(f"cache {self.url} was planned with other views ({'; '.join(differ)}); run with the cache's "
                            "--views/--seed/--crop-scale, or use a new --cache path")

    def index_array(self, name: str) -> np.ndarray:
        """A whole ``index/`` array, read once (checked: damaged or missing chunks are errors)."""
        if name not in self._index_cache:
            self._index_cache[name] = read_whole(self.group[f"index/{name}"], f"index/{name}")
        return self._index_cache[name]

    def forget_index(self) -> None:
        """Drop the index arrays read so far (after they were rewritten)."""
        self._index_cache.clear()
        self.__dict__.pop("digest", None)

    @property
    def keys(self) -> np.ndarray:
        """(N,) str: the sample keys in row order."""
        if "keys" not in self._index_cache and "keys" not in self.group["index"]:  # format 3: UTF-8 bytes + offsets
            self._index_cache["keys"] = decode_keys(self.index_array("keys_utf8"), self.index_array("keys_offsets"))
        return self.index_array("keys")

    @property
    def location(self) -> np.ndarray:
        return self.index_array("location")

    @property
    def image_size(self) -> np.ndarray:
        return self.index_array("image_size")

    @property
    def bad(self) -> np.ndarray:
        """(N,) bool: samples that could not be decoded, excluded from features, stats and distillation."""
        return self.index_array("bad").astype(bool)

    @property
    def bad_reasons(self) -> dict[int, str]:
        return {int(r): m for r, m in self.group["index"].attrs["bad_reasons"].items()}

    @property
    def shards(self) -> list[dict]:
        return list(self.group["index"].attrs["shards"])

    @functools.cached_property
    def digest(self) -> np.ndarray | None:
        """(N,) uint32 crc32c of each sample's image bytes; None for a format-1 cache (no digests)."""
        return self.index_array("digest") if "digest" in self.group["index"] else None

    @property
    def checksummed(self) -> bool:
        return checksummed(self.group["views/params"])

    def dataset_index(self) -> DatasetIndex:
        return DatasetIndex(self.shards, self.keys, self.location, self.image_size, self.bad_reasons, self.digest)

    @functools.cached_property
    def _params(self) -> zarr.Array:
        return self.group["views/params"]  # opened once: on an object store every metadata read is a request

    def params(self, rows: slice) -> np.ndarray:
        """The stored view parameters of ``rows``; a missing chunk (NaN) is an error, never pixels cut from NaN."""
        what = f"views/params rows {rows.start}-{rows.stop - 1}"
        values = read_checked(self._params, rows, what)
        if not np.isfinite(values).all():
            raise UserError(f"{what}: missing values (a missing chunk); run `unic-cache verify --repair`")
        return values

    # --- teachers
    def teacher_names(self) -> list[str]:
        """The teachers in the cache, listed afresh (object-store listings are cached by fsspec, and other
        processes add teachers)."""
        fs = getattr(self.group.store, "fs", None)
        if fs is not None:
            fs.invalidate_cache()
        return sorted(name for name, _ in self.group["teachers"].groups())

    def _teacher_group(self, name: str) -> zarr.Group | None:
        """The teacher's group read directly by its path (never from a listing), or None."""
        try:
            group = self.group[f"teachers/{name}"]
        except KeyError:
            return None
        return group if isinstance(group, zarr.Group) else None

    def teacher(self, name: str) -> "TeacherStore":
        """The teacher ``name``; its metadata is checked against its seal (once per open cache)."""
        at = f"teachers/{name}"
        if name not in self._teacher_sealed:
            sealed = seal.has_seal(self.group.store_path, at)
            if sealed:
                seal.check(self.group.store_path, at, self.url)
            self._teacher_sealed[name] = sealed
        group = self._teacher_group(name)
        if group is None:
            self._teacher_sealed.pop(name)  # it may be added later
            raise UserError(f"cache {self.url} has no teacher {name!r}; it has: {', '.join(self.teacher_names()) or 'none'}")
        if self.format >= 4 and not self._teacher_sealed[name] and "progress" in group:
            self._teacher_sealed.pop(name)  # being added by another process, or its seal lost: look again next time
            raise UserError(f"cache {self.url}: teachers/{name}/{seal.SEAL} is missing, so the teacher's metadata cannot be "
                            f"checked; extract it again under a new --name")
        return TeacherStore(group, self)

    def _teacher_ready(self, name: str) -> bool:
        """True once a teacher's arrays exist: its seal is written last (``progress`` in caches of formats 1-3);
        read directly from the store, never from a (possibly cached) listing: a stale "not there" would let a
        second process recreate it."""
        if self.format >= 4:
            return seal.has_seal(self.group.store_path, f"teachers/{name}")
        group = self._teacher_group(name)
        if group is None:
            return False
        try:
            group["progress"]
        except KeyError:
            return False
        return True

    def require_teacher(self, name: str, info: TeacherInfo, codecs: dict[str, Codec],
                        fit: Callable[[], dict[str, FittedCodec]], shard_mb: float = 256.0,
                        unit_rows: int | None = None, code_version: str = "") -> "TeacherStore":
        """The teacher ``name`` with ``codecs`` per kind ("summary", and "patch" when patch tokens are stored):
        created by one of the processes that race to add it (``fit()`` gives its ``FittedCodec`` per kind,
        from calibration vectors), used by the others; refused in one line when it exists with other
        settings (model, weights, resolution, codec...)."""
        claims.once(self.url, f"teacher-{name}", lambda: self._teacher_ready(name),
                    lambda: self._add_teacher(name, info, fit(), shard_mb, unit_rows, code_version),
                    lambda: None, f"adding teacher {name}")
        store = self.teacher(name)
        want = {**info.to_dict(), **codec_record(codecs)}
        have = {k: store.attrs.get(k) for k in info.to_dict()} | codec_record(store.codec_specs())
        diff = ", ".join(f"{k}: {have[k]} vs {want[k]}" for k in want if json_normal(have[k]) != json_normal(want[k]))
        if diff:
            raise UserError(f"teacher {name!r} is already in {self.url} with other settings ({diff}); "
                            "pass --name to store this one beside it")
        return store

    def _add_teacher(self, name: str, info: TeacherInfo, fitted: dict[str, FittedCodec], shard_mb: float,
                     unit_rows: int | None, code_version: str) -> None:
        """Create the arrays of a new teacher (replacing our own unfinished ones); sizes are fixed here,
        so every rank computes the same layout."""
        n, k, d = self.n, self.views, info.dim
        shapes = {"summary": (), "patch": ()}
        if "patch" in fitted:
            grid = fitted["patch"].codec.stored_grid(info.grid)
            shapes["patch"] = (grid[0] * grid[1],)
        vector = {kind: f.codec.bytes_per_vector(f.stored_dim) for kind, f in fitted.items()}
        row_bytes = k * sum(vector[kind] * int(np.prod(shapes[kind])) for kind in fitted)
        patch_row = shapes["patch"][0] * vector["patch"] if "patch" in fitted else None
        stats_bytes = partial_stats_bytes(d, len(fitted)) if self.format >= 5 else 0  # format 4: one shard per unit
        layout = UnitLayout.of(n, row_bytes, patch_row, shard_mb, unit_rows, stats_bytes)
        unit_rows, units, chunk_rows, summary_rows = layout.unit_rows, layout.units, layout.chunk_rows, layout.summary_rows
        group = self.group["teachers"].create_group(name, overwrite=True)
        zstd = (zarr.codecs.ZstdCodec(level=ZSTD_LEVEL),)
        digested = []  # what each unit's digest covers: its feature arrays, then its partial statistics
        for kind, f in fitted.items():
            rows = summary_rows if kind == "summary" else chunk_rows
            vectors = (n, k, *shapes[kind])
            digested += [kind, *(f"{kind}_{part}" for part in f.parts)]
            create_checked(group, kind, (*vectors, f.stored_dim), f.codec.dtype, chunks=(rows, 1, *shapes[kind], f.stored_dim),
                           shards=(layout.shard_rows, k, *shapes[kind], f.stored_dim), compressors=zstd)
            for part in f.parts:  # per-vector int8 scales, chunked and sharded as the values
                create_checked(group, f"{kind}_{part}", vectors, "float16", chunks=(rows, 1, *shapes[kind]),
                               shards=(layout.shard_rows, k, *shapes[kind]), compressors=zstd)
            for param, value in f.params.items():
                create_checked(group.require_group(f"codec/{kind}"), param, value.shape, "float32")[...] = value
        stats = group.create_group("stats/partial")
        digested += [f"stats/partial/{kind}_{n}" for kind in fitted for n in PARTIALS]
        for kind in fitted:
            create_checked(stats, f"{kind}_count", (units,), "float64", chunks=(1,))
            create_checked(stats, f"{kind}_cos", (units,), "float64", chunks=(1,))
            create_checked(stats, f"{kind}_mean", (units, d), "float64", chunks=(1, d), compressors=zstd)
            create_checked(stats, f"{kind}_m2", (units, d, d), "float64", chunks=(1, d, d), compressors=zstd)
        specs = {kind: f.codec for kind, f in fitted.items()}
        group.attrs.update({**info.to_dict(), **codec_record(specs), "codecs": {kind: f.describe(kind) for kind, f in fitted.items()},
                            "unit_rows": unit_rows, "units": units, "shard_rows": layout.shard_rows,
                            "code_version": code_version, "complete": False,
                            "digest_arrays": digested})
        create_checked(group, "digest", (units, len(digested)), "uint32", chunks=(1, len(digested)))
        # one-byte chunks make each unit's flag atomic; then the seal, written last: other processes wait for it
        create_checked(group, "progress", (units,), "uint8", chunks=(1,))
        self.seal_teacher(name)

    def seal_teacher(self, name: str) -> None:
        """Seal the metadata of teacher ``name`` as it is now (at creation, and again with its merged statistics)."""
        seal.write_seal(self.group.store_path, f"teachers/{name}",
                        seal.member_paths(self.group[f"teachers/{name}"], f"teachers/{name}"))


def check_cache_target(url: str, source: Source, mode: str = "r") -> Cache | None:
    """What extract checks before any model is loaded: a made cache at ``url`` is this dataset's (returned, opened),
    and anything else there is our own unfinished creation or nothing (None)."""
    if Cache.exists(url):
        cache = Cache.open(url, mode)
        cache.check_source(source)
        return cache
    claims.check_writable_target(url, TOP_LEVEL)
    return None


def codec_record(codecs: dict[str, Codec]) -> dict:
    """What identifies a teacher's storage: the codec spec per kind (None: patch tokens not stored)."""
    patch = codecs.get("patch")
    return {"codec": codecs["summary"].spec, "patch_codec": patch.spec if patch else None, "has_patch": patch is not None}


class UnitDigest:
    """A unit's digest, fed shard by shard in row order: crc32c of each digested array's values of the unit as
    stored (dtype, C order), extended as its shards come, so a unit of many shards is never held whole. Two intact
    units (or their statistics) swapped, or a unit's rows shifted, read with checksums that pass but not with it."""

    def __init__(self, store: "TeacherStore"):
        self.store, self.crc = store, dict.fromkeys(store.digest_arrays, 0)

    def add(self, arrays: dict[str, np.ndarray]) -> "UnitDigest":
        for name, values in arrays.items():
            if name in self.crc:
                data = np.ascontiguousarray(values, self.store.feature_array(name).dtype).tobytes()
                self.crc[name] = google_crc32c.extend(self.crc[name], data)
        return self

    def value(self) -> np.ndarray:
        """(len(digest_arrays),) uint32, in the order of ``digest_arrays``."""
        return np.array(list(self.crc.values()), np.uint32)


class TeacherStore:
    """One teacher's arrays in a cache: features, progress per unit, and statistics."""

    def __init__(self, group: zarr.Group, cache: Cache):
        self.group, self.cache = group, cache
        self.attrs = json_normal(group.attrs.asdict())
        self.name = group.basename
        self._arrays: dict[str, zarr.Array] = {}

    @property
    def info(self) -> TeacherInfo:
        fields = TeacherInfo.__dataclass_fields__
        a = {k: v for k, v in self.attrs.items() if k in fields}
        return TeacherInfo(**{**a, "mean": tuple(a["mean"]), "std": tuple(a["std"]), "grid": tuple(a["grid"])})

    def codec_specs(self) -> dict[str, Codec]:
        """The codec per stored kind, as given at extraction (format-1 names read as their new spelling)."""
        return {kind: fitted.codec for kind, fitted in self.codecs.items()}

    @functools.cached_property
    def codecs(self) -> dict[str, FittedCodec]:
        """The fitted codec per kind, its parameters read (checked) from ``codec/<kind>/*``; a codec this
        version does not know is a one-line error naming it."""
        described = self.attrs.get("codecs") or {kind: self.attrs["codec"] for kind in self.kinds}  # format 1: a name
        out = {}
        for kind in self.kinds:
            params = {}
            if f"codec/{kind}" in self.group:
                params = {name: read_whole(array, f"teacher {self.name} codec parameter {kind}/{name}")
                          for name, array in self.group[f"codec/{kind}"].arrays()}
            out[kind] = FittedCodec.from_attrs(described[kind], self.info.dim, params, self.name)
        return out

    @property
    def stored_grid(self) -> tuple[int, int]:
        """The patch-token grid as stored (the teacher's, or pooled by the codec)."""
        return self.codecs["patch"].codec.stored_grid(self.info.grid) if self.has_patch else self.info.grid

    def stored_shape(self, kind: str) -> tuple[int, ...]:
        """Vectors per sample-view of ``kind``: () for the summary, (tokens,) for patch tokens."""
        return () if kind == "summary" else (self.stored_grid[0] * self.stored_grid[1],)

    def arrays(self, kind: str) -> tuple[str, ...]:
        """The stored arrays of ``kind``: the values, then any per-vector parts (int8 scales)."""
        return (kind, *(f"{kind}_{part}" for part in self.codecs[kind].parts))

    @property
    def has_patch(self) -> bool:
        return bool(self.attrs["has_patch"])

    @property
    def kinds(self) -> tuple[str, ...]:
        return KINDS if self.has_patch else KINDS[:1]

    @property
    def units(self) -> int:
        return int(self.attrs["units"])

    def unit_rows(self, unit: int) -> range:
        r = int(self.attrs["unit_rows"])
        return range(unit * r, min(self.cache.n, (unit + 1) * r))

    def unit_of(self, row: int) -> int:
        return row // int(self.attrs["unit_rows"])

    @property
    def shard_rows(self) -> int:
        """Rows per shard (one file per feature array): a unit is whole shards (format 5), a single one before."""
        return int(self.attrs.get("shard_rows", self.attrs["unit_rows"]))

    def shard_indices(self, unit: int) -> range:
        """The shard numbers (along rows) of ``unit``'s shards."""
        rows, s = self.unit_rows(unit), self.shard_rows
        return range(rows.start // s, -(-rows.stop // s))

    def unit_shards(self, unit: int) -> list[range]:
        """The rows of each shard of ``unit``, in order (a unit is written and verified shard by shard)."""
        rows, s = self.unit_rows(unit), self.shard_rows
        return [range(r, min(rows.stop, r + s)) for r in range(rows.start, rows.stop, s)]

    def refresh(self) -> "TeacherStore":
        """Re-read the attributes from the store (another process may have finished the teacher)."""
        self.group = self.cache.group[f"teachers/{self.name}"]
        self.attrs = json_normal(self.group.attrs.asdict())
        self.__dict__.pop("codecs", None)
        return self

    def done(self) -> np.ndarray:
        """(units,) bool: which units are complete; the only source of truth for resume. A damaged
        flag reads as not done (its unit is then extracted again)."""
        return self.read_progress()[0]

    def read_progress(self) -> tuple[np.ndarray, list[int]]:
        """(done flags, units whose flag chunk is damaged): one read of the whole array, and only when a
        chunk fails its checksum, one read per unit to find which."""
        progress = self.group["progress"]
        try:
            return progress[:].astype(bool), []
        except ValueError:
            done, damaged = np.zeros(self.units, bool), []
            for unit in range(self.units):
                try:
                    done[unit] = bool(progress[unit])
                except ValueError:
                    damaged.append(unit)
            return done, damaged

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete", False))

    def read_stored(self, array: str, rows: slice, view) -> np.ndarray:
        """One stored array (``arrays(kind)``) of ``rows`` at ``view`` (an int or a slice), as stored;
        damaged, missing or non-finite data is a one-line error naming the teacher, rows and unit."""
        first, last = self.unit_of(rows.start), self.unit_of(rows.stop - 1)
        units = f"unit {first}" if first == last else f"units {first}-{last}"
        what = f"teacher {self.name} {array} rows {rows.start}-{rows.stop - 1} ({units})"
        x = read_checked(self.feature_array(array), (rows, view), what)
        if (x == INT8_MISSING).any() if x.dtype == np.int8 else not np.isfinite(x).all():
            problem = "missing values (a missing chunk)" if x.dtype == np.int8 else "non-finite values (NaN/Inf, or a missing chunk)"
            raise UserError(f"{what}: {problem}; run `unic-cache verify --repair` and re-run extract")
        return x

    def _check_selection(self, kind: str, rows: slice, view) -> None:
        """Arguments out of range are a usage error naming the valid range (never 'damaged data')."""
        n, k = self.cache.n, self.cache.views
        if kind not in self.kinds:
            raise UserError(f"teacher {self.name} stores {', '.join(self.kinds)}, not {kind!r}")
        if not (isinstance(rows.start, int) and isinstance(rows.stop, int) and 0 <= rows.start < rows.stop <= n):
            raise UserError(f"rows {rows.start}:{rows.stop} out of range: teacher {self.name} has rows 0 to {n - 1}")
        if isinstance(view, slice):
            inside = len(range(k)[view]) > 0
        else:
            inside = isinstance(view, (int, np.integer)) and 0 <= view < k
        if not inside:
            raise UserError(f"view {view} out of range: the cache has views 0 to {k - 1}")

    def read(self, kind: str, rows: slice, view) -> np.ndarray:
        """``kind`` features of ``rows`` at ``view`` rebuilt by the codec as float32 (..., dim), read checked."""
        self._check_selection(kind, rows, view)
        parts = [self.read_stored(a, rows, view).astype(np.float32) for a in self.arrays(kind)]
        return self.codecs[kind].decode(*parts).astype(np.float32, copy=False)

    def feature_array(self, name: str) -> zarr.Array:
        """A stored feature array, opened once (its metadata never changes once created)."""
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    @property
    def digest_arrays(self) -> list[str]:
        """The arrays whose values of a unit its digest covers, in order: the stored features, then the unit's partial
        statistics (none: a teacher made before format 4)."""
        return list(self.attrs.get("digest_arrays", []))

    def write_shard(self, rows: range, features: dict[str, np.ndarray], digest: "UnitDigest") -> None:
        """Write one shard's rows of every stored array (a unit is written shard by shard, in row order)."""
        for name, values in features.items():
            self.feature_array(name)[rows.start:rows.stop] = values
        digest.add(features)

    def finish_unit(self, unit: int, moments: dict[str, Moments], cos_sums: dict[str, float], digest: "UnitDigest") -> None:
        """Once every shard of ``unit`` is written: its partial statistics, its digest, then its progress flag."""
        partial, written = self.group["stats/partial"], {}
        for kind in self.kinds:
            m = moments[kind]
            for name, value in zip(PARTIALS, (m.count, cos_sums[kind], m.mean, m.m2)):
                partial[f"{kind}_{name}"][unit] = value
                written[f"stats/partial/{kind}_{name}"] = value
        if self.digest_arrays:
            self.group["digest"][unit] = digest.add(written).value()
        self.group["progress"][unit] = 1

    def unit_moments(self, kind: str, unit: int) -> tuple[Moments, float]:
        """The partial statistics of one unit and its summed codec cosine (checked reads)."""
        partial = self.group["stats/partial"]
        what = f"teacher {self.name} partial {kind} statistics of unit {unit}"
        count, cos, mean, m2 = (read_checked(partial[f"{kind}_{n}"], unit, what) for n in PARTIALS)
        return Moments(float(count), mean, m2), float(cos)

    def fold(self, kind: str) -> tuple[Moments, float]:
        """Dataset moments of ``kind`` and the summed codec cosine, merged over units in unit order."""
        total, cos = Moments.empty(self.info.dim), 0.0
        for unit in range(self.units):
            m, c = self.unit_moments(kind, unit)
            total, cos = total.merge(m), cos + c
        return total, cos

    def finalize(self) -> bool:
        """Once every unit is done, write ``stats/<kind>/{count, mean, var, cov}`` and mark complete
        (one process merges; the others wait for it). False while units are missing."""
        if not self.done().all():
            return False
        claims.once(self.cache.url, f"finalize-{self.name}", lambda: self.refresh().complete, self._merge_stats,
                    lambda: None, f"merging the statistics of teacher {self.name}")
        self.refresh()
        return True

    def _merge_stats(self) -> None:
        fidelity = {}
        for kind in self.kinds:
            m, cos = self.fold(kind)
            stats = self.group.require_group(f"stats/{kind}")
            cov = m.m2 / max(m.count, 1.0)
            for name, value in (("count", np.array([m.count])), ("mean", m.mean), ("var", np.diag(cov).copy()), ("cov", cov)):
                create_checked(stats, name, value.shape, "float64", overwrite=True,
                               compressors=(zarr.codecs.ZstdCodec(level=3),))[...] = value
            fidelity[kind] = cos / max(m.count, 1.0)
        if seal.has_seal(self.cache.group.store_path, f"teachers/{self.name}"):  # the statistics' arrays join the seal
            self.cache.seal_teacher(self.name)
        self.group.attrs.update({"fidelity_cosine": fidelity, "complete": True})

    def stats(self, kind: str) -> dict[str, np.ndarray]:
        """Exact float64 statistics of a complete teacher: count, mean, var, cov (population)."""
        if not self.complete:
            raise UserError(f"teacher {self.name} in {self.cache.url} is not complete; run extract again to finish it")
        out = {name: read_whole(self.group[f"stats/{kind}/{name}"], f"teacher {self.name} {kind} statistics ({name})")
               for name in ("count", "mean", "var", "cov")}
        if not all(np.isfinite(v).all() for v in out.values()):
            raise UserError(f"teacher {self.name} {kind} statistics hold NaN/Inf; run `unic-cache verify --repair` "
                            "and re-run extract")
        return out

    def nbytes_stored(self) -> int:
        """Bytes on disk of every stored feature array (values and scales)."""
        return sum(self.group[a].nbytes_stored() for kind in self.kinds for a in self.arrays(kind))

    def nbytes_encoded(self) -> int:
        """Bytes of every stored feature array before compression (what the planner predicts)."""
        return sum(self.group[a].nbytes for kind in self.kinds for a in self.arrays(kind))
