"""The reuse curve: the gap of students distilled from K cached views to the online student, against the reuse ratio.

Reads the results ``train_rows_only.py`` wrote for the reuse grids (``pipelines/reuse.yaml``,
``pipelines/reuse-world1.yaml``): arms ``k<K>-e<E>`` (K cached views, E epochs; ``-<remedy>`` after it for a
remedy arm) beside ``online-e<E>``. For each world, schedule and arm: the reuse ratio E / K (how many times each
cached view is replayed) and the gap to the online arm of the same schedule, per seed (seed i against online seed
i), on the val average (the choice) and the test average (reported), over the tasks the world's teachers learn:
a task is kept when its best teacher scores at least ``MARGIN`` points above both references of
``dense_references.py --all-tasks`` (raw pixels, an untrained student) on val and on test. Prints the tasks left
out, a markdown table, and writes a plot of the val gap against the ratio.

    python pipelines/reuse_curve.py A=runs/reuse/train-rows/train-rows.json:runs/reuse/references/references.json \\
        B=runs/reuse-world1/train-rows/train-rows.json:runs/reuse-world1/references/references.json --plot curve.png
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from unic_cache.evaluation.results import TOLERANCE, Results

MARGIN = 3.0  # points: how far a teacher must be above the references for a task to count as learnt
ARM = re.compile(r"k(?P<views>\d+)-e(?P<epochs>\d+)(?:-(?P<remedy>[\w-]+))?")


def average(results: Results, model: str, tasks: list[str], split: str) -> np.ndarray:
    """Per seed, the mean headline score over ``tasks`` on ``split``."""
    return np.mean([results.values(model, t, results.headline(t, split)) for t in tasks], axis=0)


def unlearnt(results: Results, references: Results) -> list[str]:
    """The tasks on which no teacher is ``MARGIN`` points above every reference, on val and on test."""
    out = []
    for task in results.tasks:
        for split in ("val", "test"):
            metric = results.headline(task, split)
            best = max(float(results.values(t, task, metric).mean()) for t in results.of_kind("teacher"))
            ref = max(float(references.values(r, task, metric).mean()) for r in references.models)
            if not best >= ref + MARGIN:
                out.append(task)
                break
    return out


def gaps(results: Results, leave_out: set[str]) -> list[dict]:
    """One row per cached arm: views, epochs, remedy, reuse ratio, and the per-seed gaps to online on val and test."""
    tasks = [t for t in results.tasks if t not in leave_out]
    rows = []
    for model in results.of_kind("student"):
        match = ARM.fullmatch(model)
        online = f"online-e{match['epochs']}" if match else None
        if not match or online not in results.models:
            continue
        row = {"arm": model, "views": int(match["views"]), "epochs": int(match["epochs"]), "remedy": match["remedy"] or ""}
        row["reuse"] = row["epochs"] / row["views"]
        for split in ("val", "test"):
            mine, ref = average(results, model, tasks, split), average(results, online, tasks, split)
            seeds = min(len(mine), len(ref))
            row[split] = mine[:seeds] - ref[:seeds]
        rows.append(row)
    return sorted(rows, key=lambda r: (r["remedy"], r["epochs"], r["views"]))


def cell(values: np.ndarray) -> str:
    return f"{values.mean():+.1f} ± {values.std(ddof=1):.1f}" if len(values) > 1 else f"{values.mean():+.1f}"


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    """Val gap (mean and spread over seeds) against the reuse ratio, a line per world and schedule; remedy arms
    marked apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for world, rows in curves.items():
        for epochs in sorted({r["epochs"] for r in rows}):
            line = [r for r in rows if r["epochs"] == epochs and not r["remedy"]]
            x = [r["reuse"] for r in line]
            ax.errorbar(x, [r["val"].mean() for r in line], yerr=[r["val"].std(ddof=1) for r in line], marker="o",
                        capsize=3, label=f"world {world}, {epochs} epochs")
        for r in (r for r in rows if r["remedy"]):
            ax.errorbar([r["reuse"]], [r["val"].mean()], yerr=[r["val"].std(ddof=1)], marker="*", markersize=11,
                        capsize=3, linestyle="none", label=f"world {world}, {r['arm']}")
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(-TOLERANCE, color="grey", lw=0.8, ls="--", label=f"{TOLERANCE:g} points below online")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("reuse ratio: epochs / cached views (times each cached view is replayed)")
    ax.set_ylabel("val average, cached minus online (points)")
    ax.set_title("Students distilled from K cached views against the online student (3 seeds)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", help="WORLD=path/to/train-rows.json:path/to/references.json")
    parser.add_argument("--plot", type=Path, help="where to write the plot (PNG)")
    args = parser.parse_args()
    curves, left_out = {}, {}
    for spec in args.results:
        world, _, paths = spec.partition("=")
        results, references = (Results.load(p) for p in paths.split(":"))
        left_out[world] = unlearnt(results, references)
        curves[world] = gaps(results, set(left_out[world]))
        print(f"world {world}: left out (no teacher {MARGIN:g} points above the references on val and test): "
              f"{', '.join(left_out[world]) or 'none'}")
    print()
    print("| world | arm | cached views | epochs | reuse (epochs / views) | val gap to online | test gap to online |")
    print("|---|---|---|---|---|---|---|")
    for world, rows in curves.items():
        for r in rows:
            print(f"| {world} | {r['arm']} | {r['views']} | {r['epochs']} | {r['reuse']:g} | {cell(r['val'])} | "
                  f"{cell(r['test'])} |")
    print("\nGaps in points of the average over each world's learnt tasks, mean ± std over seeds of (arm seed i) - "
          "(online seed i).")
    if args.plot:
        plot(curves, args.plot)


if __name__ == "__main__":
    main()
