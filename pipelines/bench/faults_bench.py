"""Fault injection: random SIGKILLs of extract and distill, then the same command again, and concurrent plain extracts
racing to create one new cache; every outcome is compared bit for bit with an uninterrupted single run.

    python pipelines/bench/faults_bench.py --kills 10 --races 20 --write
    python pipelines/bench/faults_bench.py --kills 5 --races 20 --s3 --write   # caches on a loopback S3 server

With ``--s3`` every cache (the killed extracts' and the racing ones) lives on a moto S3 server started on
127.0.0.1 by this script (the dev extra); the uninterrupted reference stays on local disk.

Prints "N killed / N bit-identical" per stage and the race outcomes (bit-identical, refused in one line,
or broken), plus the temp files and claims left behind.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fsspec
import numpy as np
import timm
import torch
import zarr
from safetensors.torch import load_file, save_file

from report import heading, publish, start_s3
from unic_cache import make_shapes
from unic_cache.cache.audit import array_values
from unic_cache.cache.claims import CLAIM_DIR
from unic_cache.distillation.runs import student_weights

ARCH = "vit_tiny_patch16_224"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "unic_cache", *args]


def identical_caches(a: str, b: str) -> bool:
    x, y = array_values(zarr.open_group(str(a), mode="r")), array_values(zarr.open_group(str(b), mode="r"))
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k], equal_nan=True) for k in x)


def identical_students(a: Path, b: Path) -> bool:
    x, y = (load_file(str(student_weights(run))) for run in (a, b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def leftovers(url: str) -> int:
    """Temp files of interrupted writes and claim files still present under a cache (any fsspec URL)."""
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    files = fs.find(root) if fs.exists(root) else []
    return sum(1 for f in files if f.endswith(".partial") or f"/{CLAIM_DIR}/" in f)


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def kill_then_finish(cmd: list[str], resume: list[str], at: float) -> tuple[bool, int]:
    """Start ``cmd``, SIGKILL it after ``at`` seconds (unless it ended), then run ``resume`` to the end."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=at)
        killed = False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = True
    done = subprocess.run(resume, capture_output=True, text=True)
    return killed, done.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10, help="killed runs of extract, and as many of distill")
    ap.add_argument("--races", type=int, default=20, help="trials of 2-4 concurrent extracts on a new cache")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--s3", action="store_true", help="caches on a moto S3 server on 127.0.0.1")
    ap.add_argument("--write", action="store_true", help="append the result to BENCHMARKS.md")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="faults-"))
    server = start_s3("faults") if args.s3 else None
    store = "s3://faults" if args.s3 else str(root)
    make_shapes(root / "data", n=48, size=32, seed=0, shard_size=12)
    torch.manual_seed(0)
    weights = root / "teacher.safetensors"
    save_file(timm.create_model(ARCH, num_classes=0, img_size=32, depth=2).state_dict(), str(weights))
    base = ["extract", str(root / "data"), "--teacher", f"timm:{ARCH}", "--resolution", "32", "--weights", str(weights),
            "--model-arg", "depth=2", "--views", "3", "--batch-size", "6", "--workers", "0", "--unit-rows", "2",
            "--no-progress"]
    reference = root / "reference.zarr"
    t_extract = timed(cli(*base, "--cache", str(reference)))
    run = ["distill", str(root / "data"), "--cache", str(reference), "--student", ARCH, "--img-size", "32",
           "--model-arg", "depth=2", "--steps", "16", "--batch-size", "8", "--workers", "0", "--checkpoint-every", "2",
           "--no-progress"]
    t_distill = timed(cli(*run, "--out", str(root / "reference-run")))

    rows = []
    killed = same = left = 0
    for i in range(args.kills):
        cache = f"{store}/killed-{i}.zarr"
        k, code = kill_then_finish(cli(*base, "--cache", cache), cli(*base, "--cache", cache),
                                   rng.uniform(0.0, 0.9 * t_extract))
        killed += k
        same += k and code == 0 and identical_caches(reference, cache)
        left += leftovers(cache)
    rows.append(("extract, SIGKILL at a random time then the same command", f"{killed} killed / {same} bit-identical",
                 f"{left} temp/claim files left"))

    killed = same = 0
    for i in range(args.kills):
        out = root / f"killed-run-{i}"
        again = cli(*run, "--out", str(out))  # the same command continues a killed run
        k, code = kill_then_finish(again, again, rng.uniform(0.0, 0.9 * t_distill))
        killed += k
        same += k and code == 0 and identical_students(root / "reference-run", out)
    rows.append(("distill, SIGKILL at a random time then the same command", f"{killed} killed / {same} bit-identical", ""))

    outcome = {"bit-identical": 0, "refused in one line": 0, "broken": 0}
    left = 0
    for i in range(args.races):
        cache = f"{store}/race-{i}.zarr"
        procs = [subprocess.Popen(cli(*base, "--cache", cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2 + i % 3)]
        results = [(p.wait(), p.stderr.read()) for p in procs]
        ok = all(code == 0 for code, _ in results)
        refused = all(code == 0 or (code == 2 and len(err.strip().splitlines()) == 1) for code, err in results)
        if ok and identical_caches(reference, cache):
            outcome["bit-identical"] += 1
        elif refused and not ok:
            outcome["refused in one line"] += 1
        else:
            outcome["broken"] += 1
        left += leftovers(cache)
    rows.append((f"{args.races} trials of 2-4 concurrent plain extracts on a new cache",
                 ", ".join(f"{v} {k}" for k, v in outcome.items()), f"{left} temp/claim files left"))

    where = "caches on a moto S3 server on 127.0.0.1 (s3fs)" if args.s3 else "caches on local disk"
    lines = heading(f"Fault injection: kills and concurrent creators, {where}") + [
        f"Tiny ViT teacher (depth 2, 32 px), 48 samples, 3 views, 24 units; uninterrupted extract {t_extract:.1f} s and "
        f"distill (16 steps, checkpoint every 2) {t_distill:.1f} s as subprocesses; kill times uniform over the first 90% of those; "
        "every outcome compared array by array (extract) or tensor by tensor (exported student) with the uninterrupted run.",
        "", "| trial | outcome | left behind |", "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows], ""]
    publish(lines, args.write)
    shutil.rmtree(root)
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
