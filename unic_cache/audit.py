"""Looking at a cache: ``cache_info`` (a summary table) and ``verify_cache`` (decode and check everything)."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from .sources import Source
from .store import Cache, TeacherStore, quick_digest


def cache_info(cache: Cache) -> tuple[list[tuple[str, str]], list[dict]]:
    """(dataset rows as (field, value), one dict per teacher) describing a cache."""
    dataset = [
        ("cache", cache.url), ("source", cache.attrs["source"]), ("samples", str(cache.n)),
        ("bad samples", str(cache.attrs["bad_samples"])), ("views", str(cache.views)),
        ("plan seed", str(cache.plan.seed)), ("input shards", str(len(cache.shards))),
        ("created", cache.attrs["created"]), ("fingerprint", cache.attrs["fingerprint"][:16]),
    ]
    teachers = []
    for name in cache.teacher_names():
        store = cache.teacher(name)
        info, done = store.info, store.done()
        stored = store.nbytes_stored()
        per_view = stored / max(1, cache.n * cache.views)
        f32 = 4 * info.dim * (1 + (info.tokens if store.has_patch else 0))
        teachers.append({
            "teacher": name, "model": info.model_id, "weights": info.weights, "dim": info.dim,
            "grid": f"{info.grid[0]}x{info.grid[1]}" if store.has_patch else "-", "resolution": info.resolution,
            "summary": info.summary_kind, "codec": store.codec.name, "bytes on disk": stored,
            "bytes/sample-view": round(per_view), "vs float32": f"{per_view / f32:.3f}",
            "units done": f"{int(done.sum())}/{store.units}", "complete": store.complete,
            "fidelity (cos)": {k: round(v, 6) for k, v in store.attrs.get("fidelity_cosine", {}).items()},
        })
    return dataset, teachers


def _check_teacher(store: TeacherStore, bad: np.ndarray, progress: bool) -> list[str]:
    problems = []
    done = store.done()
    if not done.all():
        problems.append(f"teacher {store.name}: {int((~done).sum())}/{store.units} units not extracted; run extract again")
    partial = store.group["stats/partial"]
    k, tokens = store.cache.views, store.info.tokens
    for unit in tqdm(np.flatnonzero(done), desc=f"verify {store.name}", unit="unit", disable=not progress):
        rows = store.unit_rows(int(unit))
        good = ~bad[rows.start:rows.stop]
        for kind in store.kinds:
            x = store.group[kind][rows.start:rows.stop]
            where = f"teacher {store.name} {kind} rows {rows.start}-{rows.stop - 1}"
            if not np.isfinite(x).all():
                problems.append(f"{where}: NaN or Inf values")
            flat = x.reshape(len(rows), k, -1)
            if (np.abs(flat[good]).max(axis=-1) == 0).any():
                problems.append(f"{where}: all-zero features for a decodable sample (missing data for a done unit)")
            if np.abs(flat[~good]).max(initial=0) != 0:
                problems.append(f"{where}: features stored for a bad sample")
            expected = good.sum() * k * (tokens if kind == "patch" else 1)
            if partial[f"{kind}_count"][int(unit)] != expected:
                problems.append(f"{where}: statistics count {partial[f'{kind}_count'][int(unit)]:.0f}, expected {expected}")
    if store.complete:
        for kind in store.kinds:
            stats = store.stats(kind)
            if not all(np.isfinite(v).all() for v in stats.values()):
                problems.append(f"teacher {store.name} {kind} statistics: NaN or Inf")
            folded, _ = store.fold(kind)
            if not np.array_equal(folded.mean, stats["mean"]) or folded.count != stats["count"][0]:
                problems.append(f"teacher {store.name} {kind} statistics do not match the per-unit partials")
    elif done.all():
        problems.append(f"teacher {store.name}: all units done but statistics not finalised; run extract again")
    return problems


def verify_cache(cache: Cache, source: Source | None = None, progress: bool = True) -> list[str]:
    """Every problem found in a cache (empty when it is sound): fingerprint, index, every chunk, stats."""
    problems = []
    if cache.dataset_index().fingerprint() != cache.attrs["fingerprint"]:
        problems.append("index does not match the cache fingerprint (index arrays were modified)")
    if source is not None and quick_digest(source) != cache.attrs["quick_digest"]:
        problems.append(f"dataset {source.spec} is not the one this cache was made for")
    bad = cache.bad
    if set(np.flatnonzero(bad).tolist()) != set(cache.bad_reasons):
        problems.append("index/bad flags disagree with the recorded bad-sample reasons")
    params = cache.group["views/params"]
    if params.shape[:2] != (cache.n, cache.views) or not np.isfinite(params[:]).all():
        problems.append("views/params has the wrong shape or non-finite values")
    for name in cache.teacher_names():
        problems.extend(_check_teacher(cache.teacher(name), bad, progress))
    return problems
