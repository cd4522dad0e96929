"""The reuse curve: the gap of students distilled from K cached views to the online student, against the reuse ratio.

Reads the results ``train_rows_only.py`` wrote for the reuse grids (``pipelines/reuse.yaml``,
``pipelines/reuse-world1.yaml``): arms ``k<K>-e<E>`` (K cached views, E epochs; ``-<remedy>`` after it for a
remedy arm) beside ``online-e<E>``. For each world, schedule and arm: the reuse ratio E / K (how many times each
cached view is replayed) and the gap to the online arm of the same schedule, per seed (seed i against online seed
i: the same initialisation and data order, so the gap is paired), on the val average (the choice) and the test
average (reported), over the tasks the world's teachers learn: a task is kept when its best teacher scores more
than ``MARGIN`` points, and more than ``SPREADS`` times a reference's own seed spread, above each reference of
``dense_references.py --all-tasks --seeds 0-4`` (raw pixels, an untrained student) on val and on test. Gaps are
given as mean and 95 % interval (Student's t over the paired seeds), with the paired seeds an interval of ±1 point
would need at that spread (a pilot's sizing); beside them the label-free gap: the heads'
mean cosine to the teachers' cached targets on val rows, arm minus online (``evaluation.agreement``), and the
arm's own overfitting to its cached targets (cosine on the rows it distilled on minus on val rows), and the same
cosines for every student, online ones included. The limit is
the largest reuse ratio at which every arm at or below it, in every world and schedule given, has its val
interval above ``-TOLERANCE``. Prints the tasks left out, a markdown table and the limit; writes a plot.

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
SPREADS = 3.0  # ... and how many of a reference's seed standard deviations (fixed before the powered grids ran)
ARM = re.compile(r"k(?P<views>\d+)-e(?P<epochs>\d+)(?:-(?P<remedy>[\w-]+))?")


def average(results: Results, model: str, tasks: list[str], split: str) -> np.ndarray:
    """Per seed, the mean headline score over ``tasks`` on ``split``."""
    return np.mean([results.values(model, t, results.headline(t, split)) for t in tasks], axis=0)


def unlearnt(results: Results, references: Results) -> list[str]:
    """The tasks on which no teacher is above every reference by ``MARGIN`` points and by ``SPREADS`` times that
    reference's seed standard deviation, on val and on test."""
    out = []
    for task in results.tasks:
        for split in ("val", "test"):
            metric = results.headline(task, split)
            best = max(float(results.values(t, task, metric).mean()) for t in results.of_kind("teacher"))
            bars = [float(v.mean()) + max(MARGIN, SPREADS * (v.std(ddof=1) if len(v) > 1 else 0.0))
                    for v in (references.values(r, task, metric) for r in references.models)]
            if not best > max(bars):
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
        cosine = {m: head_cosine(results, m) for m in (model, online)}
        seeds = min(len(cosine[model]["val"]), len(cosine[online]["val"]))
        row["cosine"] = 100 * (cosine[model]["val"][:seeds] - cosine[online]["val"][:seeds])
        row["overfit"] = 100 * (cosine[model]["distilled"] - cosine[model]["val"])
        rows.append(row)
    return sorted(rows, key=lambda r: (r["remedy"], r["epochs"], r["views"]))


def head_cosine(results: Results, model: str) -> dict[str, np.ndarray]:
    """Per seed, the heads' mean cosine to the teachers' targets over every target, on distilled and val rows
    ([nan] when the results were made before eval measured it)."""
    targets = list(results.models[model].get("agreement", {})) or ["-"]
    return {g: np.mean([results.agreement(model, t, f"cosine_{g}") for t in targets], axis=0) for g in ("distilled", "val")}


