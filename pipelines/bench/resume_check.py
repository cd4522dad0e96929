"""Is a killed and resumed distill the same as an uninterrupted one on this device?

Distils a student twice from one cache of the photo corpus: straight through, and killed (a SIGKILL of
the process) after its checkpoint at half-way, then resumed by the same command. Prints whether every
tensor of the two students is identical and, if not, the largest difference (on a GPU, a kernel that
sums in a run-dependent order makes the runs differ; that is named here, not hidden).

    python pipelines/bench/resume_check.py --device cuda --write
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from report import heading, publish
from unic_cache import ExtractOptions, extract
from unic_cache.photos import make_photos


def distill_args(data: Path, cache: Path, out: Path, args) -> list[str]:
    return [sys.executable, "-m", "unic_cache", "distill", str(data), "--cache", str(cache), "--out", str(out),
            "--student", args.student, "--img-size", str(args.res), "--steps", str(args.steps), "--batch-size",
            str(args.batch_size), "--checkpoint-every", str(args.steps // 2), "--device", args.device, "--no-progress",
            "--workers", str(args.workers), *sum((["--model-arg", a] for a in args.model_arg), [])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="images of the corpus")
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--teacher", default="vit_small_patch16_224")
    ap.add_argument("--student", default="vit_small_patch16_224")
    ap.add_argument("--model-arg", action="append", default=[], help="KEY=VALUE for the student (repeatable)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--write", action="store_true", help="append the result to BENCHMARKS.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, cache = Path(tmp) / "data", Path(tmp) / "cache.zarr"
        make_photos(data, n=args.n, seed=0, shard_size=max(1, args.n // 2))
        extract(str(data), str(cache), ExtractOptions(teacher=f"timm:{args.teacher}", resolution=args.res, weights="random",
                                                      views=2, device=args.device, progress=False))
        straight, resumed = Path(tmp) / "straight", Path(tmp) / "resumed"
        subprocess.run(distill_args(data, cache, straight, args), check=True, capture_output=True)
        proc = subprocess.Popen(distill_args(data, cache, resumed, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        half = resumed / "checkpoints" / f"step-{args.steps // 2:08d}"
        while not half.exists() and proc.poll() is None:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # killed once the half-way checkpoint is in place
        proc.wait()
        if (resumed / "model").exists():
            sys.exit("the run finished before it could be killed: give more --steps")
        resume = subprocess.run(distill_args(data, cache, resumed, args), capture_output=True, text=True)  # the same command
        if resume.returncode:
            sys.exit(f"the resumed distill failed: {resume.stderr.strip().splitlines()[-1] if resume.stderr.strip() else resume.returncode}")
        a, b = (load_file(str(run / "model" / "model.safetensors")) for run in (straight, resumed))
        worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    verdict = ("identical: every tensor of the resumed student equals the uninterrupted one's" if same else
               f"not identical: largest difference {worst:.3g} (nondeterministic kernels on this device)")
    publish(heading("Killed and resumed distill against an uninterrupted one", args.device) + [
        f"Student {args.student} at {args.res} px, {args.steps} steps of {args.batch_size}, a checkpoint at step "
        f"{args.steps // 2}; the resumed run was SIGKILLed after it and started again with the same command: "
        f"**{verdict}**.", ""], args.write)


if __name__ == "__main__":
    main()
