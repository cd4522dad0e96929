"""Extraction benchmark on ImageNet-like JPEGs (``unic_cache.photos``), written into BENCHMARKS.md.

- efficiency = end-to-end extract samples/s (decode + geometry in DataLoader workers, the photometric part
  and the teacher forward on the device, statistics, zarr writes) divided by teacher-forward-only
  samples/s on batches of the same shape, side by side in one run;
- ``--bf16-fidelity``: the teacher's features under bf16 autocast (what extract runs on a GPU) against its
  float32 features on the same views: mean and 1st-percentile cosine per kind;
- ``--marginal``: per image, the marginal wall time of ``unic-cache extract`` between a small and a large
  corpus (8 views, a near-free teacher: only its patch embedding) divided by a plain PIL decode of the
  same images; ``--baseline DIR`` measures another checkout the same way beside it (e.g. a git worktree
  of an earlier version), so both figures come from one run;
- ``--grow K1``: views added to a cache: the wall time of ``extract --views K`` growing a K1-view cache, per added
  sample-view, beside a fresh K-view extract's per sample-view, side by side in one run (and the grown teacher
  read against the fresh one, array by array).

    python pipelines/bench/extract_bench.py --n 96 --arch vit_small_patch16_224 --res 224 --workers 1
    python pipelines/bench/extract_bench.py --marginal --baseline /tmp/before-split
    python pipelines/bench/extract_bench.py --grow 4 --views 8 --n 64 --depth 4
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from report import ROOT, heading, images, publish, timed
from unic_cache import Cache, ExtractOptions, build_teacher, extract
from unic_cache.cache.info import cache_info
from unic_cache.cache.pixels import CURRENT
from unic_cache.cache.sources import open_source
from unic_cache.cache.views import ViewPlan, plan_views
from unic_cache.cache.codecs import fidelity
from unic_cache.models.device_pixels import replay
from unic_cache.photos import make_photos


def forward_only(arch: str, res: int, images: int, batch: int, device: str, model_args: dict) -> float:
    """Teacher-forward-only samples/s (images per second) on random uint8 batches already in memory."""
    from unic_cache.runtime import autocast_for

    teacher = build_teacher(f"timm:{arch}", resolution=res, weights="random", model_args=model_args).to(device)
    x = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, device=device)
    with autocast_for(torch.device(device)):
        teacher(x)  # warm-up
        seconds, _ = timed(lambda: [teacher(x[:min(batch, images - a)]) for a in range(0, images, batch)], device=device)
    return images / seconds


def bf16_fidelity(arch: str, res: int, data: str, device: str, views: int = 256) -> dict[str, tuple[float, float]]:
    """{kind: (mean cosine, 1st-percentile cosine)} of bf16-autocast features against float32 ones, on
    ``views`` replayed views of the corpus (the cache's pixel pipeline, UNIC's policy)."""
    source = open_source(data)
    index = source.index(progress=False)
    rows = np.flatnonzero(~np.isin(np.arange(index.n), list(index.bad)))[:views]
    params = plan_views(ViewPlan(views=1), rows, index.image_size[rows])[:, 0]
    x = torch.stack([replay(CURRENT.decode(source.read(index.location[r], str(index.keys[r]))), p, res)
                     for r, p in zip(rows, params)]).to(device)
    teacher = build_teacher(f"timm:{arch}", resolution=res, weights="random").to(device)
    with torch.no_grad():
        full = teacher(x)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            half = teacher(x)
    out = {}
    for kind, a, b in zip(("summary", "patch"), full, half):
        a, b = (v.float().reshape(-1, v.shape[-1]).cpu().numpy() for v in (a, b))
        f = fidelity(a, b, a.mean(0), a.std(0) + 1e-6)
        out[kind] = (f["cos_mean"], f["cos_p1"])
    return out


def decode_ms(data: Path) -> float:
    """A plain PIL decode per image of the corpus at ``data``, in ms (one thread, the best of 3 passes)."""
    blobs = images(data)
    return timed(lambda: [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs], 3, pick=min)[0] / len(blobs) * 1000


def extract_wall(code: Path, data: Path, cache: Path, views: int, res: int) -> float:
    """Seconds of wall time of ``unic-cache extract`` run from the checkout ``code`` (a near-free teacher)."""
    args = [sys.executable, "-m", "unic_cache", "extract", str(data), "--cache", str(cache), "--teacher",
            "timm:vit_tiny_patch16_224", "--resolution", str(res), "--weights", "random", "--model-arg", "depth=0",
            "--views", str(views), "--no-progress"]
    return timed(lambda: subprocess.run(args, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(code)}))[0]


def marginal(small: int, large: int, views: int, res: int, codes: dict[str, Path]) -> list[str]:
    """Markdown lines: per checkout, the marginal extract time per image between ``small`` and ``large``
    corpus images, and its ratio to a plain decode."""
    with tempfile.TemporaryDirectory() as tmp:
        big, few = Path(tmp) / "large", Path(tmp) / "small"
        make_photos(big, n=large, seed=0, shard_size=small)
        few.mkdir()
        (few / "photos-000000.tar").write_bytes((big / "photos-000000.tar").read_bytes())  # the first `small` images
        plain = decode_ms(big)
        rows = []
        for name, code in codes.items():
            t = {n: extract_wall(code, folder, Path(tmp) / f"{name}-{n}.zarr", views, res) for n, folder in ((small, few), (large, big))}
            per_image = (t[large] - t[small]) / (large - small) * 1000
            rows.append(f"| {name} | {per_image:.1f} | {per_image / plain:.1f} |")
    return [f"Plain PIL decode: {plain:.2f} ms per image (one thread). `unic-cache extract` with "
            f"`--teacher timm:vit_tiny_patch16_224 --model-arg depth=0 --views {views} --resolution {res}` (its defaults "
            f"otherwise), wall time of {small} and of {large} images; the marginal time per image:", "",
            "| code | ms per image (8 views) | ÷ plain decode |", "|---|---|---|", *rows, ""]


def grow(k1: int, views: int, n: int, arch: str, res: int, model_args: dict, common: dict) -> list[str]:
    """Markdown lines: wall time per sample-view of a fresh ``views``-view extract, of a ``k1``-view one, and of
    growing the latter to ``views`` (per added sample-view), all in this process; and whether they read the same."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_photos(data, n=n, seed=0, shard_size=max(1, n // 4))
        opts = lambda k: ExtractOptions(teacher=f"timm:{arch}", model_args=model_args, **{**common, "views": k})  # noqa: E731
        wall, loop = {}, {}
        for name, cache, k in (("fresh", "fresh.zarr", views), ("small", "grown.zarr", k1), ("grow", "grown.zarr", views)):
            wall[name], report = timed(lambda: extract(str(data), str(Path(tmp) / cache), opts(k)))
            loop[name] = report.seconds
            assert report.complete
        fresh, grown = (Cache.open(str(Path(tmp) / c)).teacher(arch) for c in ("fresh.zarr", "grown.zarr"))
        rows = slice(0, fresh.cache.n)
        same = all(np.array_equal(fresh.read_stored(a, rows, v), grown.read_stored(a, rows, v))
                   for kind in fresh.kinds for a in fresh.arrays(kind) for v in range(views))
    computed = {"fresh": n * views, "small": n * k1, "grow": n * (views - k1)}
    names = {"fresh": f"fresh, {views} views", "small": f"fresh, {k1} views",
             "grow": f"grown {k1} -> {views} views (views {k1}-{views - 1} only)"}
    per = {name: (wall[name] / computed[name], loop[name] / computed[name]) for name in computed}
    return [f"Teacher {arch} (random weights, {model_args or 'full depth'}) at {res} px, {n} ImageNet-like JPEGs, batch "
            f"{common['batch_size']}. Per sample-view computed: the wall time of each `extract` call (index, "
            "calibration, model and writes included; a grown teacher reuses its codec, so it calibrates nothing) and "
            "of its units alone (decode, views, forward, writes: `ExtractReport.seconds`):", "",
            "| extract | sample-views computed | ms per sample-view, call | ÷ fresh | ms per sample-view, units | ÷ fresh |",
            "|---|---|---|---|---|---|",
            *(f"| {names[k]} | {computed[k]} | {per[k][0] * 1000:.1f} | {per[k][0] / per['fresh'][0]:.2f} | "
              f"{per[k][1] * 1000:.1f} | {per[k][1] / per['fresh'][1]:.2f} |" for k in computed), "",
            f"The grown teacher's stored arrays equal the fresh {views}-view extract's, every view: **{same}**.", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96, help="images of the corpus")
    ap.add_argument("--arch", default="vit_small_patch16_224")
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="default: extract's own default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--depth", type=int, default=None, help="teacher depth (default: the architecture's)")
    ap.add_argument("--shard-mb", type=float, default=8.0,
                    help="small enough that the run has many units, as a real dataset does, so writes overlap compute")
    ap.add_argument("--second-arch", default="vit_tiny_patch16_224", help="a second teacher, for bytes on disk")
    ap.add_argument("--bf16-fidelity", action="store_true", help="also the bf16-autocast features against float32")
    ap.add_argument("--marginal", action="store_true", help="only the marginal per-image time against a plain decode")
    ap.add_argument("--small", type=int, default=48, help="--marginal: images of the small corpus")
    ap.add_argument("--baseline", type=Path, help="--marginal: another checkout measured beside this one")
    ap.add_argument("--grow", type=int, metavar="K1", help="only the views added to a K1-view cache (up to --views)")
    ap.add_argument("--write", action="store_true", help="append the results to BENCHMARKS.md")
    args = ap.parse_args()
    torch.manual_seed(0)
    model_args = {"depth": args.depth} if args.depth is not None else {}
    common = dict(resolution=args.res, weights="random", batch_size=args.batch_size, workers=args.workers,
                  device=args.device, shard_mb=args.shard_mb, progress=False)
    if args.grow:
        publish(heading("Views added to a cache", args.device)
                + grow(args.grow, args.views, args.n, args.arch, args.res, model_args, common), args.write)
        return
    if args.marginal:
        codes = {"this checkout": ROOT, **({f"baseline ({args.baseline})": args.baseline} if args.baseline else {})}
        publish(heading("Extraction end to end per image against a plain decode", "cpu")
                + marginal(args.small, args.n, args.views, args.res, codes), args.write)
        return
    common["views"] = args.views
    with tempfile.TemporaryDirectory() as tmp:
        data, cache = Path(tmp) / "data", str(Path(tmp) / "cache.zarr")
        make_photos(data, n=args.n, seed=0, shard_size=max(1, args.n // 4))
        images = args.n * args.views
        before = forward_only(args.arch, args.res, images, args.batch_size, args.device, model_args)
        report = extract(str(data), cache, ExtractOptions(teacher=f"timm:{args.arch}", model_args=model_args, **common))
        e2e = report.samples * args.views / report.seconds
        fwd = (before + forward_only(args.arch, args.res, images, args.batch_size, args.device, model_args)) / 2
        extract(str(data), cache, ExtractOptions(teacher=f"timm:{args.second_arch}", **common))
        _, teachers = cache_info(Cache.open(cache))
        fidelity = bf16_fidelity(args.arch, args.res, str(data), args.device) if args.bf16_fidelity else {}
    lines = heading("Extraction", args.device) + [
        f"Teacher {args.arch} (random weights{f', depth {args.depth}' if args.depth is not None else ''}) at {args.res} px, "
        f"{args.views} views, batch {args.batch_size} images, "
        f"{'default' if args.workers is None else args.workers} DataLoader worker(s), {args.n} ImageNet-like JPEGs "
        f"(`unic_cache.photos`), zarr shards of {args.shard_mb:g} MB.",
        "",
        f"**Efficiency (end-to-end / forward-only, forward timed before and after extract and averaged): "
        f"{e2e / fwd:.3f}**" + (f" ({e2e:.1f} vs {fwd:.1f} images/s)" if args.device.startswith("cuda") else
                                " (absolute rates are not reported from a CPU)"),
        "",
        *(f"bf16 autocast against float32 ({kind}): mean cosine {m:.5f}, 1st percentile {p:.5f}" for kind, (m, p) in fidelity.items()),
        *([""] if fidelity else []),
        "| teacher | dim | grid | codec | bytes per sample-view | float32 bytes | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in teachers:
        gh, gw = (int(v) for v in t["grid"].split("x"))
        f32 = 4 * t["dim"] * (1 + gh * gw)
        lines.append(f"| {t['model']} | {t['dim']} | {t['grid']} | {t['codec']} | {t['bytes per sample-view']} | {f32} | "
                     f"{t['vs float32']:.3f} |")
    publish(lines + [""], args.write)


if __name__ == "__main__":
    main()
