"""Looking at a cache: ``cache_info`` (a summary table), ``find_damage`` / ``verify_cache`` (decode and
check every chunk of every array) and ``repair_cache`` (make damaged parts be extracted again)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import zarr
from tqdm import tqdm
from zarr.core.sync import sync

from .claims import clean_stale_temp_files
from .codecs import f32_bytes
from ..errors import UserError
from .sources import Source, content_digest
from .store import ALWAYS_WRITE, INDEX_ARRAYS, Cache, TeacherStore, index_arrays, checksummed, quick_digest, write_plan
from .views import plan_views


def cache_info(cache: Cache) -> tuple[dict, list[dict]]:
    """(the dataset's facts, one dict per teacher) describing a cache, as plain JSON values (numbers stay numbers)."""
    reasons: dict[str, int] = {}
    for reason in cache.bad_reasons.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    dataset = {
        "cache": cache.url, "source": cache.attrs["source"], "samples": cache.n, "bad samples": int(cache.attrs["bad_samples"]),
        "bad reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])), "views": cache.views,
        "plan seed": cache.plan.seed, "crop scale": list(cache.plan.policy.scale), "input shards": len(cache.shards),
        "created": cache.attrs["created"], "fingerprint": cache.attrs["fingerprint"][:16],
        "format": cache.attrs["format_version"], "pixel pipeline": cache.pixels.version,
        "integrity": "crc32c on every chunk, image digests" if cache.checksummed
        else "unchecked (format 1: no checksums, no image digests)",
    }
    teachers = []
    for name in cache.teacher_names():
        store = cache.teacher(name)
        info, done = store.info, store.done()
        stored = store.nbytes_stored()
        per_view = stored / max(1, cache.n * cache.views)
        f32 = f32_bytes(info.dim, info.tokens if store.has_patch else 0)
        grid = store.stored_grid
        teachers.append({
            "teacher": name, "model": info.model_id, "weights": info.weights, "dim": info.dim,
            "grid": f"{grid[0]}x{grid[1]}" if store.has_patch else None, "resolution": info.resolution,
            "summary": info.summary_kind, "codec": " / ".join(c.spec for c in store.codec_specs().values()),
            "bytes on disk": stored, "bytes per sample-view": round(per_view), "vs float32": round(per_view / f32, 4),
            "units done": int(done.sum()), "units": store.units, "complete": store.complete,
            "checksums": checksummed(store.group["summary"]),
            "fidelity": {kind: {**f.fidelity, **({"kept_variance": f.kept_variance, "stored_dim": f.stored_dim}
                                                 if f.kept_variance is not None else {})}
                         for kind, f in store.codecs.items() if f.fidelity},
        })
    return dataset, teachers


def fidelity_text(figures: dict) -> str:
    """One codec's calibration figures in a line: cosine to the float32 forward (mean, 1st percentile) and the
    relative error after the per-dimension standardisation the loss sees."""
    err = figures["std_rel_err"]
    kept = (f", kept variance {figures['kept_variance']:.3f} (k={figures['stored_dim']})"
            if "kept_variance" in figures else "")
    return (f"cos {figures['cos_mean']:.5f} (p1 {figures['cos_p1']:.5f}), standardised rel. error "
            f"{'n/a (the features do not vary)' if err != err else f'{err:.4g}'} on {figures['vectors']} vectors{kept}")


def array_values(group: zarr.Group, prefix: str = "") -> dict[str, np.ndarray]:
    """Every array below ``group`` by path, read whole: to compare caches value for value."""
    out = {}
    for name, member in group.members():
        if isinstance(member, zarr.Array):
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
    plan: bool = False  # views/params must be rewritten from the plan
    codec: set[str] = field(default_factory=set)  # teachers whose codec parameters are damaged (removed by repair)
    beyond_repair: list[str] = field(default_factory=list)  # problems repair cannot fix (a changed dataset, ...)

    def unrepairable(self, problem: str) -> None:
        self.problems.append(problem)
        self.beyond_repair.append(problem)

    def unit(self, store: TeacherStore, unit: int, problem: str) -> None:
        self.problems.append(problem)
        self.units.setdefault(store.name, set()).add(unit)


def _shard_missing(array: zarr.Array, unit: int) -> bool:
    """True when the stored object (shard) holding ``unit``'s rows does not exist."""
    key = array.metadata.encode_chunk_key((unit,) + (0,) * (array.ndim - 1))
    return not sync(array.store_path.store.exists(f"{array.store_path.path}/{key}"))


def _check_unit(store: TeacherStore, unit: int, bad: np.ndarray, damage: Damage) -> None:
    rows = store.unit_rows(unit)
    good = ~bad[rows.start:rows.stop]
    k = store.cache.views
    for kind in store.kinds:
        where = f"teacher {store.name} {kind} rows {rows.start}-{rows.stop - 1} (unit {unit})"
        if _shard_missing(store.group[kind], unit):
            damage.unit(store, unit, f"{where}: shard missing (deleted?) for a done unit")
            continue
        try:
            x = store.read(kind, slice(rows.start, rows.stop), slice(None))
        except UserError as exc:
            damage.unit(store, unit, str(exc).split(";")[0])
            continue
        flat = x.reshape(len(rows), k, -1)
        if (np.abs(flat[good]).max(axis=-1, initial=0) == 0).any():
            damage.unit(store, unit, f"{where}: all-zero features for a decodable sample (missing data for a done unit)")
        if np.abs(flat[~good]).max(initial=0) != 0:
            damage.unit(store, unit, f"{where}: features stored for a bad sample")
        try:
            moments, _ = store.unit_moments(kind, unit)
        except UserError as exc:
            damage.unit(store, unit, str(exc).split(";")[0])
            continue
        expected = good.sum() * k * int(np.prod(store.stored_shape(kind)))
        if moments.count != expected or not (np.isfinite(moments.mean).all() and np.isfinite(moments.m2).all()):
            damage.unit(store, unit, f"{where}: partial statistics wrong (count {moments.count:.0f}, expected {expected}, "
                                     "or non-finite)")


def _check_teacher(store: TeacherStore, bad: np.ndarray, progress: bool, damage: Damage) -> None:
    try:
        store.codecs  # the fitted parameters (PCA basis, int8c ranges): without them no feature decodes
    except UserError as exc:
        damage.problems.append(f"{str(exc).split(';')[0]}: none of this teacher's features can be decoded without it")
        damage.codec.add(store.name)
        return  # reported once, where it is (every unit would repeat it)
    done, damaged = store.read_progress()
    for unit in damaged:
        damage.unit(store, unit, f"teacher {store.name}: progress flag of unit {unit} damaged")
    if not done.all():
        damage.problems.append(f"teacher {store.name}: {int((~done).sum())}/{store.units} units not extracted; run extract again")
    for unit in tqdm(np.flatnonzero(done), desc=f"verify {store.name}", unit="unit", disable=not progress):
        _check_unit(store, int(unit), bad, damage)
    if store.complete:
        for kind in store.kinds:
            try:
                stats = store.stats(kind)
            except UserError as exc:
                damage.problems.append(str(exc).split(";")[0])
                damage.stats.add(store.name)
                continue
            if store.name in damage.units:
                continue  # the partials are damaged: the comparison below would say nothing new
            folded, _ = store.fold(kind)
            if not np.array_equal(folded.mean, stats["mean"]) or folded.count != stats["count"][0]:
                damage.problems.append(f"teacher {store.name} {kind} statistics do not match the per-unit partials")
                damage.stats.add(store.name)
    elif done.all():
        damage.problems.append(f"teacher {store.name}: all units done but statistics not finalised; run extract again")


def _check_index(cache: Cache, source: Source | None, progress: bool, damage: Damage) -> None:
    index = cache.group["index"]
    for name in INDEX_ARRAYS:
        if name not in index:
            continue
        try:
            cache.index_array(name)
        except UserError as exc:
            damage.problems.append(str(exc).split(";")[0])
            damage.index.add(name)
    if damage.index:
        return
    if cache.dataset_index().fingerprint() != cache.attrs["fingerprint"]:
        damage.unrepairable("index does not match the cache fingerprint (index arrays were modified)")
    if set(np.flatnonzero(cache.bad).tolist()) != set(cache.bad_reasons):
        damage.unrepairable("index/bad flags disagree with the recorded bad-sample reasons")
    if source is not None:
        if quick_digest(source) != cache.attrs["quick_digest"]:
            damage.unrepairable(f"dataset {source.spec} is not the one this cache was made for")
        elif cache.digest is not None:
            _check_images(cache, source, progress, damage)


def _check_images(cache: Cache, source: Source, progress: bool, damage: Damage) -> None:
    """Every image's bytes against the digest recorded when the dataset was indexed."""
    changed = []
    for row in tqdm(np.flatnonzero(~cache.bad), desc="verify images", unit="img", disable=not progress):
        try:
            data = source._read(cache.location[row], str(cache.keys[row]))
        except (UserError, OSError) as exc:
            changed.append(f"{cache.keys[row]} ({str(exc)[:80]})")
            continue
        if content_digest(data) != int(cache.digest[row]):
            changed.append(str(cache.keys[row]))
    if changed:
        damage.unrepairable(f"{len(changed)} image(s) changed since the cache was made, e.g. {', '.join(changed[:3])}")


def _check_plan(cache: Cache, damage: Damage) -> None:
    params = cache.group["views/params"]
    if params.shape[:2] != (cache.n, cache.views):
        damage.problems.append("views/params has the wrong shape")
        return
    step = params.chunks[0] * 16
    for a in range(0, cache.n, step):
        rows = slice(a, min(cache.n, a + step))
        try:
            stored = cache.params(rows)
        except UserError as exc:
            damage.problems.append(str(exc).split(";")[0])
            damage.plan = True
            continue
        if not np.array_equal(stored, plan_views(cache.plan, np.arange(rows.start, rows.stop), cache.image_size[rows]),
                              equal_nan=False):
            damage.problems.append(f"views/params rows {rows.start}-{rows.stop - 1} differ from the view plan (missing or altered)")
            damage.plan = True


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
            try:
                _check_teacher(cache.teacher(name), cache.bad, progress, damage)
            except Exception as exc:  # metadata that does not parse, an array that cannot be opened
                damage.problems.append(f"teacher {name}: cannot be read ({type(exc).__name__}: {str(exc)[:100]}); "
                                       "extract it again under a new --name")
    return damage


def verify_cache(cache: Cache, source: Source | None = None, progress: bool = True) -> list[str]:
    """Every problem found in a cache (empty when it is sound; a format-1 cache says it is unchecked)."""
    return [p for p in find_damage(cache, source, progress).problems if not p.startswith("note:")]


def repair_cache(cache: Cache, damage: Damage, source: Source | None = None) -> list[str]:
    """Make the damage found be redone: damaged units are unflagged (and their teacher's statistics
    marked for a new merge), the view plan is rewritten, damaged index arrays are rebuilt from the
    dataset (``source``). Running the same extract afterwards restores a bit-identical cache."""
    done = []
    if damage.index:
        if source is None:
            raise UserError(f"index arrays {', '.join(sorted(damage.index))} are damaged; repairing them needs the "
                            "dataset: `unic-cache verify CACHE --repair --data DATA`")
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
        return done + ["run verify again: the rest of the cache could not be checked with a damaged index"]
    if damage.plan:
        write_plan(cache.group["views/params"], cache.plan, cache.image_size)
        done.append("rewrote views/params from the view plan")
    for name in sorted(damage.codec):  # nothing of it decodes: the same extract command makes it again (new calibration)
        del cache.group["teachers"][name]
        done.append(f"teacher {name}: removed (its codec parameters were damaged, so none of its features could be "
                    "decoded); the same extract command extracts it again")
    for name in sorted(set(damage.units) | damage.stats):
        store = cache.teacher(name)
        for unit in sorted(damage.units.get(name, ())):
            store.group["progress"][unit] = 0
        store.group.attrs["complete"] = False
        n = len(damage.units.get(name, ()))
        done.append(f"teacher {name}: {n} unit(s) to extract again, statistics to merge again")
    removed = clean_stale_temp_files(cache.url, older_than=0)
    if removed:
        done.append(f"removed {removed} temp file(s) of interrupted writes")
    return done
