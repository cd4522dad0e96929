"""Cost per sample from 10^4 to 10^6 rows: indexing, extract, opening, info, verify, distill's start-up, eval's
reads, and the bytes and files of everything that is not a feature, side by side at each size in one run.

    python pipelines/bench/scale_bench.py --sizes 10000 100000 1000000 --write

Each size is a webdataset of tiny JPEGs (16 x 16 px, one of 16 noise images, with a ``.cls`` label), written in
tar shards of 10,000 samples; decoding and the teacher are nearly free (a one-block ViT-Tiny at 16 px, one
token), so what is measured is the tool's own cost per row. A figure flat across the sizes scales to ImageNet;
one that grows is a cost that grows faster than the data.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
from pathlib import Path

import zarr

from report import heading, publish, timed, write_rows
from unic_cache import Cache, DistillOptions, EvalOptions, Evaluator, ExtractOptions, distill, extract, open_source
from unic_cache.cache.repair import verify_cache
from unic_cache.cache.info import cache_info
from unic_cache.cache.sizing import array_kind

TEACHER = "timm:vit_tiny_patch16_224"
MODEL_ARGS = {"depth": 1}


class WorkerMemory:
    """Peak private memory (USS: the pages only it holds, what one more worker costs; pages shared with the
    process it was forked from are not counted) of each child process, polled while the block runs (Linux
    ``/proc``)."""

    def __init__(self):
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()

    def _poll(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.1):
            for pid in _children(me):
                try:
                    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
                except OSError:
                    continue
                private = sum(int(line.split()[1]) * 1024 for line in text.splitlines() if line.startswith("Private_"))
                self.peak[pid] = max(self.peak.get(pid, 0), private)

    def __enter__(self) -> "WorkerMemory":
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def non_feature_bytes(url: str) -> dict[str, int]:
    """Bytes (before compression) of every array that is not a feature array, by kind (index, views, statistics,
    codec, digest and progress)."""
    out: dict[str, int] = {}

    def walk(group: zarr.Group, prefix: str) -> None:
        for name, member in group.members():
            path = f"{prefix}{name}"
            if isinstance(member, zarr.Group):
                walk(member, path + "/")
            elif array_kind(path) != "features":
                out[array_kind(path)] = out.get(array_kind(path), 0) + member.nbytes
    walk(zarr.open_group(url, mode="r"), "")
    return out


def measure(root: Path, n: int, views: int, workers: int) -> dict[str, float]:
    """Every figure for a dataset of ``n`` rows, per sample (seconds, bytes) or as is (files, worker memory)."""
    data, url = root / "data", str(root / "cache.zarr")
    write_rows(data, n)
    figures = {}
    figures["index"], _ = timed(lambda: open_source(str(data)).index(workers=workers, progress=False))
    opts = ExtractOptions(teacher=TEACHER, resolution=16, weights="random", model_args=MODEL_ARGS, views=views,
                          batch_size=512, workers=workers, progress=False)
    figures["extract (its index, teacher, writes, statistics)"], report = timed(lambda: extract(str(data), url, opts))
    assert report.complete
    figures["Cache.open"], cache = timed(lambda: Cache.open(url), repeat=3)
    figures["info"], _ = timed(lambda: cache_info(Cache.open(url)), repeat=3)
    figures["verify (images and features)"], problems = timed(lambda: verify_cache(Cache.open(url), open_source(str(data)),
                                                                                   progress=False))
    assert problems == [], problems
    name = cache.teacher_names()[0]
    cfg = DistillOptions(data=str(data), cache=url, out=str(root / "run"), student="vit_tiny_patch16_224", img_size=16,
                        model_args=MODEL_ARGS, steps=1, batch_size=256, workers=workers, progress=False)
    with WorkerMemory() as memory:
        figures["distill, one step (start-up)"], _ = timed(lambda: distill(cfg))

    def eval_reads():
        ev = Evaluator(EvalOptions(data=str(data), cache=url, teachers=[name], progress=False))
        return ev.teacher_features(name)
    figures["eval: labels, split and view-0 features"], _ = timed(eval_reads)
    per_sample = {k: v / n for k, v in figures.items()}
    per_sample |= {f"bytes: {kind}": b / n for kind, b in sorted(non_feature_bytes(url).items())}
    per_sample["files of the cache per 1,000 samples"] = sum(len(files) for _, _, files in os.walk(url)) / n * 1000
    per_sample["peak private memory of a distill DataLoader worker (MiB)"] = max(memory.peak.values(), default=0) / 2**20
    return per_sample


SECONDS = ("index", "extract", "Cache.open", "info", "verify", "distill", "eval")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="index, extract and distill DataLoader workers")
    ap.add_argument("--write", action="store_true", help="append the result to BENCHMARKS.md")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:  # a first small run pays for imports and first calls
        measure(Path(tmp), 1000, args.views, args.workers)
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            results[n] = measure(Path(tmp), n, args.views, args.workers)
        print(n, results[n], flush=True)
    names = list(results[args.sizes[0]])
    first, last = args.sizes[0], args.sizes[-1]

    def cell(name: str, value: float) -> str:
        if name.startswith(SECONDS):
            return f"{value * 1e6:.1f} µs" if value < 1e-3 else f"{value * 1e3:.2f} ms"
        return f"{value:.2f} B" if name.startswith("bytes") else f"{value:.1f}"
    lines = heading(f"Cost per sample from {first:,} to {last:,} rows") + [
        f"Per sample (worker memory: as it is) for webdatasets of tiny JPEGs, {args.views} views, a "
        f"one-block ViT-Tiny teacher at 16 px, {args.workers} workers; every size measured in this one run. The last "
        "column is the largest size's figure over the smallest's (1.0: flat per sample).", "",
        f"| per sample | {' | '.join(f'{n:,} rows' for n in args.sizes)} | {last:,} ÷ {first:,} |",
        f"|---|{'---|' * len(args.sizes)}---|"]
    for name in names:
        values = [results[n][name] for n in args.sizes]
        ratio = values[-1] / values[0] if values[0] else float("nan")
        lines.append(f"| {name} | {' | '.join(cell(name, v) for v in values)} | {ratio:.2f} |")
    publish(lines + [""], args.write)


if __name__ == "__main__":
    main()
