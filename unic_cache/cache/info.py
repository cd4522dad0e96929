"""A cache at a glance: ``cache_info`` (the dataset's facts and one row per teacher, as plain JSON values: what
``unic-cache info`` prints), the warnings a teacher deserves, and a codec's fidelity in a line."""

from __future__ import annotations

from .codecs import f32_bytes
from ..errors import UserError
from .format import checksummed
from .store import Cache
from .teacher import TeacherStore


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
        "view geometry": cache.pixels.where,
        "integrity": "crc32c on every chunk, image digests" if cache.checksummed
        else "unchecked (format 1: no checksums, no image digests)",
    }
    teachers, unfinished = [], []
    for name in cache.teacher_names():
        if cache.unfinished(name):
            unfinished.append(name)
            continue
        store = cache.teacher(name)
        info, done = store.info, store.done()
        groups = (store, *store.blocks)  # the teacher and the views added to it
        stored = sum(g.nbytes_stored() for g in groups)
        per_view = stored / max(1, cache.n * sum(g.own_views for g in groups))
        f32 = f32_bytes(info.dim, info.tokens if store.has_patch else 0, info.summary_tokens)
        grid = store.stored_grid
        teachers.append({
            "teacher": name, "model": info.model_id, "model args": info.model_args, "weights": info.weights,
            "weights sha256": info.weights_sha256, "dim": info.dim, "views": store.views,
            "grid": f"{grid[0]}x{grid[1]}" if store.has_patch else None, "resolution": info.resolution,
            "summary": info.summary_kind, "codec": " / ".join(c.spec for c in store.codec_specs().values()),
            "bytes on disk": stored, "bytes per sample-view": round(per_view), "vs float32": round(per_view / f32, 4),
            "units done": int(done.sum()) + sum(int(g.done().sum()) for g in store.blocks),
            "units": sum(g.units for g in groups), "complete": store.complete and all(g.complete for g in store.blocks),
            "checksums": checksummed(store.group["summary"]),
            "fidelity": {kind: {**f.fidelity, **({"kept_variance": f.kept_variance, "stored_dim": f.stored_dim}
                                                 if f.kept_variance is not None else {})}
                         for kind, f in store.codecs.items() if f.fidelity},
            "warnings": _teacher_warnings(store),
        })
    if unfinished:
        dataset["unfinished teachers"] = f"{', '.join(unfinished)} (interrupted additions: the same extract makes them)"
    return dataset, teachers


def _teacher_warnings(store: TeacherStore) -> list[str]:
    """What a user should know before distilling from a teacher: features that do not vary carry nothing."""
    if not store.complete:
        return []
    out = []
    for kind in store.kinds:
        try:
            stats = store.stats(kind)
        except UserError:
            continue  # verify reports it
        if float(stats["var"].max()) <= 1e-10 * max(1.0, float((stats["mean"] ** 2).max())):
            out.append(f"its {kind} is the same vector for every sample-view (variance {float(stats['var'].max()):.2g}): "
                       "it teaches nothing (untrained weights, or too few blocks?)")
    return out


def fidelity_text(figures: dict) -> str:
    """One codec's calibration figures in a line: cosine to the float32 forward (mean, 1st percentile) and the
    relative error after the per-dimension standardisation the loss sees."""
    err = figures["std_rel_err"]
    kept = (f", kept variance {figures['kept_variance']:.3f} (k={figures['stored_dim']})"
            if "kept_variance" in figures else "")
    return (f"cos {figures['cos_mean']:.5f} (p1 {figures['cos_p1']:.5f}), standardised rel. error "
            f"{'n/a (the features do not vary)' if err != err else f'{err:.4g}'} on {figures['vectors']} "
            f"{'held-out vectors (not fitted on)' if figures.get('held_out') else 'vectors the codec was fitted on'}{kept}")
