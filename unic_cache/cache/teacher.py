"""One teacher in a cache: reading and writing its arrays unit by unit (its record and the arrays it is created with:
``layout``).

A teacher's rows are split into *units* of work, each one or more whole zarr shards of every feature array
(format 5: as many as keep the unit's partial statistics under 1/200 of its features; format 4: one). A writer
owns whole units; a unit's features (shard by shard), then its partial statistics and digest, then its progress
flag are written, so a unit whose flag is set is complete, and nothing else needs to be trusted on resume.

Views added to a made cache (``extract --views K2`` on a cache of K1 views) form a *view block*,
``teachers/<name>/views-<K1>/``: a group laid out as a teacher of K2 - K1 views (its own units, progress, digest,
partial statistics and seal), with the base's fitted codec and its views' parameters (``params``); its merged
statistics cover every view of the teacher up to its own. Readers of the base see the views of every complete block.
"""

from __future__ import annotations

import functools
from typing import Protocol

import google_crc32c
import numpy as np
import zarr

from . import claims, seal
from .codecs import INT8_MISSING, Codec, FittedCodec
from ..errors import UserError
from ..records import json_normal
from .format import KINDS, create_checked, read_checked, read_params, read_whole
from .layout import VIEW_BLOCK, TeacherInfo, seal_teacher
from .sizing import PARTIALS
from .statistics import Moments

