"""Where is a task's knowledge in a distilled student? Every place it could be, probed the same way.

A student can lose what one teacher knows (a task its teacher scores 76-82 R² on while every student reaches 4-15,
RESULTS.md) in several places: never learnt by its blocks, learnt in a block but not kept to the last, kept in the
patch tokens but not in the CLS token eval probes, or kept only in what its heads predict. For each finished run
this script probes, with eval's own probes (fit on train rows, chosen on val, test reported):

- ``block <i> cls`` and ``block <i> mean``: each block's CLS token and the mean of its patch tokens (before the
  final norm), every block;
- ``embedding``: the exported encoder's pooled embedding, what ``eval`` probes;
- ``head <teacher>``: the student's prediction of each teacher's summary (in the standardised target space);

beside each teacher's cached summary (``teacher <name>``) on the same rows. Runs named alike (``NAME=RUN``, one per
seed) are averaged (mean ± standard deviation over seeds).

    python pipelines/knowledge_position.py runs/reuse-powered/data runs/reuse-powered/cache.zarr \\
        online=runs/.../online-e100/seed-0 online=runs/.../online-e100/seed-1 --tasks x,y,count --out runs/position
    # writes <out>/position.{json,md} and prints the table (val scores; test in the JSON)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from unic_cache import EvalOptions, UserError
from unic_cache.evaluation.agreement import HeadAgreement
from unic_cache.evaluation.evaluate import Evaluator, Features
from unic_cache.evaluation.images import EvalViews


@torch.inference_mode()
def representations(ev: Evaluator, run: str) -> dict[str, torch.Tensor]:
    """Every probed place of one run's student, for the evaluated rows: (rows, width) each."""
    agreement = HeadAgreement(run, ev.device)
    teachers = sorted({t.teacher for t in agreement.targets if t.kind == "summary"} & set(ev.cache.teacher_names()))
    student = agreement.student({t: tuple(ev.cache.teacher(t).stored_grid) for t in teachers})
    encoder = student.encoder
    views = EvalViews(ev.opts.data, ev.cache.keys, ev.cache.location, ev.cache.image_size, ev.rows,
                      int(agreement.config["img_size"]), ev.cache.plan.policy, ev.cache.digest, ev.cache.pixels)
    blocks = list(range(len(encoder.blocks)))
    out: dict[str, list[torch.Tensor]] = {}
    for images in views.batches(ev.opts.batch_size, 0, progress=False, device=ev.device):
        x = student.pixels(images)
        feats = encoder.forward_intermediates(x, indices=blocks, output_fmt="NLC", norm=False, intermediates_only=True,
                                              return_prefix_tokens=True)
        for i, (patch, prefix) in enumerate(feats):
            out.setdefault(f"block {i} cls", []).append(prefix[:, 0].float().cpu())
            out.setdefault(f"block {i} mean", []).append(patch.mean(1).float().cpu())
        out.setdefault("embedding", []).append(encoder.forward_head(encoder.forward_features(x), pre_logits=True).float().cpu())
        preds = student(images)
        for t in teachers:
            pred = preds[f"{t}/summary"].float().chunk(agreement.out_factor, dim=-1)[0]
            out.setdefault(f"head {t}", []).append(pred.cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}


def probe_all(ev: Evaluator, places: dict[str, torch.Tensor]) -> dict[str, dict[str, dict[str, float]]]:
    """{place: {task: {metric: score}}} with eval's linear and ridge probes."""
    return {place: ev.scores(Features(x), place, headline_only=True) for place, x in places.items()}


def position(data: str, cache: str, runs: list[tuple[str, str]], tasks: list[str] | None) -> dict:
    """{"teachers": {place: scores}, "runs": {name: [scores of each run]}}: every place probed, per run."""
    ev = Evaluator(EvalOptions(data=data, cache=cache, tasks=tasks, progress=False))
    image_tasks = [t for t in ev.tasks if not ev.labels.task(t).dense]
    ev.tasks = image_tasks
    teachers = probe_all(ev, {f"teacher {t}": ev.teacher_features(t).summary for t in ev.teacher_names()})
    found: dict[str, list] = {}
    for name, run in runs:
        found.setdefault(name, []).append(probe_all(ev, representations(ev, run)))
    return {"tasks": image_tasks, "teachers": teachers, "runs": found}


def headline(scores: dict[str, float], split: str) -> float:
    """The score a table shows: linear accuracy or R² (in points), on val or test."""
    metric = "linear" if "linear" in scores else "r2"
    return scores[f"{metric}_val" if split == "val" else metric]


def table(found: dict, split: str = "val") -> list[str]:
    """Markdown: a row per place (teachers', then each run name's), a column per task."""
    tasks = found["tasks"]
    lines = [f"| run | place | {' | '.join(tasks)} |", "|---|---|" + "---|" * len(tasks)]
    for place, scores in found["teachers"].items():
        lines.append(f"| - | {place} | " + " | ".join(f"{headline(scores[t], split):.1f}" for t in tasks) + " |")
    for name, per_seed in found["runs"].items():
        for place in per_seed[0]:
            cells = []
            for t in tasks:
                v = np.array([headline(seed[place][t], split) for seed in per_seed])
                cells.append(f"{v.mean():.1f}" + (f" ± {v.std(ddof=1):.1f}" if len(v) > 1 else ""))
            lines.append(f"| {name} ({len(per_seed)}) | {place} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="the labelled dataset the cache was made from")
    parser.add_argument("cache", help="its cache (teachers' view 0, the split's rows)")
    parser.add_argument("runs", nargs="+", help="NAME=RUN: a finished distill run (runs named alike are averaged)")
    parser.add_argument("--tasks", help="comma-separated image-level tasks (default: all)")
    parser.add_argument("--out", type=Path, help="folder for position.json and position.md")
    args = parser.parse_args()
    runs = [tuple(r.split("=", 1)) if "=" in r else (Path(r).name, r) for r in args.runs]
    try:
        found = position(args.data, args.cache, runs, args.tasks.split(",") if args.tasks else None)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    lines = ["Val (linear accuracy or R², points):", "", *table(found, "val"), "", "Test:", "", *table(found, "test")]
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "position.json").write_text(json.dumps(found, indent=1))
        (args.out / "position.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
