"""Many processes: extract and distill under torchrun (gloo) at 1, 2 and 4 processes on the same rows, the cache
compared bit for bit across process counts, the requests the same extracts make of a loopback S3 server (what
coordination costs, counted, not timed), and the S3 requests of a stage-2 epoch there.

    python pipelines/bench/procs_bench.py --rows 100000 --procs 1 2 4 --write

Rows are tiny JPEGs (``report.write_rows``) and the teacher and student are one-block ViT-Tinies at 16 px, so
the figures are the tool's own costs: claims, indexing by the first rank while the others wait, the statistics
merge, each rank's start-up reads. They are CPU seconds per sample summed over every process (this machine may
have fewer cores than processes: wall time cannot show a cost that does not grow), with the wall time beside.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr

from report import heading, publish, start_s3, timed, write_rows
from unic_cache.cache.audit import array_values

TINY = ["--model-arg", "depth=1"]


def torchrun(procs: int, args: list[str], port: int) -> tuple[float, float]:
    """Run ``unic-cache ARGS`` under torchrun with ``procs`` processes: (wall seconds, CPU seconds of them all)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-port", str(port),
           "-m", "unic_cache", *args]
    wall, result = timed(lambda: subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}))
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args[:1])} under {procs} process(es) failed:\n{result.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def extract_args(data: str, cache: str, views: int) -> list[str]:
    return ["extract", data, "--cache", cache, "--teacher", "timm:vit_tiny_patch16_224", "--resolution", "16",
            "--weights", "random", *TINY, "--views", str(views), "--batch-size", "512", "--workers", "0",
            "--no-progress"]


def distill_args(data: str, cache: str, out: str, steps: int, batch: int, extra: list[str] = ()) -> list[str]:
    return ["distill", data, "--cache", cache, "--out", out, "--student", "vit_tiny_patch16_224", "--img-size", "16",
            *TINY, "--steps", str(steps), "--batch-size", str(batch), "--workers", "0", "--no-progress", *extra]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="distill steps per run (batch 256 per process)")
    ap.add_argument("--write", action="store_true", help="append the result to BENCHMARKS.md")
    args = ap.parse_args()
    n, batch = args.rows, 256
    tmp = Path(tempfile.mkdtemp())
    data = str(tmp / "data")
    write_rows(Path(data), n)
    rows, reference, on_s3 = [], None, {}
    server = start_s3("procs")
    for i, procs in enumerate(args.procs):
        cache = str(tmp / f"cache-{procs}.zarr")
        wall, cpu = torchrun(procs, extract_args(data, cache, args.views), 29600 + i)
        values = array_values(zarr.open_group(cache, mode="r"))
        reference = reference or values
        same = values.keys() == reference.keys() and all(np.array_equal(values[k], reference[k], equal_nan=True)
                                                         for k in reference)
        first = torchrun(procs, distill_args(data, cache, str(tmp / f"d1-{procs}"), 1, batch), 29610 + i)
        more = torchrun(procs, distill_args(data, cache, str(tmp / f"dn-{procs}"), 1 + args.steps, batch), 29620 + i)
        samples = args.steps * batch * procs  # the steps beyond the first, all processes together
        rows.append((procs, cpu / n, wall / n, "yes" if same else "**no**", first[1], first[0],
                     (more[1] - first[1]) / samples, (more[0] - first[0]) / samples))
        server.requests.clear()  # the same extract into the loopback S3 server: what coordination costs in requests
        torchrun(procs, extract_args(data, f"s3://procs/extract-{procs}.zarr", args.views), 29640 + i)
        on_s3[procs] = dict(server.requests)
        print(rows[-1], on_s3[procs], flush=True)

    import s3fs

    s3 = s3fs.S3FileSystem()
    s3.put(str(tmp / f"cache-{args.procs[0]}.zarr"), "procs/cache.zarr", recursive=True)
    epoch_steps = -(-n // batch)
    server.requests.clear()
    torchrun(1, distill_args(data, "s3://procs/cache.zarr", str(tmp / "s3-run"), epoch_steps, batch), 29630)
    requests = dict(server.requests)
    server.stop()

    lines = heading(f"Many processes: extract and distill under torchrun on {n:,} rows") + [
        f"{n:,} rows of tiny JPEGs, {args.views} views, one-block ViT-Tiny teacher and student at 16 px, gloo, "
        f"OMP_NUM_THREADS=1; CPU seconds are user + system of every process of the run. Distill: a 1-step run "
        f"(start-up: indexing, opening the cache, the loader's first reads, model set-up), and the {args.steps} "
        f"steps beyond it of a {1 + args.steps}-step run, per sample (batch {batch} per process).", "",
        "| processes | extract CPU / sample | extract wall / sample | cache bit-identical to the first | "
        "distill start-up CPU | start-up wall | step CPU / sample | step wall / sample |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {p} | {c * 1e6:.0f} µs | {w * 1e6:.0f} µs | {same} | {fc:.1f} s | {fw:.1f} s | {sc * 1e6:.0f} µs | "
          f"{sw * 1e6:.0f} µs |" for p, c, w, same, fc, fw, sc, sw in rows], "",
        f"A stage-2 epoch ({epoch_steps} steps of {batch}, one process) reading the cache from the loopback S3 "
        f"server (moto): {sum(requests.values()):,} requests for {n:,} samples, "
        f"{sum(requests.values()) / n:.4f} per sample ({', '.join(f'{m} {c:,}' for m, c in sorted(requests.items()))}).",
        "", "The same extracts with the cache on the loopback S3 server: every request the processes made together "
        "(claims, index and seal reads, shard and statistics writes, the merge), by method:", "",
        "| processes | requests | per sample | by method |", "|---|---|---|---|",
        *[f"| {p} | {sum(r.values()):,} | {sum(r.values()) / n:.4f} | "
          f"{', '.join(f'{m} {c:,}' for m, c in sorted(r.items()))} |" for p, r in on_s3.items()], ""]
    publish(lines, args.write)


if __name__ == "__main__":
    main()
