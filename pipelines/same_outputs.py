"""Does a change of the code change what it makes? A tiny world's cache and student, built by a snapshot of the
code at REV (a git worktree) and by the working tree, compared array by array and tensor by tensor.

    python pipelines/same_outputs.py HEAD~1            # exit 0 and "identical" when nothing differs

The cache holds the teacher under the default codec and under every other kind (``CODECS``), and the student
learns from all four; the cache's arrays are compared bit for bit (NaN equal to NaN) with every attribute but
those that name when and by which version it was made, the students' exported weights tensor by tensor. For
refactors, which must change neither.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import zarr
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore", message="Object at .* is not recognized")  # seals and claims beside the arrays
WHEN = {"created", "code_version"}  # attributes that say when and by which version, not what
CODECS = [("int8", "int8", "pool-2+int8c"), ("pca", "pca-16+int8c", "pca-0.9+int8"),  # every kind of codec, beside
          ("bits", "bitround-6", "pool-2+pca-8+f32")]                                 # the default (f16)


def build(code: Path, out: Path) -> None:
    """Make the world, extract a random tiny teacher, distil a tiny student, with the package at ``code``."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "unic_cache"]
    teacher = ["--teacher", "timm:vit_tiny_patch16_224", "--weights", "random:3", "--resolution", "32",
               "--model-arg", "depth=2"]
    extract = ["extract", str(out / "data"), "--cache", str(out / "c.zarr"), *teacher, "--views", "3", "--unit-rows", "8",
               "--workers", "0", "--no-progress", "--calibration", "48"]
    for args in (["make-shapes", str(out / "data"), "--n", "24", "--size", "32"], extract,
                 *([*extract, "--name", name, "--codec", codec, "--patch-codec", patch] for name, codec, patch in CODECS),
                 ["distill", str(out / "data"), "--cache", str(out / "c.zarr"), "--out", str(out / "run"),
                  "--student", "vit_tiny_patch16_224", "--img-size", "32", "--model-arg", "depth=2", "--steps", "4",
                  "--batch-size", "8", "--workers", "0", "--no-progress"]):
        result = subprocess.run([*cli, *args], capture_output=True, text=True, env=env, cwd=out)
        if result.returncode != 0:
            raise SystemExit(f"{args[0]} with the code at {code} failed:\n{result.stderr[-2000:]}")


def _attrs(node) -> dict:
    return {k: v for k, v in json.loads(json.dumps(node.attrs.asdict())).items() if k not in WHEN}


def differences(a: Path, b: Path) -> list[str]:
    """One line per array, attribute set or student tensor that differs between the builds in ``a`` and ``b``."""
    out = []
    ga, gb = zarr.open_group(str(a / "c.zarr"), mode="r"), zarr.open_group(str(b / "c.zarr"), mode="r")
    nodes_a, nodes_b = dict(ga.members(max_depth=None)), dict(gb.members(max_depth=None))
    out += [f"only in one cache: {p}" for p in sorted(set(nodes_a) ^ set(nodes_b))]
    for path in sorted(set(nodes_a) & set(nodes_b)):
        x, y = nodes_a[path], nodes_b[path]
        if _attrs(x) != _attrs(y):
            out.append(f"{path}: attributes differ")
        if isinstance(x, zarr.Array) and not np.array_equal(x[...], y[...], equal_nan=True):
            out.append(f"{path}: values differ")
    if _attrs(ga) != _attrs(gb):
        out.append("root attributes differ")
    sa, sb = (load_file(str(p / "run" / "model" / "model.safetensors")) for p in (a, b))
    out += [f"student tensor {k} differs" for k in sorted(set(sa) | set(sb))
            if k not in sa or k not in sb or not np.array_equal(sa[k], sb[k])]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="the git revision to compare the working tree with (e.g. HEAD~1)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        snapshot = tmp / "snapshot"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(snapshot), args.rev], check=True)
        try:
            for name, code in (("before", snapshot), ("after", ROOT)):  # at the same path: the cache records it
                (tmp / "work").mkdir()
                build(code, tmp / "work")
                (tmp / "work").rename(tmp / name)
            found = differences(tmp / "before", tmp / "after")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(snapshot)], check=True)
    print("\n".join(found) if found else f"identical: the cache and the student of {args.rev} and of the working tree")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
