"""The cache: one zarr v3 group (local path or fsspec URL) holding the index, the view plan and teachers.

Layout (docs/cache-format.md): root attrs (format, fingerprint, plan), ``index/*``, ``views/params`` and
``teachers/<name>/`` (``teacher``). A cache is created only where nothing exists or where our own unfinished
creation is (``claims``), and creation, teacher addition and the statistics merge are done by one process.

Format 4 seals the metadata (``seal``): the root's documents in ``index/seal.json`` (written last by creation,
so its presence means the cache was made), each teacher's in ``teachers/<name>/seal.json`` (written last when
the teacher is added, and again with its merged statistics). A cache or teacher whose metadata differs from
its seal is refused on open; ``verify --repair`` restores it. Formats 1-3 open as before, unsealed.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Callable

import fsspec
import numpy as np
import zarr

from . import claims, seal
from .codecs import Codec, FittedCodec
from ..errors import UserError
from ..records import differences, json_normal, refuse
from .pixels import CURRENT, PixelPipeline, pixel_pipeline
from .sources import DatasetIndex, Source
from .views import P, ViewPlan
from .format import (FORMAT_VERSION, READABLE_FORMATS, TOP_LEVEL, checksummed, create_checked, decode_keys, index_arrays,
                     local_path, open_group, quick_digest, read_params, read_whole, seal_root, store_path,
                     write_plan)
from .layout import VIEW_BLOCK, TeacherInfo, codec_record, create_teacher, seal_teacher
from .teacher import TeacherStore


def _remove_unfinished(url: str) -> None:
    """Delete an unfinished creation of ours (only the names a cache holds), before creating it again."""
    fs, root = fsspec.core.url_to_fs(url)
    for name in TOP_LEVEL:
        path = f"{root.rstrip('/')}/{name}"
        if fs.exists(path):
            fs.rm(path, recursive=True)


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
            return open_group(url, mode="r").attrs.get("ready", False)
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
        group = open_group(url, mode)
        if not sealed and not group.attrs.get("ready", False):
            raise UserError(f"{url} is not a complete cache (its creation was interrupted); "
                            "run the same extract command again to finish creating it")
        cache = cls(group, url)
        if cache.format >= 4 and not sealed:
            raise UserError(f"cache {url}: index/{seal.SEAL} is missing, so its metadata cannot be checked; extract into "
                            "a new --cache")
        return cache

    @classmethod
    def open_or_create(cls, url: str, make_index, source: Source, plan: ViewPlan,
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
    def _create(cls, url: str, index: DatasetIndex, source: Source, plan: ViewPlan, pixels: PixelPipeline) -> None:
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
        seal_root(group)  # written last: a cache of format 4 or later is made once its seal exists

    # --- the dataset and plan this cache is bound to
    @property
    def n(self) -> int:
        return int(self.attrs["samples"])

    @property
    def plan(self) -> ViewPlan:
        return ViewPlan.from_dict(self.attrs["plan"])

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

    def check_plan(self, plan: ViewPlan) -> None:
        """Refuse another view plan than the cache's, naming what differs (seed, crop scale, ...); more views than the
        cache's are the same plan, grown (``add_views``), fewer are refused."""
        if plan.views < self.views:
            raise UserError(f"cache {self.url} has {self.views} views per sample; extract takes --views {self.views} or "
                            "more (more adds views to its teachers), or a new --cache path")
        flat = lambda d: dict(sorted({**{k: v for k, v in d.items() if k != "policy"}, **d.get("policy", {})}.items()))  # noqa: E731
        refuse(differences(flat({**self.attrs["plan"], "views": plan.views}), flat(plan.to_dict()), label=" (cache)"),
               f"cache {self.url} was planned with other views", "run with the cache's --views/--seed/--crop-scale, or "
               "use a new --cache path")

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
        return read_params(self._params, rows, f"views/params rows {rows.start}-{rows.stop - 1}")

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

    def teacher(self, name: str, base: "TeacherStore | None" = None) -> "TeacherStore":
        """The teacher ``name``; its metadata is checked against its seal (once per open cache). A view block
        (``<teacher>/views-<K1>``) is told its teacher: ``base`` when the caller holds it, else opened here."""
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
        if self.format >= 4 and not self._teacher_sealed[name]:
            self._teacher_sealed.pop(name)  # being added by another process: look again next time
            raise UserError(f"cache {self.url}: teacher {name} is being added, or its addition was interrupted (it has no "
                            f"{seal.SEAL} yet); run the same extract command to finish it")
        teacher, _, block = name.partition("/")
        return TeacherStore(group, self, name, base or (self.teacher(teacher) if block else None))

    def unfinished(self, name: str) -> bool:
        """Whether teacher (or view block) ``name`` exists but is not made: its seal, written last when it is added, is
        not there (being added now, or a kill came first). The same extract command makes it again."""
        return self.format >= 4 and self._teacher_group(name) is not None and not self._teacher_ready(name)

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
        have = store.info.to_dict() | codec_record(store.codec_specs())  # fields an older cache lacks: their defaults
        if have["weights"] == want["weights"] == "hub" and not have["weights_sha256"]:
            want["weights_sha256"] = ""  # caches of 0.3 and before did not record the hub file's digest
        if have["weights_sha256"] and have["weights_sha256"] == want["weights_sha256"]:
            want["weights"] = have["weights"]  # the same file's bytes, named by another path (relative, moved)
        refuse(differences(have, want), f"teacher {name!r} is already in {self.url} with other settings",
               "pass --name to store this one beside it")
        return store

    def _add_teacher(self, name: str, info: TeacherInfo, fitted: dict[str, FittedCodec], shard_mb: float,
                     unit_rows: int | None, code_version: str) -> None:
        """Create the arrays of a new teacher (replacing our own unfinished ones), then seal them."""
        create_teacher(self.group["teachers"], name, self.n, self.views, self.format, info, fitted, shard_mb, unit_rows,
                       code_version)
        seal_teacher(self.group, name)

    def add_views(self, store: TeacherStore, views: int, shard_mb: float = 256.0, unit_rows: int | None = None,
                  code_version: str = "") -> TeacherStore:
        """The view block of ``store`` (a complete teacher) holding its views ``store.views`` .. ``views - 1``, created
        by one of the processes that race to add it (same codec, parameters from the plan), used by the others."""
        first = store.views
        name = f"{store.name}/{VIEW_BLOCK}{first}"

        def create() -> None:
            group = create_teacher(store.group, f"{VIEW_BLOCK}{first}", self.n, views - first, self.format, store.info,
                                   store.codecs, shard_mb, unit_rows, code_version)
            group.attrs["first_view"] = first
            params = create_checked(group, "params", (self.n, views - first, P), "float32",
                                    chunks=(min(self.n, 4096), views - first, P), compressors=(zarr.codecs.ZstdCodec(level=3),))
            write_plan(params, self.plan, self.image_size, first_view=first)
            seal_teacher(self.group, name)

        claims.once(self.url, f"teacher-{store.name}-{VIEW_BLOCK}{first}", lambda: self._teacher_ready(name), create,
                    lambda: None, f"adding views {first}-{views - 1} of teacher {store.name}")
        block = self.teacher(name)
        if block.own_views != views - first:
            raise UserError(f"teacher {store.name} has views {first}-{first + block.own_views - 1} being added (by another "
                            f"extract, or one that was interrupted); run it with --views {first + block.own_views} first")
        return block


def check_cache_target(url: str, source: Source, mode: str = "r") -> Cache | None:
    """What extract checks before any model is loaded: a made cache at ``url`` is this dataset's (returned, opened),
    and anything else there is our own unfinished creation or nothing (None)."""
    if Cache.exists(url):
        cache = Cache.open(url, mode)
        cache.check_source(source)
        return cache
    claims.check_writable_target(url, TOP_LEVEL)
    return None
