"""The cache: one zarr v3 group (local path or fsspec URL) holding the index, the view plan and teachers.

Layout (DESIGN.md): root attrs (format, fingerprint, plan), ``index/*``, ``views/params`` and
``teachers/<name>/{summary, patch, progress, stats/}``. A teacher's rows are split into *units*:
one zarr shard of ``summary`` and of ``patch`` each. A writer owns whole units; a unit's features,
then its partial statistics, then its progress flag are written, so a unit whose flag is set is
complete, and nothing else needs to be trusted on resume.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np
import zarr

from .codecs import FeatureCodec, get_codec
from .errors import UserError
from .sources import DatasetIndex, Source
from .teachers import TeacherInfo
from .views import P, PlanConfig, plan_views

FORMAT_VERSION = 1
KINDS = ("summary", "patch")
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


def _open_group(url: str, mode: str) -> zarr.Group:
    try:
        return zarr.open_group(local_path(url), mode=mode, zarr_format=3)
    except FileNotFoundError:
        raise UserError(f"no cache at {url}; create it with `unic-cache extract DATA --cache {url} --teacher NAME`") from None


@dataclass
class Moments:
    """Count, mean and centred second moment (sum of outer products) of vectors, in float64."""

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
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.count * other.count / n)
        return Moments(n, mean, m2)


class Cache:
    """An open cache; ``Cache.create`` makes one for a dataset and plan, ``Cache.open`` reopens it."""

    def __init__(self, group: zarr.Group, url: str):
        self.group, self.url = group, url
        attrs = json_normal(group.attrs.asdict())
        if attrs.get("format") != "unic-cache":
            raise UserError(f"{url} is a zarr group but not a unic-cache cache")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{url} has cache format {attrs.get('format_version')}, this version reads {FORMAT_VERSION}")
        self.attrs = attrs
        self._index_cache: dict[str, np.ndarray] = {}

    @classmethod
    def exists(cls, url: str) -> bool:
        try:
            return _open_group(url, mode="r").attrs.get("ready", False)
        except (UserError, zarr.errors.GroupNotFoundError):
            return False

    @classmethod
    def open(cls, url: str, mode: str = "r") -> "Cache":
        group = _open_group(url, mode)
        if not group.attrs.get("ready", False):
            raise UserError(f"{url} is not a complete cache (its creation was interrupted); delete it and run extract again")
        return cls(group, url)

    @classmethod
    def wait_ready(cls, url: str, timeout: float = 3600.0) -> "Cache":
        """Open a cache that another rank is creating, polling until it is ready."""
        deadline = time.monotonic() + timeout
        while not cls.exists(url):
            if time.monotonic() > deadline:
                raise UserError(f"rank 0 did not create the cache at {url} within {timeout:.0f}s")
            time.sleep(1.0)
        return cls.open(url, mode="a")

    @classmethod
    def create(cls, url: str, index: DatasetIndex, source: Source, plan: PlanConfig) -> "Cache":
        """Write the index and the view plan; ``ready`` is set last, so a crash leaves no half-cache in use."""
        group = zarr.open_group(local_path(url), mode="w", zarr_format=3)
        n, k = index.n, plan.views
        idx = group.create_group("index", attributes={"shards": index.shards,
                                                      "bad_reasons": {str(r): m for r, m in index.bad.items()}})
        rows_chunk = min(n, 1 << 16)
        idx.create_array("keys", shape=(n,), chunks=(rows_chunk,), dtype=str)[:] = index.keys
        idx.create_array("location", shape=(n, 3), chunks=(rows_chunk, 3), dtype="int64")[:] = index.location
        idx.create_array("image_size", shape=(n, 2), chunks=(rows_chunk, 2), dtype="int32")[:] = index.image_size
        bad = np.zeros(n, np.uint8)
        bad[list(index.bad)] = 1
        idx.create_array("bad", shape=(n,), chunks=(rows_chunk,), dtype="uint8")[:] = bad
        params = group.create_group("views").create_array(
            "params", shape=(n, k, P), chunks=(min(n, 4096), k, P), dtype="float32",
            compressors=zarr.codecs.ZstdCodec(level=3))
        for a in range(0, n, _PLAN_BLOCK):
            b = min(n, a + _PLAN_BLOCK)
            params[a:b] = plan_views(plan, np.arange(a, b), index.image_size[a:b])
        group.create_group("teachers")
        group.attrs.update({
            "format": "unic-cache", "format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "samples": n, "bad_samples": len(index.bad), "fingerprint": index.fingerprint(),
            "quick_digest": quick_digest(source), "source": source.spec, "plan": plan.to_dict(),
        })
        group.attrs["ready"] = True
        return cls(group, url)

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

    def check_source(self, source: Source) -> None:
        if quick_digest(source) != self.attrs["quick_digest"]:
            raise UserError(f"cache {self.url} was made for another dataset ({self.attrs['source']}), "
                            f"not {source.spec}; use a new --cache path for this dataset")

    def check_plan(self, plan: PlanConfig) -> None:
        if json_normal(plan.to_dict()) != self.attrs["plan"]:
            raise UserError(f"cache {self.url} has a view plan of {self.views} views, seed {self.plan.seed}; "
                            "run with the same --views/--seed, or use a new --cache path")

    def _index(self, name: str) -> np.ndarray:
        if name not in self._index_cache:
            self._index_cache[name] = self.group[f"index/{name}"][:]
        return self._index_cache[name]

    @property
    def keys(self) -> np.ndarray:
        return self._index("keys")

    @property
    def location(self) -> np.ndarray:
        return self._index("location")

    @property
    def image_size(self) -> np.ndarray:
        return self._index("image_size")

    @property
    def bad(self) -> np.ndarray:
        """(N,) bool: samples that could not be decoded, excluded from features, stats and distillation."""
        return self._index("bad").astype(bool)

    @property
    def bad_reasons(self) -> dict[int, str]:
        return {int(r): m for r, m in self.group["index"].attrs["bad_reasons"].items()}

    @property
    def shards(self) -> list[dict]:
        return list(self.group["index"].attrs["shards"])

    def dataset_index(self) -> DatasetIndex:
        return DatasetIndex(self.shards, self.keys, self.location, self.image_size, self.bad_reasons)

    def params(self, rows: slice) -> np.ndarray:
        return self.group["views/params"][rows]

    # --- teachers
    def teacher_names(self) -> list[str]:
        return sorted(name for name, _ in self.group["teachers"].groups())

    def teacher(self, name: str) -> "TeacherStore":
        if name not in self.teacher_names():
            raise UserError(f"cache {self.url} has no teacher {name!r}; it has: {', '.join(self.teacher_names()) or 'none'}")
        return TeacherStore(self.group[f"teachers/{name}"], self)

    def add_teacher(self, name: str, info: TeacherInfo, codec: FeatureCodec, patch: bool,
                    shard_mb: float = 256.0, unit_rows: int | None = None, code_version: str = "") -> "TeacherStore":
        """Create the arrays of a new teacher; sizes are fixed here, so every rank computes the same layout."""
        n, k, d, t = self.n, self.views, info.dim, info.tokens
        chunk_rows = max(1, (2 << 20) // (t * d * codec.itemsize)) if patch else 1
        if unit_rows is None:
            row_bytes = k * d * codec.itemsize * (1 + (t if patch else 0))
            unit_rows = max(1, int(shard_mb * (1 << 20)) // row_bytes)
        if unit_rows < chunk_rows:
            chunk_rows = unit_rows
        unit_rows = max(chunk_rows, unit_rows // chunk_rows * chunk_rows)
        units = -(-n // unit_rows)
        group = self.group["teachers"].create_group(name, overwrite=True)
        group.create_array("summary", shape=(n, k, d), chunks=(unit_rows, 1, d), shards=(unit_rows, k, d),
                           dtype=codec.dtype, compressors=codec.compressors(), fill_value=0)
        if patch:
            group.create_array("patch", shape=(n, k, t, d), chunks=(chunk_rows, 1, t, d), shards=(unit_rows, k, t, d),
                               dtype=codec.dtype, compressors=codec.compressors(), fill_value=0)
        stats = group.create_group("stats/partial")
        zstd = zarr.codecs.ZstdCodec(level=3)
        for kind in KINDS[: 2 if patch else 1]:
            stats.create_array(f"{kind}_count", shape=(units,), chunks=(1,), dtype="float64", fill_value=0)
            stats.create_array(f"{kind}_cos", shape=(units,), chunks=(1,), dtype="float64", fill_value=0)
            stats.create_array(f"{kind}_mean", shape=(units, d), chunks=(1, d), dtype="float64", compressors=zstd)
            stats.create_array(f"{kind}_m2", shape=(units, d, d), chunks=(1, d, d), dtype="float64", compressors=zstd)
        group.attrs.update({**info.to_dict(), "codec": codec.name, "has_patch": patch, "unit_rows": unit_rows,
                            "units": units, "code_version": code_version, "complete": False})
        # created last: other ranks wait for it, and its one-byte chunks make each unit's flag atomic
        group.create_array("progress", shape=(units,), chunks=(1,), dtype="uint8", compressors=None, fill_value=0)
        return TeacherStore(group, self)


class TeacherStore:
    """One teacher's arrays in a cache: features, progress per unit, and statistics."""

    def __init__(self, group: zarr.Group, cache: Cache):
        self.group, self.cache = group, cache
        self.attrs = json_normal(group.attrs.asdict())
        self.name = group.basename

    @property
    def info(self) -> TeacherInfo:
        fields = TeacherInfo.__dataclass_fields__
        a = {k: v for k, v in self.attrs.items() if k in fields}
        return TeacherInfo(**{**a, "mean": tuple(a["mean"]), "std": tuple(a["std"]), "grid": tuple(a["grid"])})

    @property
    def codec(self) -> FeatureCodec:
        return get_codec(self.attrs["codec"])

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

    def done(self) -> np.ndarray:
        """(units,) bool: which units are complete; the only source of truth for resume."""
        return self.group["progress"][:].astype(bool)

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete", False))

    def write_unit(self, unit: int, features: dict[str, np.ndarray], moments: dict[str, Moments],
                   cos_sums: dict[str, float]) -> None:
        """Write a whole unit (features, then partial stats, then its progress flag)."""
        rows = self.unit_rows(unit)
        for kind in self.kinds:
            self.group[kind][rows.start:rows.stop] = features[kind]
        partial = self.group["stats/partial"]
        for kind in self.kinds:
            m = moments[kind]
            partial[f"{kind}_mean"][unit] = m.mean
            partial[f"{kind}_m2"][unit] = m.m2
            partial[f"{kind}_cos"][unit] = cos_sums[kind]
            partial[f"{kind}_count"][unit] = m.count
        self.group["progress"][unit] = 1

    def fold(self, kind: str) -> tuple[Moments, float]:
        """Dataset moments of ``kind`` and the summed codec cosine, merged over units in unit order."""
        partial = self.group["stats/partial"]
        counts = partial[f"{kind}_count"][:]
        d = self.info.dim
        total = Moments.empty(d)
        for unit in range(self.units):
            total = total.merge(Moments(float(counts[unit]), partial[f"{kind}_mean"][unit], partial[f"{kind}_m2"][unit]))
        return total, float(partial[f"{kind}_cos"][:].sum())

    def finalize(self) -> bool:
        """Once every unit is done, write ``stats/<kind>/{count, mean, var, cov}`` and mark complete."""
        if not self.done().all():
            return False
        fidelity = {}
        for kind in self.kinds:
            m, cos = self.fold(kind)
            stats = self.group.require_group(f"stats/{kind}")
            cov = m.m2 / max(m.count, 1.0)
            for name, value in (("count", np.array([m.count])), ("mean", m.mean), ("var", np.diag(cov).copy()), ("cov", cov)):
                stats.create_array(name, shape=value.shape, dtype="float64", overwrite=True)[...] = value
            fidelity[kind] = cos / max(m.count, 1.0)
        self.group.attrs.update({"fidelity_cosine": fidelity, "complete": True})
        self.attrs = json_normal(self.group.attrs.asdict())
        return True

    def stats(self, kind: str) -> dict[str, np.ndarray]:
        """Exact float64 statistics of a complete teacher: count, mean, var, cov (population)."""
        if not self.complete:
            raise UserError(f"teacher {self.name} in {self.cache.url} is not complete; run extract again to finish it")
        return {name: self.group[f"stats/{kind}/{name}"][...] for name in ("count", "mean", "var", "cov")}

    def nbytes_stored(self) -> int:
        return sum(self.group[kind].nbytes_stored() for kind in self.kinds)
