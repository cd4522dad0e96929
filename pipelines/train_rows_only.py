"""Distil on the train rows only, evaluate on the whole world: does seeing val/test images matter?

A pipeline's students are distilled on every image of its world (label-free, but val and test images
included). This script asks whether that flatters them: it copies the world's shards keeping only the rows
the split puts in train, extracts the pipeline's teachers on that copy with the pipeline's cache
options, distils the given arms (or the pipeline's) at the same number of steps (epochs scaled by the share
of train rows, unless an arm sets its own), and probes them with the whole world's labels and split,
teachers read from the pipeline's own cache, exactly as `unic-cache run` does. The pipeline's world,
teachers and whole-world cache are made first where they are missing; a second run resumes (finished
students are kept, an interrupted one continues).

    python pipelines/train_rows_only.py pipelines/shapes-world1.yaml --arm unic= --arm views-1=views:1
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pipeline", help="a pipeline YAML (its world, teachers and whole-world cache are made first "
                                         "where they are not there yet)")
    parser.add_argument("--arm", action="append", default=[],
                        help="NAME=OPTION:VALUE,... distill options of an arm over the pipeline's (NAME= for none); "
                             "default: the pipeline's arms")
    args = parser.parse_args()
    config = load_config(args.pipeline)
    out, name = Path(config["out"]), "train-rows"
    whole = Pipeline(config)
    data, folder = Path(whole.data()), out / name
    for teacher, spec in config["teachers"].items():  # trained, and extracted on the whole world, once
        whole.teacher(str(data), teacher, spec)
    arms = {}
    for spec in args.arm:
        arm, _, options = spec.partition("=")
        pairs = [o.split(":", 1) for o in options.split(",") if o]
        if not arm or any(len(p) != 2 for p in pairs):
            parser.error(f"--arm {spec!r}: write NAME=OPTION:VALUE,... (NAME= for the pipeline's recipe)")
        arms[arm] = {k: yaml.safe_load(v) for k, v in pairs}
    arms = arms or config.get("arms") or {"student": {}}
    teachers = {t: {k: v for k, v in spec.items() if k != "train"} | {"weights": _weights(out, t, spec)}
                for t, spec in config["teachers"].items()}
    if (folder / "data" / "split.json").exists():  # copied by an earlier run of this script (it is copied last)
        rows, total = (open_source(str(path)).index(progress=False).n for path in (folder / "data", data))
    elif folder.exists():
        raise SystemExit(f"{folder} exists but holds no finished copy of the train rows; delete it to run again")
    else:
        rows, total = copy_train_rows(data, folder / "data")
    subset = {**config, "name": name, "out": str(folder), "data": {"path": str(folder / "data")},
              "cache": {**(config.get("cache") or {}), "path": str(folder / "cache.zarr")}, "teachers": teachers}
    subset["distill"] = {**config["distill"], "epochs": round(config["distill"]["epochs"] * total / rows)}  # same steps
    distil = Pipeline(subset, progress=False)
    for teacher, spec in subset["teachers"].items():
        distil.teacher(str(folder / "data"), teacher, spec)
    runs = {arm: [distil.distill_arm(str(folder / "data"), arm, o, int(s)) for s in config.get("seeds") or [0]]
            for arm, o in arms.items()}
    results = Pipeline(config, progress=False).evaluate(str(data), runs)  # the whole world, teachers from its cache
    results.save(folder, name)
    print(f"train rows: {rows} of {total}; distill epochs {subset['distill']['epochs']} (the pipeline's: "
          f"{config['distill']['epochs']})\n")
    print(results.markdown())


if __name__ == "__main__":
    main()
