"""What each teacher family costs at its real size: seconds per image of one batch and peak memory, on this machine.

Each family's model is built at its real depth and width with random weights (``--weights random``: the compute and
memory of the released model, none of its quality) at the resolution `extract` runs it at, in a process of its
own so that its peak resident memory is its own; one warm-up batch, then the median of ``--repeat`` batches of
``--batch`` uint8 images through the teacher's full forward (pixels normalised, summary and patch tokens taken).

    python pipelines/bench/teacher_bench.py --write                      # every family below
    python pipelines/bench/teacher_bench.py --only sam:huge --batch 1    # one

Teachers too large for this machine's memory are left out and said so (DINOv3-7B: 6.7 B parameters, 27 GiB
in float32, more than 24 GiB).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from report import heading, publish, timed

FAMILIES = ["dino:base", "ibot:base", "deit3:base", "dbot-ft:base", "dinov2:large", "dinov3:large", "siglip2:so400m",
            "dfn-clip:huge", "c-radio:huge", "c-radio-v4:so400m", "pe-core:large", "pe-spatial:large", "aimv2:large",
            "sam:huge"]
TOO_LARGE = {"dinov3:7b": "6.7 B parameters: 27 GiB in float32, more than this machine's 24 GiB"}


def one(teacher: str, batch: int, repeat: int) -> dict:
    """Build ``teacher`` with random weights and time its forward (run in a child process)."""
    import torch

    from unic_cache.models.registry import split_alias
    from unic_cache.models.teachers import build_teacher

    alias, size = split_alias(teacher, None)
    model = build_teacher(alias, size, weights="random:0")
    info = model.info
    images = torch.randint(0, 256, (batch, 3, info.resolution, info.resolution), dtype=torch.uint8)
    model(images)  # warm-up
    seconds, (summary, patch) = timed(lambda: model(images), repeat)
    return {"teacher": teacher, "model": info.model_id, "params": sum(p.numel() for p in model.parameters()),
            "resolution": info.resolution, "tokens": patch.shape[1], "summary": summary.shape[-1], "dim": patch.shape[-1],
            "s_per_image": seconds / batch, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", help="ALIAS:SIZE to measure (repeatable; default: every family)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="append the result to BENCHMARKS.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(args.child, args.batch, args.repeat)))
        return
    rows = []
    for teacher in args.only or FAMILIES:
        out = subprocess.run([sys.executable, __file__, "--child", teacher, "--batch", str(args.batch), "--repeat",
                              str(args.repeat)], capture_output=True, text=True)
        if out.returncode != 0:
            rows.append({"teacher": teacher, "error": (out.stderr.strip().splitlines() or ["?"])[-1][:120]})
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], file=sys.stderr)
    lines = heading("Teachers at their real size: seconds per image and peak memory, random weights") + [
        f"One batch of {args.batch} image{'s' if args.batch > 1 else ''} through each teacher's forward (median of {args.repeat}, after a warm-up), at "
        "the resolution `extract` runs it at; peak resident memory of the process that built and ran it. On a GPU "
        "these are much faster; here they say what a CPU smoke run of each family costs, and the ratios between "
        "families hold for the same hardware.", "",
        "| teacher | timm id | parameters | resolution | patch tokens | summary / patch width | s / image | peak memory (GiB) |",
        "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['teacher']} | failed: {r['error']} | | | | | | |")
            continue
        lines.append(f"| {r['teacher']} | `{r['model']}` | {r['params'] / 1e6:.0f} M | {r['resolution']} | {r['tokens']} | "
                     f"{r['summary']} / {r['dim']} | {r['s_per_image']:.2f} | {r['peak_gib']:.1f} |")
    lines += [""] + [f"Not run: {t}: {why}." for t, why in TOO_LARGE.items()] + [""]
    publish(lines, args.write)


if __name__ == "__main__":
    main()
