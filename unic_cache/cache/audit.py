"""Finding what is wrong with a cache: ``metadata.metadata_damage`` (metadata against its seals) and ``find_damage``
(decode and check every chunk of every array, the index against the dataset, the view plan). Repairing it and the
``verify`` command's verdict are ``repair``; its summary table is ``cache.info``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import zarr
from tqdm import tqdm
from zarr.core.sync import sync

from ..errors import UserError, reason
from .sources import Source, content_digest
from .format import INDEX_ARRAYS, quick_digest, read_checked
from .sizing import PARTIALS
from .store import Cache
from .teacher import TeacherStore, UnitDigest
from .views import plan_views


def array_values(group: zarr.Group, prefix: str = "") -> dict[str, np.ndarray]:
    """Every array below ``group`` by path, read whole: to compare caches value for value."""
    out = {}
    for name, member in group.members():
        if isinstance(member, zarr.Array):  # (a seal is a file beside the arrays, not an array)
            out[prefix + name] = member[...]
        else:
            out.update(array_values(member, f"{prefix}{name}/"))
    return out


@dataclass
class Damage:
    """What ``find_damage`` found: problems as lines, and what ``repair_cache`` can act on."""

    problems: list[str] = field(default_factory=list)
    units: dict[str, set[int]] = field(default_factory=dict)  # teacher -> damaged units (extract them again)
    stats: set[str] = field(default_factory=set)  # teachers whose merged statistics must be merged again
    index: set[str] = field(default_factory=set)  # damaged index arrays (rebuilt from the dataset)
    plan: list[slice] = field(default_factory=list)  # damaged row blocks of views/params, rewritten from the (sealed) plan
    pending: list[str] = field(default_factory=list)  # work the next extract does (units not extracted yet), not damage
    codec: set[str] = field(default_factory=set)  # teachers whose codec parameters are damaged (removed by repair)
    beyond_repair: list[str] = field(default_factory=list)  # problems repair cannot fix (a changed dataset, ...)

    def unrepairable(self, problem: str) -> None:
        self.problems.append(problem)
        self.beyond_repair.append(problem)

    def unit(self, store: TeacherStore, unit: int, problem: str) -> None:
        self.problems.append(problem)
        self.units.setdefault(store.name, set()).add(unit)


def shard_key(array: zarr.Array, shard: int) -> str:
    """The store key of shard number ``shard`` (along rows) of ``array``."""
    return f"{array.store_path.path}/{array.metadata.encode_chunk_key((shard,) + (0,) * (array.ndim - 1))}"


def _shard_missing(store: TeacherStore, array: zarr.Array, unit: int) -> bool:
    """True when a stored object (shard) holding ``unit``'s rows does not exist."""
    return not all(sync(array.store_path.store.exists(shard_key(array, s))) for s in store.shard_indices(unit))


def _check_features(store: TeacherStore, kind: str, unit: int, bad: np.ndarray, digest: UnitDigest) -> list[str]:
    """Problems of ``unit``'s stored ``kind`` arrays, read shard by shard (their digest fed as they come)."""
    k, zero, stored_bad = store.own_views, False, False
    for shard in store.unit_shards(unit):
        parts = {a: store.read_stored(a, slice(shard.start, shard.stop), slice(None)) for a in store.arrays(kind)}
        digest.add(parts)
        good = ~bad[shard.start:shard.stop]
        flat = store.codecs[kind].decode(*(v.astype(np.float32) for v in parts.values())).reshape(len(shard), k, -1)
        zero |= bool((np.abs(flat[good]).max(axis=-1, initial=0) == 0).any())
        stored_bad |= bool(np.abs(flat[~good]).max(initial=0) != 0)
    return ["all-zero features for a decodable sample (missing data for a done unit)"] * zero + \
        ["features stored for a bad sample"] * stored_bad


