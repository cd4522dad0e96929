"""The format's versions and its checked arrays: what every array of a cache is created and read with.

Integrity (format 2): every array's codec chain ends in crc32c (inside shards too), so a damaged
chunk fails on read; float arrays are filled with NaN and every written chunk is stored, so a missing
chunk never reads as plausible data; ``read_checked`` turns both into one-line errors naming the
array and rows. Format-1 caches (no checksums, no image digests) still open; ``checksummed`` says which
is which. Also here: the index's arrays (keys as UTF-8 bytes and offsets), the view plan's writer, the root seal.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import zarr
from zarr.core.sync import sync
from zarr.storage import StorePath
from zarr.storage._common import make_store_path

from . import claims, seal
from .codecs import INT8_MISSING, checked
from ..errors import UserError
from .sources import DatasetIndex, Source, key_bytes
from .views import ViewPlan, plan_views

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


def read_params(array: zarr.Array, rows: slice, what: str) -> np.ndarray:
    """Stored view parameters of ``rows`` (``views/params`` or a view block's ``params``), read checked; a missing
    chunk (NaN) is an error, never pixels cut from NaN."""
    values = read_checked(array, rows, what)
    if not np.isfinite(values).all():
        raise UserError(f"{what}: missing values (a missing chunk); run `unic-cache verify --repair`")
    return values


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


def write_plan(params: zarr.Array, plan: ViewPlan, image_size: np.ndarray, rows: slice | None = None,
               first_view: int = 0) -> None:
    """Fill ``views/params`` (or its ``rows``) from the plan, a block of rows at a time (bounded memory); a view
    block's ``params`` hold its views, ``first_view`` on."""
    start, stop = (rows.start, rows.stop) if rows is not None else (0, params.shape[0])
    plan = replace(plan, views=params.shape[1])
    for a in range(start, stop, _PLAN_BLOCK):
        b = min(stop, a + _PLAN_BLOCK)
        params[a:b] = plan_views(plan, np.arange(a, b), image_size[a:b], first_view)


def seal_root(group: zarr.Group) -> None:
    """Seal the root's metadata as it is now: root attrs, ``index/*`` and ``views/*`` (teachers have their own)."""
    seal.write_seal(group.store_path, seal.ROOT_SEAL_AT, [p for p in seal.member_paths(group, "") if not p.startswith("teachers/")])


def _looks_like_data(url: str) -> bool:
    """Whether a local folder holds a dataset (shards or images) rather than a cache."""
    from .sources import IMAGE_EXTS

    folder = Path(local_path(url))
    if not folder.is_dir() or (folder / "zarr.json").exists():
        return False
    suffixes = {".tar", ".parquet", *(f".{e}" for e in IMAGE_EXTS)}
    return any(p.suffix.lower() in suffixes for p in itertools.islice(folder.rglob("*"), 1000))


def open_group(url: str, mode: str) -> zarr.Group:
    """The cache's zarr group, or a one-line error: no cache there (a dataset, or nothing), or metadata that does not
    parse."""
    try:
        return zarr.open_group(local_path(url), mode=mode, zarr_format=3)
    except FileNotFoundError:
        if _looks_like_data(url):
            raise UserError(f"{url} is a dataset, not a cache; make a cache from it in a new folder: `unic-cache extract "
                            f"{url} --cache NEW.zarr --teacher NAME`") from None
        raise UserError(f"no cache at {url}; create it with `unic-cache extract DATA --cache {url} --teacher NAME`") from None
    except (ValueError, TypeError) as exc:  # zarr.json that does not parse: damaged metadata
        raise UserError(f"cannot read the metadata of {url} ({type(exc).__name__}: {str(exc)[:100]})") from None