def interval(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the 95 % Student's t interval of ``values`` (nan half-width for one value)."""
    from scipy.stats import t

    n = len(values)
    half = t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
    return float(values.mean()), float(half)


def seeds_needed(values: np.ndarray, half_width: float = 1.0) -> int | None:
    """The fewest paired seeds whose 95 % interval would be at most ``half_width`` points wide on each side, were
    the gaps as spread as ``values`` (a pilot's; None for fewer than 2 values)."""
    from scipy.stats import t

    if len(values) < 2:
        return None
    sd = values.std(ddof=1)
    return next(n for n in range(2, 10_000) if t.ppf(0.975, n - 1) * sd / np.sqrt(n) <= half_width)


def lower_bound(values: np.ndarray) -> float:
    """The lower end of the 95 % interval of the mean of ``values``."""
    mean, half = interval(values)
    return mean - half


def cell(values: np.ndarray, sign: str = "+", digits: int = 1) -> str:
    """Mean ± half-width of the 95 % interval (the mean alone for one value); ``sign=""`` for a level, not a gap."""
    mean, half = interval(values)
    return f"{mean:{sign}.{digits}f}" if np.isnan(half) else f"{mean:{sign}.{digits}f} ± {half:.{digits}f}"


def limit(curves: dict[str, list[dict]]) -> tuple[float | None, list[str]]:
    """The largest reuse ratio at which every plain arm (no remedy) at or below it, in every world and schedule,
    has its val interval above ``-TOLERANCE``; and the arms that decided it (the first failure above it)."""
    by_reuse: dict[float, list[tuple[str, dict]]] = {}
    for world, rows in curves.items():
        for r in rows:
            if not r["remedy"]:
                by_reuse.setdefault(r["reuse"], []).append((world, r))
    best = None
    for reuse in sorted(by_reuse):
        failed = [f"world {w} {r['arm']} ({reuse:g} replays): {cell(r['val'])}" for w, r in by_reuse[reuse]
                  if not lower_bound(r["val"]) >= -TOLERANCE]  # nan (one seed) fails
        if failed:
            return best, failed
        best = reuse
    return best, []


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
            ax.errorbar(x, [r["val"].mean() for r in line], yerr=[interval(r["val"])[1] for r in line], marker="o",
                        capsize=3, label=f"world {world}, {epochs} epochs")
        for r in (r for r in rows if r["remedy"]):
            ax.errorbar([r["reuse"]], [r["val"].mean()], yerr=[interval(r["val"])[1]], marker="*", markersize=11,
                        capsize=3, linestyle="none", label=f"world {world}, {r['arm']}")
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(-TOLERANCE, color="grey", lw=0.8, ls="--", label=f"{TOLERANCE:g} points below online")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("reuse ratio: epochs / cached views (times each cached view is replayed)")
    ax.set_ylabel("val average, cached minus online (points)")
    ax.set_title("Students distilled from K cached views against the online student (95 % intervals)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", help="WORLD=path/to/train-rows.json:path/to/references.json")
    parser.add_argument("--plot", type=Path, help="where to write the plot (PNG)")
    args = parser.parse_args()
    curves, left_out, worlds = {}, {}, {}
    for spec in args.results:
        world, _, paths = spec.partition("=")
        results, references = (Results.load(p) for p in paths.split(":"))
        worlds[world] = results
        left_out[world] = unlearnt(results, references)
        curves[world] = gaps(results, set(left_out[world]))
        print(f"world {world}: left out (no teacher {MARGIN:g} points above the references on val and test): "
              f"{', '.join(left_out[world]) or 'none'}")
    print()
    print("| world | arm | cached views | epochs | reuse (epochs / views) | seeds | val gap to online | "
          "test gap to online | seeds for ±1 (val) | heads' val cosine gap (x100) | overfitting (x100) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for world, rows in curves.items():
        for r in rows:
            print(f"| {world} | {r['arm']} | {r['views']} | {r['epochs']} | {r['reuse']:g} | {len(r['val'])} | "
                  f"{cell(r['val'])} | {cell(r['test'])} | {seeds_needed(r['val']) or '-'} | {cell(r['cosine'])} | "
                  f"{cell(r['overfit'])} |")
    print("\nGaps in points of the average over each world's learnt tasks: mean ± half-width of the 95 % interval "
          "(Student's t) over seeds of (arm seed i) - (online seed i), paired by seed; seeds for ±1: how many "
          "paired seeds a 95 % interval of ±1 point needs at the spread these seeds show. Heads' cosine: the mean cosine "
          "of the student's heads to its teachers' cached targets on val rows, arm minus online; overfitting: the "
          "arm's cosine on the rows it distilled on minus on val rows (both x100).")
    print("\n| world | arm | seeds | heads' cosine on val rows (x100) | on the rows distilled on | overfitting (x100) |")
    print("|---|---|---|---|---|---|")
    for world, results in worlds.items():
        for model in results.of_kind("student"):
            cosine = {g: 100 * v for g, v in head_cosine(results, model).items()}
            print(f"| {world} | {model} | {len(cosine['val'])} | {cell(cosine['val'], '')} | {cell(cosine['distilled'], '')} | "
                  f"{cell(cosine['distilled'] - cosine['val'])} |")
    print("\nLabel-free, every student (online ones included): the heads' mean cosine to the teachers' cached targets "
          "(view 0), mean ± half-width of the 95 % interval over seeds.")
    reuse, failed = limit(curves)
    print(f"\nLimit: {'none' if reuse is None else f'{reuse:g} replays'} (every arm at or below it within "
          f"{TOLERANCE:g} points of online on val, 95 % interval, in worlds {', '.join(curves)})"
          + (f"; first failure above it: {failed[0]}" if failed else "; no arm failed"))
    if args.plot:
        plot(curves, args.plot)


if __name__ == "__main__":
    main()
