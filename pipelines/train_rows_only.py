"""Distil on the train rows only (or on another world), evaluate on the whole world: does seeing val/test images matter?

A pipeline's students are distilled on every image of its world (label-free, but val and test images
included). This script asks whether that flatters them: it copies the world's shards keeping only the rows
the split puts in train, extracts the pipeline's teachers on that copy with the pipeline's cache
options, distils the given arms (or the pipeline's) at the same number of steps (epochs scaled by the share
of train rows, unless an arm sets its own), and probes them with the whole world's labels and split,
teachers read from the pipeline's own cache, exactly as `unic-cache run` does. The pipeline's world,
teachers and whole-world cache are made first where they are missing; a second run resumes (finished
students are kept, an interrupted one continues).

With ``data.distill_on`` (shapes options of another world of the same generator: the distillation set) the
students distil on that world instead, all of it, at the arms' own epochs, and the pipeline's world is only
probed: its split gives the probes thousands of rows to fit and score on while the students see none of them
(the powered reuse grids, ``pipelines/reuse-powered*.yaml``); its cache then holds view 0 only (what eval reads).

Results accumulate: every finished student under ``<out>/train-rows/runs`` is evaluated (scores kept beside each
run), so calls that add arms (``--arm``) or seeds (``--seeds``) extend the table instead of rewriting it.

    python pipelines/train_rows_only.py pipelines/shapes-world1.yaml --arm unic= --arm views-1=views:1
    python pipelines/train_rows_only.py pipelines/reuse-powered.yaml --arm k8-e100 --arm online-e100 --seeds 0-9 --set distill.workers=0
    # writes <out>/train-rows/{data,cache.zarr,runs,train-rows.md,json,png} and prints the table
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
from pathlib import Path

import yaml

from unic_cache import load_config
from unic_cache.cache.sources import member_key, open_source
from unic_cache.distillation.exported import is_finished
from unic_cache.evaluation.labels import read_split
from unic_cache.pipeline import Pipeline


def copy_train_rows(data: Path, out: Path) -> tuple[int, int]:
    """Copy the tar shards of ``data`` into ``out`` keeping the train rows' members; return (train rows, rows)."""
    rule, kept, total = read_split(open_source(str(data))), 0, 0
    out.mkdir(parents=True)
    for shard in sorted(data.glob("*.tar")):
        with tarfile.open(shard) as src, tarfile.open(out / shard.name, "w") as dst:
            keyed = [(m, split[0]) for m in src.getmembers() if m.isfile() and (split := member_key(m.name))]
            keys = sorted({key for _, key in keyed})  # the key rule the index reads shards with
            train = {k for k, part in zip(keys, rule.rows(keys)) if part == 0}
            kept, total = kept + len(train), total + len(keys)
            for m, key in keyed:
                if key in train:
                    dst.addfile(m, src.extractfile(m))
    for name in ("split.json", "tasks.json"):
        shutil.copy(data / name, out / name)
    return kept, total


def _weights(out: Path, name: str, spec: dict) -> str | None:
    """The weights the pipeline extracted teacher ``name`` with: the file it trained, or the one it was given."""
    if "train" in spec:
        trained = out / "teachers" / f"{spec.get('same_as', name)}.safetensors"
        if not trained.exists():
            raise SystemExit(f"teacher {name} was not trained yet ({trained}); run the pipeline first")
        return str(trained)
    return spec.get("weights")


def probed_config(config: dict) -> dict:
    """The pipeline whose world the students are probed on: with ``data.distill_on`` its cache holds view 0 only."""
    return {**config, "cache": {**(config.get("cache") or {}), "views": 1}} if config["data"].get("distill_on") else config


def seed_list(spec: str) -> list[int]:
    """``0-9`` or ``0,1,5`` -> seeds."""
    seeds = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        seeds += list(range(int(first), int(last or first) + 1))
    return seeds