def _check_unit(store: TeacherStore, unit: int, bad: np.ndarray, damage: Damage) -> None:
    rows = store.unit_rows(unit)
    good = ~bad[rows.start:rows.stop]
    k = store.own_views
    digest, fed = UnitDigest(store), set()
    for kind in store.kinds:
        where = f"teacher {store.name} {kind} rows {rows.start}-{rows.stop - 1} (unit {unit})"
        if _shard_missing(store, store.group[kind], unit):
            damage.unit(store, unit, f"{where}: shard missing (deleted?) for a done unit")
            continue
        try:
            problems = _check_features(store, kind, unit, bad, digest)
        except UserError as exc:
            damage.unit(store, unit, reason(exc))
            continue
        fed.update(store.arrays(kind))
        for problem in problems:
            damage.unit(store, unit, f"{where}: {problem}")
        try:
            moments, cos = store.unit_moments(kind, unit)
        except UserError as exc:
            damage.unit(store, unit, reason(exc))
            continue
        partial = {f"stats/partial/{kind}_{n}": v for n, v in zip(PARTIALS, (moments.count, cos, moments.mean, moments.m2))}
        digest.add(partial)
        fed.update(partial)
        expected = good.sum() * k * int(np.prod(store.stored_shape(kind)))
        if moments.count != expected or not (np.isfinite(moments.mean).all() and np.isfinite(moments.m2).all()):
            damage.unit(store, unit, f"{where}: partial statistics wrong (count {moments.count:.0f}, expected {expected}, "
                                     "or non-finite)")
    if store.digest_arrays and fed == set(store.digest_arrays):
        where = f"teacher {store.name} rows {rows.start}-{rows.stop - 1} (unit {unit})"
        try:
            recorded = read_checked(store.group["digest"], unit, f"{where} digest")
        except UserError as exc:
            damage.unit(store, unit, reason(exc))
            return
        if not np.array_equal(recorded, digest.value()):
            damage.unit(store, unit, f"{where}: stored features differ from what was written (digest mismatch: units "
                                     "swapped or rows moved?)")


def _check_teacher(store: TeacherStore, bad: np.ndarray, progress: bool, damage: Damage) -> None:
    try:
        store.codecs  # the fitted parameters (PCA basis, int8c ranges): without them no feature decodes
    except UserError as exc:
        damage.problems.append(f"{reason(exc)}: none of this teacher's features can be decoded without it")
        damage.codec.add(store.name)
        return  # reported once, where it is (every unit would repeat it)
    done, damaged = store.read_progress()
    for unit in damaged:
        damage.unit(store, unit, f"teacher {store.name}: progress flag of unit {unit} damaged")
    if not done.all():
        damage.pending.append(f"teacher {store.name}: {int((~done).sum())}/{store.units} units not extracted; run extract again")
        if store.complete:  # a lost progress flag: the teacher must not pass for finished
            damage.problems.append(f"teacher {store.name} is marked complete but {int((~done).sum())} unit(s) are not done "
                                   "(a progress flag lost?)")
            damage.stats.add(store.name)
    for unit in tqdm(np.flatnonzero(done), desc=f"verify {store.name}", unit="unit", disable=not progress):
        _check_unit(store, int(unit), bad, damage)
    if store.first_view:
        _check_block_params(store, damage)
    if store.complete:
        for kind in store.kinds:
            try:
                stats = store.own_stats(kind)
            except UserError as exc:
                damage.problems.append(reason(exc))
                damage.stats.add(store.name)
                continue
            if store.name in damage.units:
                continue  # the partials are damaged: the comparison below would say nothing new
            try:
                folded, cos = store.fold(kind)
            except UserError:  # a view block's fold reads the teacher's partials first: damaged ones are reported there
                continue
            fidelity = (store.attrs.get("fidelity_cosine") or {}).get(kind, cos / max(folded.count, 1.0))
            if (not np.array_equal(folded.mean, stats["mean"]) or folded.count != stats["count"][0]
                    or not np.array_equal(folded.m2 / max(folded.count, 1.0), stats["cov"])
                    or not np.array_equal(np.diag(stats["cov"]), stats["var"])):
                damage.problems.append(f"teacher {store.name} {kind} statistics do not match the per-unit partials")
                damage.stats.add(store.name)
            elif fidelity != cos / max(folded.count, 1.0):
                damage.problems.append(f"teacher {store.name} {kind}: recorded fidelity {fidelity} is not the one its "
                                       "partial statistics give")
                damage.stats.add(store.name)
    elif done.all():
        damage.pending.append(f"teacher {store.name}: all units done but statistics not finalised; run extract again")


def _params_against_plan(group: TeacherStore | Cache, step: int, damage: Damage) -> tuple[list[slice], list[slice]]:
    """Stored view parameters (the cache's, or a view block's) against the plan, ``step`` rows at a time: (row blocks
    that cannot be read, each a problem added to ``damage``; intact row blocks that differ from the plan)."""
    cache, first = (group, 0) if isinstance(group, Cache) else (group.cache, group.first_view)
    read = group.params if isinstance(group, Cache) else group.own_params
    damaged, differ = [], []
    for a in range(0, cache.n, step):
        rows = slice(a, min(cache.n, a + step))
        try:
            stored = read(rows)
        except UserError as exc:
            damage.problems.append(reason(exc))
            damaged.append(rows)
            continue
        plan = replace(cache.plan, views=stored.shape[1])
        if not np.array_equal(stored, plan_views(plan, np.arange(rows.start, rows.stop), cache.image_size[rows], first)):
            differ.append(rows)
    return damaged, differ


