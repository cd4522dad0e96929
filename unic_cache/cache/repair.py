"""Repairing a cache and the ``verify`` command's verdict: ``repair_cache`` restores what can be restored
bit-identically (the view plan, the index from the dataset) and makes damaged units be extracted again; ``verify``
checks (``audit.find_damage``, ``metadata``), repairs when asked, and checks again."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from zarr.core.sync import sync

from . import seal
from .audit import Damage, find_damage, shard_key
from .claims import clean_stale_temp_files
from ..errors import UserError
from .format import ALWAYS_WRITE, index_arrays, write_plan
from .metadata import metadata_damage, restore_metadata
from .sources import Source
from .store import Cache
from .teacher import TeacherStore


def remove_unit_shards(store: TeacherStore, unit: int) -> None:
    """Delete the stored shards of ``unit`` of every feature array (our own data, damaged: extract writes it anew)."""
    for kind in store.kinds:
        for name in store.arrays(kind):
            array = store.group[name]
            for shard in store.shard_indices(unit):
                sync(array.store_path.store.delete(shard_key(array, shard)))


def verify_cache(cache: Cache, source: Source | None = None, progress: bool = True) -> list[str]:
    """Every problem found in a cache (empty when it is sound), metadata that differs from its seal included:
    what ``verify`` reports without repairing."""
    return verify(cache.url, source, progress=progress).problems


def repair_cache(cache: Cache, damage: Damage, source: Source | None = None) -> list[str]:
    """Make the damage found be redone: damaged units are unflagged (and their teacher's statistics
    marked for a new merge), the view plan is rewritten, damaged index arrays are rebuilt from the
    dataset (``source``). Running the same extract afterwards restores a bit-identical cache."""
    done = []
    if damage.index:
        if source is None:
            raise UserError(f"index arrays {', '.join(sorted(damage.index))} are damaged; repairing them needs the "
                            f"dataset: `unic-cache verify {cache.url} --repair --data DATA`")
        cache.check_source(source)
        index = source.index(progress=False, pixels=cache.pixels)
        if index.fingerprint() != cache.attrs["fingerprint"]:
            raise UserError("the dataset's index differs from the one this cache was made from; it cannot repair the index")
        bad = np.zeros(index.n, np.uint8)
        bad[list(index.bad)] = 1
        fresh = index_arrays(index, bad, cache.attrs["format_version"])
        for name in sorted(damage.index):
            cache.group[f"index/{name}"].with_config(ALWAYS_WRITE)[...] = fresh[name]  # all-zero chunks kept too
            done.append(f"rebuilt index/{name} from the dataset")
        cache.forget_index()
        return done
    for rows in damage.plan:
        write_plan(cache.group["views/params"], cache.plan, cache.image_size, rows)
        done.append(f"rewrote views/params rows {rows.start}-{rows.stop - 1} from the view plan")
    for name in sorted(damage.codec):  # nothing of it decodes: the same extract command makes it again (new calibration)
        del cache.group["teachers"][name]
        done.append(f"teacher {name}: removed (its codec or view parameters were damaged, so none of its features could "
                    "be decoded); the same extract command extracts it again")
    removed = lambda name: any(name == gone or name.startswith(f"{gone}/") for gone in damage.codec)  # noqa: E731
    for name in sorted(n for n in set(damage.units) | damage.stats if not removed(n)):
        store = cache.teacher(name)
        for unit in sorted(damage.units.get(name, ())):
            store.group["progress"][unit] = 0
            remove_unit_shards(store, unit)  # a damaged shard is never read again (a rewrite would merge into it)
        store.group.attrs["complete"] = False
        n = len(damage.units.get(name, ()))
        done.append(f"teacher {name}: {n} unit(s) to extract again, statistics to merge again")
    removed = clean_stale_temp_files(cache.url, older_than=0)
    if removed:
        done.append(f"removed {removed} temp file(s) of interrupted writes")
    return done


@dataclass
class Verdict:
    """What ``verify`` found and, with repair, did: every line a user reads, and whether the cache is sound."""

    problems: list[str] = field(default_factory=list)
    beyond_repair: list[str] = field(default_factory=list)  # problems no repair can fix (a changed dataset, a damaged seal)
    notes: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    not_repaired: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # what the same extract command does next
    error: str | None = None  # a repair that needs more from the user (the dataset)

    @property
    def ok(self) -> bool:
        return not (self.problems if not self.repaired else self.not_repaired)


def verify(url: str, source: Source | None = None, repair: bool = False, progress: bool = True) -> Verdict:
    """Check a cache (metadata against its seals, then every array); with ``repair``, restore what can be restored
    bit-identically (metadata from its seal, the view plan, the index from the dataset), make damaged units be
    extracted again, then check again: whatever is still wrong is listed as not repaired."""
    if not Cache.exists(url):
        Cache.open(url)  # says in one line what is there instead (nothing, or an unfinished creation)
    verdict = Verdict()
    changed, broken = metadata_damage(url)
    verdict.problems += changed + broken
    verdict.beyond_repair += [b for b in broken if b.startswith(seal.ROOT_SEAL_AT)]
    if verdict.beyond_repair or changed and not repair:  # the arrays are read through this metadata: check them once
        verdict.not_repaired = verdict.beyond_repair if repair else []  # it is restored (a damaged root seal: never)
        return verdict
    if changed:
        verdict.repaired += restore_metadata(url)
    cache = Cache.open(url, mode="a" if repair else "r")
    damage = find_damage(cache, source, progress)
    verdict.notes += [p for p in damage.problems if p.startswith("note:")]
    verdict.problems += [p for p in damage.problems if not p.startswith("note:")]
    verdict.beyond_repair += damage.beyond_repair
    if not repair:  # an unfinished teacher is not a sound cache
        verdict.problems += damage.pending
        return verdict
    verdict.pending = damage.pending
    if not verdict.problems:
        return verdict
    try:
        verdict.repaired += repair_cache(cache, damage, source)
    except UserError as exc:  # it needs more from the user (the dataset): said after the problems it is about
        verdict.error = str(exc)
        return verdict
    if damage.index:  # the rest could not be checked through a damaged index: check (and repair) it now
        rest = verify(url, source, repair, progress)
        verdict.problems += rest.problems
        verdict.repaired += rest.repaired
        verdict.not_repaired = rest.not_repaired if rest.repaired else rest.problems
        verdict.pending, verdict.error = rest.pending, rest.error
        return verdict
    after = find_damage(Cache.open(url), None, progress=False)
    changed, broken = metadata_damage(url)
    verdict.not_repaired = changed + broken + damage.beyond_repair + [
        p for p in after.problems if not p.startswith("note:") and p not in damage.beyond_repair]
    verdict.pending = after.pending
    return verdict
