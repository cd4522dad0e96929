"""CLI start-up: `unic-cache --help` and an option error against a bare `python -c pass`, side by side.

    python pipelines/bench/startup_bench.py --repeat 7 --write

The CLI front (parsing, option checks, one-line errors) imports neither torch nor timm; importing torch
is shown for scale.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from report import heading, publish
from unic_cache import make_shapes


def median_seconds(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--write", action="store_true", help="append the result to BENCHMARKS.md")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    make_shapes(f"{tmp}/data", n=4, size=16)
    cli = [sys.executable, "-m", "unic_cache"]
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "unic-cache --help": [*cli, "--help"],
        "unic-cache extract DATA --cache C --teacher dinov2 --views 0 (one-line error)":
            [*cli, "extract", f"{tmp}/data", "--cache", f"{tmp}/c.zarr", "--teacher", "dinov2", "--views", "0"],
        "unic-cache distill DATA --cache C --batch-size -1 (one-line error)":
            [*cli, "distill", f"{tmp}/data", "--cache", f"{tmp}/c.zarr", "--batch-size", "-1", "--steps", "1"],
        "python -c 'import torch' (for scale)": [sys.executable, "-c", "import torch"],
    }
    times = {name: median_seconds(cmd, args.repeat) for name, cmd in cases.items()}
    base = times["python -c pass"]
    lines = heading("CLI start-up") + [
        f"Median of {args.repeat} runs of each command, measured in one run; ratio to `python -c pass`.", "",
        "| command | ÷ python -c pass |", "|---|---|",
        *[f"| `{name}` | {t / base:.1f} |" for name, t in times.items()], ""]
    publish(lines, args.write)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