class Parent(Protocol):
    """What a teacher reads of the cache that holds it (``store.Cache``): its rows, root group and URL, the view
    parameters of rows, and a teacher's view blocks by name."""

    n: int
    group: zarr.Group
    url: str

    def params(self, rows: slice) -> np.ndarray: ...
    def teacher(self, name: str, base: "TeacherStore | None" = None) -> "TeacherStore": ...
    def unfinished(self, name: str) -> bool: ...


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

    def __init__(self, group: zarr.Group, cache: Parent, name: str, base: "TeacherStore | None" = None):
        self.group, self.cache, self.name = group, cache, name  # name: "<teacher>", or "<teacher>/views-<K1>" (a block)
        self.base = base or self  # the teacher a view block adds views to (a teacher's is itself)
        self.attrs = json_normal(group.attrs.asdict())
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
            out[kind] = FittedCodec.from_attrs(described[kind], self.info.width(kind), params, self.name)
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
        for cached in ("codecs", "blocks"):
            self.__dict__.pop(cached, None)
        return self

    # --- views: the group's own, and those of the view blocks added to the teacher since
    @property
    def first_view(self) -> int:
        """The number of this group's first view: 0 for a teacher, K1 for a view block."""
        return int(self.attrs.get("first_view", 0))

    @property
    def own_views(self) -> int:
        """The views this group's arrays hold."""
        return int(self.feature_array("summary").shape[1])

    def _block_names(self) -> list[str]:
        """The view-block groups of this teacher, in view order; none for a block itself."""
        if self.first_view:
            return []
        return [n for _, n in sorted((int(n.split("-")[1]), n) for n, _ in self.group.groups() if n.startswith(VIEW_BLOCK))]

    @functools.cached_property
    def blocks(self) -> list["TeacherStore"]:
        """The view blocks added to this teacher, in view order (complete or not; one whose addition is unfinished,
        having no seal yet, is left out: ``unfinished_blocks``)."""
        unfinished = self.unfinished_blocks()  # seals looked up once, not once per block
        return [self.cache.teacher(f"{self.name}/{n}", self) for n in self._block_names() if n not in unfinished]

    def unfinished_blocks(self) -> list[str]:
        """The view blocks being added, or whose addition was interrupted (the same extract command makes them)."""
        return [n for n in self._block_names() if self.cache.unfinished(f"{self.name}/{n}")]

    def usable_blocks(self) -> list["TeacherStore"]:
        """The complete view blocks that continue the teacher's views without a gap, in order."""
        out, end = [], self.own_views
        for block in self.blocks:
            if block.first_view != end or not block.complete:
                break
            out.append(block)
            end += block.own_views
        return out

    @property
    def views(self) -> int:
        """The views stage 2 can read of this teacher: its own and its complete view blocks'."""
        return self.own_views + sum(b.own_views for b in self.usable_blocks())

    def params(self, rows: slice) -> np.ndarray:
        """(rows, views, P) view parameters of every view this teacher has (checked reads)."""
        return np.concatenate([g.own_params(rows) for g in (self, *self.usable_blocks())], axis=1)

    def own_params(self, rows: slice) -> np.ndarray:
        """(rows, own_views, P) the parameters of this group's views: the cache's plan, or a view block's stored
        ones; a missing chunk is an error."""
        if not self.first_view:
            return self.cache.params(rows)
        return read_params(self.group["params"], rows, f"teacher {self.name} params rows {rows.start}-{rows.stop - 1}")

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
        """One stored array (``arrays(kind)``) of ``rows`` at ``view`` (an int: any of ``views``; or a slice of the
        group's own views), as stored; damaged, missing or non-finite data is a one-line error naming the teacher,
        rows and unit."""
        if isinstance(view, (int, np.integer)) and view >= self.own_views:
            block = next((b for b in self.usable_blocks() if view < b.first_view + b.own_views), None)
            if block is None:
                raise UserError(f"view {view} out of range: the cache has views 0 to {self.views - 1} of teacher {self.name}")
            return block.read_stored(array, rows, int(view) - block.first_view)
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
        n, k = self.cache.n, self.views
        if kind not in self.kinds:
            raise UserError(f"teacher {self.name} stores {', '.join(self.kinds)}, not {kind!r}")
        if not (isinstance(rows.start, int) and isinstance(rows.stop, int) and 0 <= rows.start < rows.stop <= n):
            raise UserError(f"rows {rows.start}:{rows.stop} out of range: teacher {self.name} has rows 0 to {n - 1}")
        if isinstance(view, slice):
            inside = len(range(k)[view]) > 0
        else:
            inside = isinstance(view, (int, np.integer)) and 0 <= view < k
        if not inside:
            raise UserError(f"view {view} out of range: the cache has views 0 to {k - 1} of teacher {self.name}")

    def read(self, kind: str, rows: slice, view) -> np.ndarray:
        """``kind`` features of ``rows`` at ``view`` (an int or a slice of ``views``) rebuilt by the codec as float32
        (..., dim), read checked."""
        self._check_selection(kind, rows, view)
        picked = range(self.views)[view] if isinstance(view, slice) else None
        if picked and max(picked) >= self.own_views:  # across the view blocks: stored values gathered, decoded at once
            parts = [np.stack([self.read_stored(a, rows, v) for v in picked], axis=1).astype(np.float32)
                     for a in self.arrays(kind)]
        else:
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
        """Dataset moments of ``kind`` and the summed codec cosine over every view up to this group's last: the units
        of the teacher, then of each view block before this one, then this group's, in unit order."""
        chain = [self]
        if self.first_view:  # a block: the teacher's views before it come first
            chain = [self.base, *(b for b in self.base.blocks if b.first_view < self.first_view), self]
        total, cos = Moments.empty(self.info.width(kind)), 0.0
        for group in chain:
            for unit in range(group.units):
                m, c = group.unit_moments(kind, unit)
                total, cos = total.merge(m), cos + c
        return total, cos

    def finalize(self) -> bool:
        """Once every unit is done, write ``stats/<kind>/{count, mean, var, cov}`` and mark complete
        (one process merges; the others wait for it). False while units are missing (for a view block: or the
        teacher's own are, whose statistics its merge continues)."""
        if not self.done().all() or (self.first_view and not self.base.refresh().complete):
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
            seal_teacher(self.cache.group, self.name)
        self.group.attrs.update({"fidelity_cosine": fidelity, "complete": True})

    def stats(self, kind: str) -> dict[str, np.ndarray]:
        """Exact float64 statistics of a complete teacher over every view it has (``views``): count, mean, var, cov
        (population)."""
        blocks = self.usable_blocks() if self.complete else []
        return (blocks[-1] if blocks else self).own_stats(kind)

    def own_stats(self, kind: str) -> dict[str, np.ndarray]:
        """The statistics this group stores (a view block's cover the teacher's views up to its last)."""
        if not self.complete:
            raise UserError(f"teacher {self.name} in {self.cache.url} is not complete; run extract again to finish it")
        out = {name: read_whole(self.group[f"stats/{kind}/{name}"], f"teacher {self.name} {kind} statistics ({name})")
               for name in ("count", "mean", "var", "cov")}
        if not all(np.isfinite(v).all() for v in out.values()):
            raise UserError(f"teacher {self.name} {kind} statistics hold NaN/Inf; run `unic-cache verify --repair` "
                            "and re-run extract")
        return out

    def nbytes_stored(self, kinds: tuple[str, ...] | None = None) -> int:
        """Bytes on disk of every stored feature array (values and scales) of ``kinds`` (default: all)."""
        return sum(self.group[a].nbytes_stored() for kind in kinds or self.kinds for a in self.arrays(kind))

    def nbytes_encoded(self, kinds: tuple[str, ...] | None = None) -> int:
        """Bytes of every stored feature array of ``kinds`` (default: all) before compression (what the planner
        predicts)."""
        return sum(self.group[a].nbytes for kind in kinds or self.kinds for a in self.arrays(kind))
