"""Extraction benchmark: end-to-end efficiency and bytes on disk, written into BENCHMARKS.md.

Efficiency = end-to-end extract samples/s (decode + replay in DataLoader workers, teacher forward,
statistics, zarr writes) divided by teacher-forward-only samples/s on batches of the same shape,
measured side by side in one run on one machine.

    python pipelines/bench/extract_bench.py --n 96 --arch vit_small_patch16_224 --res 224 --workers 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from report import heading, publish
from unic_cache import Cache, ExtractOptions, build_teacher, extract, make_shapes
from unic_cache.cache.audit import cache_info


def forward_only(arch: str, res: int, images: int, batch: int, device: str, model_args: dict) -> float:
    """Teacher-forward-only samples/s (images per second) on random uint8 batches already in memory."""
    teacher = build_teacher(f"timm:{arch}", resolution=res, weights="random", model_args=model_args).to(device)
    x = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, device=device)
    teacher(x)  # warm-up
    done, start = 0, time.perf_counter()
    while done < images:
        s, p = teacher(x[: min(batch, images - done)])
        done += min(batch, images - done)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96, help="samples in the shapes world")
    ap.add_argument("--size", type=int, default=224, help="image side of the shapes world")
    ap.add_argument("--arch", default="vit_small_patch16_224")
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="default: extract's own default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shard-mb", type=float, default=8.0,
                    help="small enough that the run has many units, as a real dataset does, so writes overlap compute")
    ap.add_argument("--second-arch", default="vit_tiny_patch16_224", help="a second teacher, for bytes on disk")
    ap.add_argument("--write", action="store_true", help="append the results to BENCHMARKS.md")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data, cache = Path(tmp) / "data", str(Path(tmp) / "cache.zarr")
        make_shapes(data, n=args.n, size=args.size, seed=0, shard_size=max(1, args.n // 4))
        common = dict(resolution=args.res, weights="random", views=args.views, batch_size=args.batch_size,
                      workers=args.workers, device=args.device, shard_mb=args.shard_mb, progress=False)
        images = args.n * args.views
        before = forward_only(args.arch, args.res, images, args.batch_size, args.device, {})
        report = extract(str(data), cache, ExtractOptions(teacher=f"timm:{args.arch}", **common))
        e2e = report.samples * args.views / report.seconds
        fwd = (before + forward_only(args.arch, args.res, images, args.batch_size, args.device, {})) / 2
        extract(str(data), cache, ExtractOptions(teacher=f"timm:{args.second_arch}", **common))
        _, teachers = cache_info(Cache.open(cache))
    lines = heading("Extraction", args.device) + [
        f"Teacher {args.arch} (random weights) at {args.res} px, {args.views} views, batch {args.batch_size} images, "
        f"{'default' if args.workers is None else args.workers} DataLoader worker(s), {args.n} samples of {args.size} px PNG, "
        f"zarr shards of {args.shard_mb:g} MB.",
        "",
        f"**Efficiency (end-to-end / forward-only, forward timed before and after extract and averaged): "
        f"{e2e / fwd:.3f}**" + (f" ({e2e:.1f} vs {fwd:.1f} images/s)" if args.device.startswith("cuda") else
                                " (absolute rates are not reported from a CPU)"),
        "",
        "| teacher | dim | grid | codec | bytes per sample-view | float32 bytes | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in teachers:
        gh, gw = (int(v) for v in t["grid"].split("x"))
        f32 = 4 * t["dim"] * (1 + gh * gw)
        lines.append(f"| {t['model']} | {t['dim']} | {t['grid']} | {t['codec']} | {t['bytes/sample-view']} | {f32} | {t['vs float32']} |")
    publish(lines + [""], args.write)

if __name__ == "__main__":
    main()
