"""How far is a target derived from a cached view from the teacher's real output on the augmented image?

Before any student is trained with a stage-2 augmentation (issue 27, item 5), this measures, per teacher, how
wrong the cached targets become when the student's input is changed and the target is derived from the cache
instead of recomputed: a horizontal flip (summary unchanged, the patch map mirrored); a token-aligned sub-crop
of the view resized back to the input size (summary unchanged, the patch map cut to the same tokens and
resized, as ReLabel cuts its label maps); MixUp of two samples (both outputs mixed with the images' weight)
and CutMix with a token-aligned box (patches taken from either map, the summary mixed by area). Scale:
the teacher's output on another view of the same image (summary) and on another image (both), i.e. what
a fresh view changes and what chance is. Figures: mean cosine, and the standardised squared error (per
dimension, divided by the variance of the teacher's outputs: 2 for unrelated vectors), as the loss sees it.

    python pipelines/augmented_targets.py --photos 64                  # EfficientNet-Lite0, ImageNet weights
    python pipelines/augmented_targets.py DATA --cache CACHE           # each teacher of a cache, rebuilt from it
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

from unic_cache import Cache, build_teacher, open_source
from unic_cache.cache.pixels import CURRENT
from unic_cache.cache.views import ViewPlan, plan_views
from unic_cache.models.teachers import rebuild_teacher
from unic_cache.models.device_pixels import replay
from unic_cache.photos import make_photos


def _grid(patch: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens (B, T, D) as a map (B, D, gh, gw)."""
    return patch.transpose(1, 2).reshape(patch.shape[0], patch.shape[2], *grid)


def _compare(true: torch.Tensor, approx: torch.Tensor, std: torch.Tensor) -> tuple[float, float]:
    """(mean cosine, mean standardised squared error) of vectors along dim 1."""
    cos = F.cosine_similarity(true.double(), approx.double(), dim=1).mean()
    z = ((true.double() - approx.double()) / std.double().view(1, -1, *([1] * (true.dim() - 2)))).pow(2).mean()
    return float(cos), float(z)


def measure(teacher, images: torch.Tensor, seed: int = 0) -> dict[str, tuple]:
    """Every figure for one teacher on uint8 views ``images`` (B, 3, R, R) and another view of each (B, ...)."""
    views, others = images
    gen = torch.Generator().manual_seed(seed)
    res, grid = views.shape[-1], teacher.info.grid
    with torch.no_grad():
        def run(x):
            s, p = teacher(x)
            return s.float(), _grid(p.float(), grid)

        s, p = run(views)
        s_std, p_std = s.std(0).clamp_min(1e-6), p.std(dim=(0, 2, 3)).clamp_min(1e-6)
        out = {}
        fs, fp = run(views.flip(-1))
        out["flip (patch map mirrored)"] = (*_compare(fs, s, s_std), *_compare(fp, p.flip(-1), p_std))
        gh, gw = grid
        a, b = max(1, round(0.7 * gh)), max(1, round(0.7 * gw))
        y0, x0 = (int(torch.randint(0, n - m + 1, (1,), generator=gen)) for n, m in ((gh, a), (gw, b)))
        box = views[..., y0 * res // gh:(y0 + a) * res // gh, x0 * res // gw:(x0 + b) * res // gw]
        crop = F.interpolate(box.float(), size=(res, res), mode="bicubic", antialias=True).round().clamp(0, 255).to(torch.uint8)
        cs, cp = run(crop)
        cut = F.interpolate(p[..., y0:y0 + a, x0:x0 + b], size=grid, mode="bilinear", align_corners=False)
        out[f"sub-crop of {a}x{b} tokens (map cut and resized)"] = (*_compare(cs, s, s_std), *_compare(cp, cut, p_std))
        pair = torch.roll(torch.arange(len(views)), 1)
        lam = torch.rand(len(views), generator=gen).view(-1, 1, 1, 1)
        ms, mp = run((lam * views + (1 - lam) * views[pair]).round().to(torch.uint8))
        lam1 = lam.view(-1, 1)
        out["MixUp (outputs mixed)"] = (*_compare(ms, lam1 * s + (1 - lam1) * s[pair], s_std),
                                        *_compare(mp, lam * p + (1 - lam) * p[pair], p_std))
        mask = torch.zeros(1, 1, gh, gw)
        mask[..., :max(1, gh // 2), :max(1, gw // 2)] = 1  # a quarter of the tokens from the other image
        pixel_mask = F.interpolate(mask, size=(res, res), mode="nearest")
        xs, xp = run((pixel_mask * views[pair] + (1 - pixel_mask) * views).to(torch.uint8))
        share = float(mask.mean())
        out["CutMix, token-aligned (maps spliced)"] = (*_compare(xs, share * s[pair] + (1 - share) * s, s_std),
                                                        *_compare(xp, mask * p[pair] + (1 - mask) * p, p_std))
        vs, _ = run(others)
        out["scale: another view of the image"] = (*_compare(vs, s, s_std), float("nan"), float("nan"))
        out["scale: another image"] = (*_compare(s[pair], s, s_std), *_compare(p[pair], p, p_std))
    return out


def _views(blobs: list[bytes], sizes: np.ndarray, seed: int, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views 1 and 2 (UNIC's policy) of each image at ``res``, uint8."""
    params = plan_views(ViewPlan(views=3, seed=seed), np.arange(len(blobs)), sizes)
    images = [CURRENT.decode(b) for b in blobs]
    return tuple(torch.stack([replay(im, p[v], res) for im, p in zip(images, params)]) for v in (1, 2))


def table(rows: dict[str, dict[str, tuple]]) -> str:
    lines = ["| teacher | target | summary cos | summary z-err | patch cos | patch z-err |", "|---|---|---|---|---|---|"]
    for name, figures in rows.items():
        for what, (sc, sz, pc, pz) in figures.items():
            patch = "" if np.isnan(pc) else f"{pc:.3f} | {pz:.3f}"
            lines.append(f"| {name} | {what} | {sc:.3f} | {sz:.3f} | {patch or '|'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", help="a dataset whose cache holds the teachers to measure")
    ap.add_argument("--cache", help="the cache (its teachers are rebuilt from its records)")
    ap.add_argument("--rows", type=int, default=128, help="samples measured")
    ap.add_argument("--photos", type=int, default=0, help="measure EfficientNet-Lite0 on this many photos instead")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rows = {}
    if args.photos:
        teacher = build_teacher("efficientnet-lite", "lite0", 224)
        with tempfile.TemporaryDirectory() as tmp:
            make_photos(tmp, n=args.photos, seed=args.seed, shard_size=args.photos)
            source = open_source(tmp)
            index = source.index(progress=False)
            good = np.flatnonzero(index.image_size[:, 0] > 0)
            blobs = [source.read(index.location[r], str(index.keys[r])) for r in good]
            rows["EfficientNet-Lite0 (ImageNet)"] = measure(teacher, _views(blobs, index.image_size[good], args.seed, 224), args.seed)
    else:
        cache, source = Cache.open(args.cache), open_source(args.data)
        picked = np.flatnonzero(~cache.bad)[:args.rows]
        blobs = [source.read(cache.location[r], str(cache.keys[r])) for r in picked]
        for name in cache.teacher_names():
            teacher = rebuild_teacher(name, cache.teacher(name).info)
            rows[name] = measure(teacher, _views(blobs, cache.image_size[picked], args.seed, teacher.info.resolution), args.seed)
    print(table(rows))


if __name__ == "__main__":
    main()
