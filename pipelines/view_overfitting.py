"""Overfitting to replayed views against overfitting to images: the heads' agreement on fresh views, per arm.

For the finished students of the given arms of a pipeline's grid (``<out>/train-rows/runs/train-rows/<arm>/seed-<n>``,
distilled by ``train_rows_only.py``), the label-free groups of ``evaluation.agreement`` are measured on the
pipeline's probed world (the teachers rebuilt from their weights for the fresh views), each run once: kept in
``<out>/view-overfitting.json`` while its student and eval's format are unchanged. Printed per arm, over the
teachers' targets (their mean cosine, x100; mean ± 95 % t interval over seeds):

- replay: cosine on the distilled rows' cached views 1-4 (those it trained on; none for one view: '–') minus on 4
  fresh views of them (overfitting to the views it replayed; an online student saw neither: its replay is the
  control, about 0 within the noise of the views drawn);
- images: cosine on fresh views of the distilled rows minus on fresh views of val rows (overfitting to its images);
- both paired with the online arm of the same epochs (seed i against seed i: the same views and rows are compared).

    python pipelines/view_overfitting.py pipelines/reuse-powered.yaml --arm online-e100 --arm k16-e100 --arm k1-e100
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from unic_cache import load_config
from unic_cache.cache.sources import open_source
from unic_cache.cache.store import Cache
from unic_cache.distillation.exported import student_weights
from unic_cache.distillation.run_files import write_atomic
from unic_cache.evaluation.agreement import HeadAgreement
from unic_cache.evaluation.evaluate import EVAL_FORMAT
from unic_cache.evaluation.labels import read_split
from unic_cache.pipeline import Pipeline

from reuse_curve import cell
from train_rows_only import finished_runs, probed_config

MEASURES = {"replay": ("distilled_cached", "distilled_fresh"), "images": ("distilled_fresh", "val_fresh")}


def interval(values: np.ndarray) -> str:
    """``reuse_curve.cell`` to two decimals (x100 already applied); "–" where nothing was measured."""
    return "–" if not len(values) or np.isnan(values).any() else cell(values, digits=2)


def measure(report: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per measure of ``MEASURES`` (and each group's cosine), x100, averaged over the run's targets."""
    targets = list(report.values())
    groups = {g for pair in MEASURES.values() for g in pair}
    out = {g: 100 * float(np.mean([t.get(f"cosine_{g}", np.nan) for t in targets])) for g in groups}  # nan: not measured
    return {**out, **{m: out[a] - out[b] for m, (a, b) in MEASURES.items()}}


def table(found: dict[str, dict[int, dict[str, float]]]) -> list[str]:
    """Markdown rows per arm (``measure``'s values per seed number): the fresh-view cosines, both overfittings, and
    both paired with the online arm of the same epochs (``online-e<E>`` for ``k<K>-e<E>...``) on the seeds both have."""
    lines = ["| arm | seeds | fresh views, distilled rows | fresh views, val rows | replay overfitting | image overfitting | "
             "replay minus online's (paired seeds) | images minus online's (paired seeds) |", "|---|---|---|---|---|---|---|---|"]
    for arm, seeds in found.items():
        online = found.get(re.sub(r"^k\d+-", "online-", arm), {}) if not arm.startswith("online") else {}
        paired = sorted(set(seeds) & set(online))
        value = {m: np.array([seeds[s][m] for s in sorted(seeds)]) for m in (*MEASURES, "distilled_fresh", "val_fresh")}
        diff = {m: np.array([seeds[s][m] - online[s][m] for s in paired]) for m in MEASURES}
        lines.append(f"| {arm} | {len(seeds)} | {interval(value['distilled_fresh'])} | {interval(value['val_fresh'])} | "
                     f"{interval(value['replay'])} | {interval(value['images'])} | "
                     + " | ".join(f"{interval(diff[m])} ({len(paired)})" if paired and not np.isnan(diff[m]).any() else "–"
                                  for m in MEASURES) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pipeline", help="a pipeline YAML whose grid train_rows_only.py distilled")
    parser.add_argument("--arm", action="append", required=True, help="an arm of the grid (repeat); online-e<E> arms "
                                                                       "are the pairs of the arms at E epochs")
    args = parser.parse_args()
    config = load_config(args.pipeline, [])
    out = Path(config["out"])
    whole = Pipeline(probed_config(config), progress=False)
    data, cache = whole.data(), Cache.open(whole.cache_url)
    rows = np.flatnonzero(~cache.bad)
    split = read_split(open_source(data)).rows(cache.keys)[rows]
    kept_file = out / "view-overfitting.json"
    kept = json.loads(kept_file.read_text()) if kept_file.exists() else {}
    runs = finished_runs(out / "train-rows" / "runs" / "train-rows", args.arm)
    found: dict[str, dict[int, dict[str, float]]] = {}
    for arm in args.arm:
        for folder in runs.get(arm, []):
            name, stamp = f"{arm}/{folder.name}", student_weights(folder).stat().st_mtime
            if kept.get(name, {}).get("record") != [stamp, EVAL_FORMAT]:  # a new student, or measured another way
                kept[name] = {"record": [stamp, EVAL_FORMAT], "report": HeadAgreement(folder).report(cache, data, split, rows)}
                write_atomic(kept_file, json.dumps(kept, indent=1))
                print(f"measured {name}", flush=True)
            found.setdefault(arm, {})[int(folder.name.split("-")[1])] = measure(kept[name]["report"])
    print(f"\n{config['out']}: label-free cosine of the heads to the teachers' targets (x100, mean ± 95 % t over seeds)\n")
    print("\n".join(table(found)))


if __name__ == "__main__":
    main()
