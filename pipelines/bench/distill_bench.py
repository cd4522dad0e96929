"""Distillation benchmark on ImageNet-like JPEGs (``unic_cache.photos``), side by side in one run: data-path
headroom, cache overhead, peak memory.

- headroom: loader samples/s (DataLoader workers decoding and cutting the views, reading the cache)
  divided by student train-step samples/s on a batch already in memory (the photometric part runs in the
  step, on the device, in both);
- cache overhead: a distill step fed by the loader divided by a step on a batch already in memory;
- peak memory (max RSS of a fresh process) of distill with 1 vs 3 cached teachers;
- with ``--step-options``: the train step (batch in memory) with ``--fused-adamw``, ``--channels-last`` and
  ``--compile``, each against the plain step, so that none becomes a default unmeasured;
- with ``--online N``: the step fed by the loader from the cache against the same step in ``--online`` mode
  (N teachers of ``--online-arch`` run on every batch, as UNIC runs without a cache), both at the student's
  resolution: the speed-up the cache buys (its limit is (student + N teachers) / student).

    python pipelines/bench/distill_bench.py --codecs f16,int8,pca-192+int8,pool-2+int8 --write
    python pipelines/bench/distill_bench.py --codecs f16,pca-192+int8 --s3 --write   # S3 beside local disk
    python pipelines/bench/distill_bench.py --step-options --write                   # GPU step options
    python pipelines/bench/distill_bench.py --student vit_base_patch16_224 --online 4 --write   # cached vs online
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from report import heading, publish, start_s3, timed
from unic_cache import ExtractOptions, extract
from unic_cache.options import key_values
from unic_cache.photos import make_photos
from unic_cache.distillation.recipe import DistillOptions, Distiller

TEACHERS = (("t192", "vit_tiny_patch16_224"), ("t384", "vit_small_patch16_224"), ("t768", "vit_base_patch16_224"))


def rate(fn, batches: int, batch_size: int) -> float:
    """Samples/s of calling ``fn`` ``batches`` times after one warm-up call (a train step does not wait for
    the device, so the device is waited for before the clock is read)."""
    fn()
    seconds, _ = timed(lambda: [fn() for _ in range(batches)], device="cuda" if torch.cuda.is_available() else "cpu")
    return batches * batch_size / seconds


def peak_rss_mb(cfg: dict) -> float:
    """Max RSS (MB) of a fresh process that runs distill with ``cfg``."""
    code = ("import json, resource, sys; from unic_cache.distillation.recipe import DistillOptions, distill; "
            "distill(DistillOptions.from_dict(json.loads(sys.argv[1]))); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128, help="images of the corpus")
    ap.add_argument("--res", type=int, default=224, help="resolution of the cached teachers")
    ap.add_argument("--depth", type=int, default=2, help="depth of the cached teachers (random weights)")
    ap.add_argument("--student", default="vit_small_patch16_224")
    ap.add_argument("--model-arg", action="append", default=[], help="KEY=VALUE for the student (repeatable)")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--codecs", default="f16", help="comma-separated codecs: a headroom figure for each")
    ap.add_argument("--s3", action="store_true", help="also with the shards and the cache on a moto S3 server "
                                                    "on 127.0.0.1 (needs the dev extra)")
    ap.add_argument("--step-options", action="store_true", help="also time the train step with --fused-adamw, "
                                                              "--channels-last and --compile against the plain one")
    ap.add_argument("--online", type=int, default=0, help="also time cached against online steps with this many teachers")
    ap.add_argument("--online-arch", default="vit_base_patch16_224", help="the online teachers (full depth, random weights)")
    ap.add_argument("--write", action="store_true", help="append the results to BENCHMARKS.md")
    args = ap.parse_args()
    codecs = args.codecs.split(",")
    server = start_s3("bench") if args.s3 else None
    headroom = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "data")
        make_photos(data, n=args.n, seed=0, shard_size=max(1, args.n // 4))
        places = {"local": (data, str(Path(tmp) / "cache.zarr"))}
        if server is not None:  # the same shards, and a cache extracted there, on the loopback S3 server
            import s3fs

            s3fs.S3FileSystem().put(f"{data}/*.tar", "bench/data/")
            places["S3"] = ("s3://bench/data/*.tar", "s3://bench/cache.zarr")
        for where, (shards, cache) in places.items():
            for codec in codecs:
                for name, arch in TEACHERS:
                    extract(shards, cache, ExtractOptions(teacher=f"timm:{arch}", name=teacher_name(name, codec),
                                                          codec=codec, resolution=args.res, weights="random",
                                                          model_args={"depth": args.depth}, views=4, progress=False))
            base = dict(data=shards, cache=cache, out=str(Path(tmp) / "run"), student=args.student,
                        model_args=key_values(args.model_arg), img_size=args.img_size, batch_size=args.batch_size, workers=args.workers, steps=10**6,
                        progress=False)
            for codec in codecs:  # the loader reads stored values; the train step decodes them on the device
                cfg = DistillOptions.from_dict({**base, "teachers": [teacher_name(n, codec) for n, _ in TEACHERS]})
                distiller = Distiller(cfg)
                loader_iter = iter(distiller.loader())
                loader_rate = rate(lambda: next(loader_iter), args.batches * 5, args.batch_size)  # past the prefetch
                batch = next(loader_iter)
                memory_rate = rate(lambda: distiller.train_step(batch), args.batches, args.batch_size)
                fed_rate = rate(lambda: distiller.train_step(next(loader_iter)), args.batches, args.batch_size)
                headroom[where, codec] = (loader_rate / memory_rate, memory_rate / fed_rate)
        base.update(data=places["local"][0], cache=places["local"][1])  # memory is measured on local disk
        first = {**base, "teachers": [teacher_name(n, codecs[0]) for n, _ in TEACHERS]}
        head_mb = {k: sum(p.numel() for p in Distiller(DistillOptions.from_dict({**first, **extra})).student.heads.parameters())
                   * 16 / 2**20 for k, extra in (("one", {"teachers": [teacher_name("t768", codecs[0])]}), ("three", {}))}
        one = peak_rss_mb({**first, "teachers": [teacher_name("t768", codecs[0])], "steps": args.batches,
                           "out": str(Path(tmp) / "m1")})
        three = peak_rss_mb({**first, "steps": args.batches, "out": str(Path(tmp) / "m3")})
        speed = step_option_speeds(first, args) if args.step_options else {}
        online = online_speed_up(data, str(Path(tmp) / "online.zarr"), base, args) if args.online else None
    if server is not None:
        server.stop()
    rows = [f"| data-path headroom, {codec}{'' if where == 'local' else ', shards and cache on ' + where}: loader ÷ "
            f"train step (batch in memory) | {h:.2f} | ≥ 2 |" for (where, codec), (h, _) in headroom.items()]
    rows += [f"| cache overhead, {codec}{'' if where == 'local' else ', on ' + where}: distill step ÷ step on a batch "
             f"in memory | {o:.3f} | ≤ 1.1 |" for (where, codec), (_, o) in headroom.items()]
    publish(heading("Distillation data path") + [
        f"Student {args.student} at {args.img_size} px, batch {args.batch_size}, {args.workers} DataLoader workers; "
        f"3 cached teachers (widths 192/384/768, depth {args.depth}, {args.res} px, 4 views) per codec "
        f"({', '.join(codecs)}; the loader reads the stored values, the train step decodes them), {args.n} "
        f"ImageNet-like JPEGs (`unic_cache.photos`).",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        *rows,
        f"| peak RSS ({codecs[0]}), 1 teacher (t768) / 3 teachers | {one:.0f} MB / {three:.0f} MB (+{three - one:.0f} MB) "
        "| heads + batches only |",
        f"| LoP heads with optimizer state, 1 / 3 teachers | {head_mb['one']:.0f} MB / {head_mb['three']:.0f} MB | |",
        *(f"| train step with {name}, 3 teachers ({codecs[0]}): speed ÷ plain step | {v:.2f} | > 1 to become a default |"
          for name, v in speed.items()),
        *([f"| online step time ({args.online} × {args.online_arch} run per batch) ÷ cached step time, both fed by the loader | "
           f"{online[0]:.2f} (batch in memory: {online[1]:.2f}, the limit) | ≥ 2.2 for 4 ViT-B/16 teachers |"] if online else []),
        "",
    ], args.write)


def step_option_speeds(cfg: dict, args) -> dict[str, float]:
    """Train-step speed (a batch in memory) with each GPU option, divided by the plain step's, side by side."""
    options = {"plain": {}, "--fused-adamw": {"fused_adamw": True}, "--channels-last": {"channels_last": True},
               "--compile": {"compile": True}}
    speeds = {}
    for name, extra in options.items():
        distiller = Distiller(DistillOptions.from_dict({**cfg, **extra}))
        batch = next(iter(distiller.loader()))
        distiller.train_step(batch)  # the compiler's first call, outside the clock
        speeds[name] = rate(lambda: distiller.train_step(batch), args.batches, args.batch_size)
    return {name: v / speeds["plain"] for name, v in speeds.items() if name != "plain"}


def online_speed_up(data: str, cache: str, base: dict, args) -> tuple[float, float]:
    """(cached step rate ÷ online step rate, both fed by the loader; the same with the batch in memory, the
    limit a perfect data path would reach) with ``args.online`` teachers of ``args.online_arch``."""
    names = [f"online{i}" for i in range(args.online)]
    for i, name in enumerate(names):  # full-size teachers at the student's resolution, seeded random weights
        extract(data, cache, ExtractOptions(teacher=f"timm:{args.online_arch}", name=name, resolution=args.img_size,
                                            weights=f"random:{i}", views=4, progress=False))
    fed, memory = {}, {}
    for online in (False, True):
        distiller = Distiller(DistillOptions.from_dict({**base, "cache": cache, "teachers": names, "online": online}))
        batches = iter(distiller.loader())
        fed[online] = rate(lambda: distiller.train_step(next(batches)), args.batches, args.batch_size)
        batch = next(batches)
        memory[online] = rate(lambda: distiller.train_step(dict(batch)), args.batches, args.batch_size)
    return fed[False] / fed[True], memory[False] / memory[True]


def teacher_name(name: str, codec: str) -> str:
    return f"{name}-{codec.replace('.', '_')}"


if __name__ == "__main__":
    main()