def parse_arms(specs: list[str], config: dict, parser: argparse.ArgumentParser) -> dict[str, dict]:
    """``--arm NAME`` (an arm of the pipeline) or ``--arm NAME=OPTION:VALUE,...`` (``NAME=``: the pipeline's recipe)."""
    pipeline_arms, arms = config.get("arms") or {}, {}
    for spec in specs:
        arm, given, options = spec.partition("=")
        if not given:
            if arm not in pipeline_arms:
                parser.error(f"--arm {arm}: the pipeline has no such arm; it has {', '.join(pipeline_arms) or 'none'}")
            arms[arm] = pipeline_arms[arm] or {}
            continue
        pairs = [o.split(":", 1) for o in options.split(",") if o]
        if not arm or any(len(p) != 2 for p in pairs):
            parser.error(f"--arm {spec!r}: write NAME (an arm of the pipeline) or NAME=OPTION:VALUE,...")
        arms[arm] = {k: yaml.safe_load(v) for k, v in pairs}
    return arms or pipeline_arms or {"student": {}}


def finished_runs(runs: Path, first: list[str]) -> dict[str, list[Path]]:
    """Every finished student under ``runs`` (``<arm>/seed-<n>``), arms in ``first``'s order then by name."""
    found: dict[str, list[Path]] = {}
    for folder in sorted(runs.glob("*/seed-*"), key=lambda p: (p.parent.name, int(p.name.split("-")[1]))):
        if is_finished(folder):
            found.setdefault(folder.parent.name, []).append(folder)
    order = [a for a in first if a in found] + sorted(a for a in found if a not in first)
    return {a: found[a] for a in order}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pipeline", help="a pipeline YAML (its world, teachers and whole-world cache are made first "
                                         "where they are not there yet)")
    parser.add_argument("--arm", action="append", default=[],
                        help="NAME (an arm of the pipeline) or NAME=OPTION:VALUE,... (distill options over the "
                             "pipeline's; NAME= for none); default: the pipeline's arms")
    parser.add_argument("--seeds", help="seeds to distil, e.g. 0-9 or 0,1,2 (default: the pipeline's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a pipeline key, as unic-cache run --set does (e.g. distill.workers=0)")
    args = parser.parse_args()
    config = load_config(args.pipeline, args.set)
    out, name = Path(config["out"]), "train-rows"
    other_world = config["data"].get("distill_on")
    whole = Pipeline(probed_config(config))
    data, folder = Path(whole.data()), out / name
    for teacher, spec in config["teachers"].items():  # trained, and extracted on the whole world, once
        whole.teacher(str(data), teacher, spec)
    arms = parse_arms(args.arm, config, parser)
    seeds = seed_list(args.seeds) if args.seeds else [int(s) for s in config.get("seeds") or [0]]
    teachers = {t: {k: v for k, v in spec.items() if k != "train"} | {"weights": _weights(out, t, spec)}
                for t, spec in config["teachers"].items()}
    subset = {**config, "name": name, "out": str(folder), "cache": {**(config.get("cache") or {}),
              "path": str(folder / "cache.zarr")}, "teachers": teachers}
    if other_world:  # the distillation set: another world of the generator, all of it, at the arms' epochs
        subset["data"] = {"shapes": other_world}
        distil = Pipeline(subset, progress=False)
        distil_data = Path(distil.data())
        rows, total = (open_source(str(path)).index(progress=False).n for path in (distil_data, data))
    else:
        if (folder / "data" / "split.json").exists():  # copied by an earlier run of this script (it is copied last)
            rows, total = (open_source(str(path)).index(progress=False).n for path in (folder / "data", data))
        elif folder.exists():
            raise SystemExit(f"{folder} exists but holds no finished copy of the train rows; delete it to run again")
        else:
            rows, total = copy_train_rows(data, folder / "data")
        subset["data"] = {"path": str(folder / "data")}
        subset["distill"] = {**config["distill"], "epochs": round(config["distill"]["epochs"] * total / rows)}  # same steps
        distil, distil_data = Pipeline(subset, progress=False), folder / "data"
    for teacher, spec in subset["teachers"].items():
        distil.teacher(str(distil_data), teacher, spec)
    for arm, options in arms.items():
        for seed in seeds:
            distil.distill_arm(str(distil_data), arm, options, seed)
    runs = finished_runs(folder / "runs" / name, [*(config.get("arms") or {}), *arms])
    results = whole.evaluate(str(data), runs)  # the whole world, teachers from its cache
    results.save(folder, name)
    where = f"distilled on another world of {rows} rows" if other_world else f"train rows: {rows} of {total}"
    print(f"{where}; probed on {total} rows; distill epochs {subset['distill']['epochs']} (the pipeline's: "
          f"{config['distill']['epochs']})\n")
    print(results.markdown())


if __name__ == "__main__":
    main()
