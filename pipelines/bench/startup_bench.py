"""CLI start-up: `unic-cache --help`, `teachers`, `plan` and every check that needs no model or data (bad options,
weight files, a user's folder, a cache of another dataset) against a bare `python -c pass`, side by side.

    python pipelines/bench/startup_bench.py --repeat 7 --write

The CLI front (parsing, option checks, one-line errors, the alias table and the planner's arithmetic) imports
neither torch nor timm; importing torch is shown for scale.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from report import heading, publish, timed
from unic_cache import make_shapes


def _run_seconds(cmd: list[str], repeat: int) -> float:
    """Median seconds of the command ``cmd`` over ``repeat`` runs."""
    return timed(lambda: subprocess.run(cmd, capture_output=True), repeat)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--write", action="store_true", help="append the result to BENCHMARKS.md")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    make_shapes(f"{tmp}/data", n=4, size=16)
    make_shapes(f"{tmp}/other", n=5, size=16)
    cli = [sys.executable, "-m", "unic_cache"]
    subprocess.run([*cli, "extract", f"{tmp}/data", "--cache", f"{tmp}/c.zarr", "--teacher", "timm:vit_tiny_patch16_224",
                    "--resolution", "16", "--weights", "random", "--model-arg", "depth=1", "--views", "1", "--no-progress"],
                   check=True, capture_output=True)
    mine = f"{tmp}/mine"
    os.makedirs(mine)
    open(f"{mine}/notes.txt", "w").write("a user's folder")
    extract = [*cli, "extract", f"{tmp}/data", "--teacher", "dinov2"]
    distill = [*cli, "distill", f"{tmp}/data", "--cache", f"{tmp}/c.zarr", "--steps", "1"]
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "unic-cache --help": [*cli, "--help"],
        "unic-cache teachers": [*cli, "teachers"],
        "unic-cache plan --samples 1281167 --teachers dino:base,deit3:base --patch-codec pca-192+int8":
            [*cli, "plan", "--samples", "1281167", "--teachers", "dino:base,deit3:base", "--patch-codec", "pca-192+int8"],
        "extract ... --views 0 (one-line error)": [*extract, "--cache", f"{tmp}/n.zarr", "--views", "0"],
        "extract ... --weights missing.safetensors (one-line error)":
            [*extract, "--cache", f"{tmp}/n.zarr", "--weights", f"{tmp}/missing.safetensors"],
        "extract ... --weights random:abc (one-line error)": [*extract, "--cache", f"{tmp}/n.zarr", "--weights", "random:abc"],
        "extract ... --cache A_USER_FOLDER (one-line error)": [*extract, "--cache", mine, "--weights", "random"],
        "extract OTHER_DATA --cache C (made for another dataset; one-line error)":
            [*cli, "extract", f"{tmp}/other", "--teacher", "dinov2", "--cache", f"{tmp}/c.zarr", "--weights", "random"],
        "distill ... --batch-size -1 (one-line error)": [*distill, "--batch-size", "-1"],
        "distill ... --out A_USER_FOLDER (one-line error)": [*distill, "--out", mine],
        "python -c 'import typer, typer._adapters' (typer 0.2x imports pydantic; the floor of any typer command)":
            [sys.executable, "-c", "import typer, typer._adapters"],
        "python -c 'import torch' (for scale)": [sys.executable, "-c", "import torch"],
    }
    for name, cmd in cases.items():  # each error case is the one-line refusal it is timed as
        if "one-line error" in name:
            out = subprocess.run(cmd, capture_output=True, text=True)
            assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, (name, out.stderr)
    times = {name: _run_seconds(cmd, args.repeat) for name, cmd in cases.items()}
    base = times["python -c pass"]
    lines = heading("CLI start-up") + [
        f"Median of {args.repeat} runs of each command, measured in one run; ratio to `python -c pass`.", "",
        "| command | ÷ python -c pass |", "|---|---|",
        *[f"| `{name}` | {t / base:.1f} |" for name, t in times.items()], ""]
    publish(lines, args.write)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
