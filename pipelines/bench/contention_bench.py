"""A busy machine: the demo alone, and beside a process that keeps one core busy (as another user's job does), with
the thread settings the tool picks and with the ones it picked before; the ratio of the two times is the slowdown a
user sees, against the 2x that losing half the cores predicts.

    python pipelines/bench/contention_bench.py --write            # the demo (about 4 minutes alone on 2 cores)
    python pipelines/bench/contention_bench.py --quick --write    # demo --quick, a smoke test of the same steps

Each demo runs from scratch into its own folder; the busy process is a Python loop that never sleeps.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from report import heading, publish, timed

SETTINGS = {  # name -> environment of the demo's process
    "tool": ({}, "the tool's: its share of the cores per process, OpenMP threads sleep when they wait"),
    "torch": ({"UNIC_CACHE_THREADS": "torch"}, "torch's defaults (before 0.3): a thread per core, OpenMP threads spin"),
    "one": ({"UNIC_CACHE_THREADS": "1"}, "one thread per process, OpenMP threads sleep when they wait"),
}


def demo_seconds(out: Path, quick: bool, env: dict[str, str], busy: bool) -> tuple[float, str]:
    """Seconds of one demo from scratch, with a busy process beside it or not, and what it printed."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "unic_cache", "demo", "--out", str(out), "--no-progress", *(["--quick"] if quick else [])]
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        seconds, done = timed(lambda: subprocess.run(command, check=True, capture_output=True, text=True,
                                                     env={**os.environ, **env}))
        return seconds, done.stdout
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="demo --quick instead of the demo")
    ap.add_argument("--settings", default="tool,torch", help=f"comma-separated, of {', '.join(SETTINGS)}")
    ap.add_argument("--write", action="store_true", help="append the result to BENCHMARKS.md")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="contention-"))
    rows = []
    for name in args.settings.split(","):
        env, said = SETTINGS[name]
        alone, printed = demo_seconds(tmp / "demo", args.quick, env, busy=False)
        print(printed, flush=True)  # the demo's own table, for RESULTS.md
        loaded, _ = demo_seconds(tmp / "demo", args.quick, env, busy=True)
        rows.append(f"| {said} | {alone:.0f} s | {loaded:.0f} s | {loaded / alone:.2f}x |")
        print(rows[-1], flush=True)
    shutil.rmtree(tmp)
    what = "demo --quick" if args.quick else "demo"
    publish(heading(f"A busy machine: the {what} alone and beside one busy process") + [
        f"`unic-cache {what}` from scratch, alone and beside `python -c 'while True: pass'` (one core of {os.cpu_count()} "
        "kept busy), one after the other on this machine; losing half the cores predicts 2x, the target is 2.5x "
        "at most.", "",
        "| threads | alone | beside a busy process | ratio |", "|---|---|---|---|", *rows, ""], args.write)


if __name__ == "__main__":
    main()