def _check_block_params(block: TeacherStore, damage: Damage) -> None:
    """A view block's stored view parameters against the plan; damaged or different ones make the block be removed by
    repair and extracted again (its features were made from them)."""
    damaged, differ = _params_against_plan(block, 65536, damage)
    if differ:
        damage.problems.append(f"teacher {block.name} params rows {differ[0].start}-{differ[-1].stop - 1} differ from "
                               "the view plan")
    if damaged or differ:
        damage.codec.add(block.name)


def _check_index(cache: Cache, source: Source | None, progress: bool, damage: Damage) -> None:
    index = cache.group["index"]
    for name in INDEX_ARRAYS:
        if name not in index:
            continue
        try:
            cache.index_array(name)
        except UserError as exc:
            damage.problems.append(reason(exc))
            damage.index.add(name)
    if damage.index:
        return
    if cache.dataset_index().fingerprint() != cache.attrs["fingerprint"]:
        damage.unrepairable("index does not match the cache fingerprint (index arrays were modified)")
    if set(np.flatnonzero(cache.bad).tolist()) != set(cache.bad_reasons):
        damage.unrepairable("index/bad flags disagree with the recorded bad-sample reasons")
    if source is not None:
        if quick_digest(source) != cache.attrs["quick_digest"]:
            damage.unrepairable(f"dataset {source.spec} is not the one this cache was made for: "
                                f"{cache.dataset_difference(source)} (restore those files, or extract into a new --cache)")
        elif cache.digest is not None:
            _check_images(cache, source, progress, damage)


def _check_images(cache: Cache, source: Source, progress: bool, damage: Damage) -> None:
    """Every image's bytes against the digest recorded when the dataset was indexed."""
    changed = []
    for row in tqdm(np.flatnonzero(~cache.bad), desc="verify images", unit="img", disable=not progress):
        try:
            data = source.read(cache.location[row], str(cache.keys[row]))
        except (UserError, OSError) as exc:
            changed.append(f"{cache.keys[row]} ({str(exc)[:80]})")
            continue
        if content_digest(data) != int(cache.digest[row]):
            shard = cache.shards[int(cache.location[row][0])]["name"]
            changed.append(f"{cache.keys[row]} (row {row}, in {shard})")
    if changed:
        damage.unrepairable(f"{len(changed)} image(s) changed since the cache was made, e.g. {', '.join(changed[:3])}: "
                            "restore them, or extract into a new --cache (the features of those rows are not theirs)")


def _check_plan(cache: Cache, damage: Damage) -> None:
    """``views/params`` against the plan. Damaged blocks (checksum, missing chunk) are rewritten by repair from the
    plan, but only when the plan can be trusted: it is sealed, or every intact block matches it. Intact blocks
    that differ from an unsealed plan mean the plan's attributes were edited: beyond repair, nothing rewritten."""
    params = cache.group["views/params"]
    if params.shape[:2] != (cache.n, cache.views):
        damage.unrepairable("views/params has the wrong shape")
        return
    damaged, differ = _params_against_plan(cache, params.chunks[0] * 16, damage)
    if differ and not cache.sealed:
        damage.unrepairable(f"views/params rows {differ[0].start}-{differ[-1].stop - 1} are intact (checksummed) but differ "
                            "from the view plan in the root attributes: the plan was edited? (rows not rewritten)")
        return
    if differ:  # a sealed plan is the truth; intact params that differ could only have been written with a forged crc
        damage.problems.append(f"views/params rows {differ[0].start}-{differ[-1].stop - 1} differ from the sealed view plan")
    damage.plan = damaged + differ


def find_damage(cache: Cache, source: Source | None = None, progress: bool = True) -> Damage:
    """Check everything: index (and, given the dataset, every image), view plan, every chunk of every
    teacher array, statistics. Nothing raises: every problem is a line in ``Damage.problems``."""
    damage = Damage()
    if not cache.checksummed:
        damage.problems.append("note: format-1 cache: chunks carry no checksums and images no digests (unchecked)")
    _check_index(cache, source, progress, damage)
    if not damage.index:
        _check_plan(cache, damage)
        for name in cache.teacher_names():
            if cache.unfinished(name):
                damage.pending.append(f"teacher {name}: its addition was interrupted; run the same extract command to make it")
                continue
            try:
                store = cache.teacher(name)
                damage.pending += [f"teacher {name}: the addition of its views from {b.split('-')[1]} was interrupted; run "
                                   "the same extract command to make it" for b in store.unfinished_blocks()]
                for group in (store, *store.blocks):  # the teacher, then the views added to it
                    _check_teacher(group, cache.bad, progress, damage)
            except Exception as exc:  # metadata that does not parse, an array that cannot be opened, a damaged seal
                damage.problems.append(f"teacher {name}: cannot be read ({reason(exc)[:100]}); `verify --repair` removes it "
                                       "and the same extract command extracts it again")
                damage.codec.add(name)
    return damage
