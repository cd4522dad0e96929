"""Per-sample labels of a dataset, aligned with the cache's rows, and the dataset's one train/val/test split.

Labels come from the dataset itself: a webdataset sample's ``.json`` member (one value per task, as
the shapes world writes) or ``.cls`` member (one class index), a parquet row's integer and float columns
(a ``ClassLabel`` column's classes are its names), or, for an image folder, the sample's parent folder
(one class per folder). Which tasks exist and their kinds come from a ``tasks.json`` next
to the shards when there is one; otherwise integer labels are classes and the rest regression targets.
A dense task (``"dense": true`` in ``tasks.json``) has a per-pixel label map per sample: a grayscale PNG
member ``<key>.<task>.png`` of class indices (255: ignored), as large as the sample's image.

The split is the dataset's, recorded once beside its shards in ``split.json`` (``{"seed": S,
"fractions": [train, val]}``; without the file, seed 0 and 60/20/20): train-teacher, eval and the
pipelines all read it, so a teacher never trains on the rows eval tests on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..cache.sources import Source, key_bytes

SPLITS = ("train", "val", "test")
IGNORE = 255  # a label-map pixel that belongs to no class


@dataclass(frozen=True)
class Task:
    """One label: a classification (``classes`` > 0) or a regression target (``classes`` == 0)."""

    name: str
    classes: int
    dense: bool = False  # a per-pixel label map per sample (classes > 0)

    @property
    def is_classification(self) -> bool:
        return self.classes > 0


@dataclass
class Labels:
    """Tasks and, per task, one value per row (classes as int64 with -1 for missing, targets float64 with NaN)."""

    tasks: list[Task]
    values: dict[str, np.ndarray]  # image-level tasks only
    n: int  # rows
    maps: dict[str, dict[int, bytes]] = field(default_factory=dict)  # dense task -> row -> PNG bytes

    def task(self, name: str) -> Task:
        for task in self.tasks:
            if task.name == name:
                return task
        raise UserError(f"the dataset has no task {name!r}; tasks: {', '.join(t.name for t in self.tasks)}")

    def known(self, name: str) -> np.ndarray:
        """Rows that carry a value (or, for a dense task, a label map) for task ``name``."""
        if self.task(name).dense:
            rows = np.zeros(self.n, bool)
            rows[list(self.maps[name])] = True
            return rows
        v = self.values[name]
        return v >= 0 if self.task(name).is_classification else ~np.isnan(v)


@dataclass(frozen=True)
class SplitRule:
    """Row -> train (0) / val (1) / test (2) from a hash of (seed, key): stable when rows are added."""

    seed: int = 0
    fractions: tuple[float, float] = (0.6, 0.2)  # train, val; test is the rest

    def rows(self, keys: np.ndarray) -> np.ndarray:
        u = np.array([int.from_bytes(hashlib.blake2b(key_bytes(f"{self.seed}:{k}"), digest_size=8).digest(), "little") / 2.0**64
                      for k in keys])
        train, val = self.fractions
        return np.where(u < train, 0, np.where(u < train + val, 1, 2)).astype(np.int8)

    def to_dict(self) -> dict:
        return {"seed": self.seed, "fractions": list(self.fractions)}


def write_split(folder: str | Path, rule: SplitRule) -> None:
    """Record ``rule`` as the split of the dataset in ``folder`` (``split.json``)."""
    Path(folder, "split.json").write_text(json.dumps(rule.to_dict()))


def _beside_shards(source: Source, name: str) -> str:
    """``name`` in the dataset's folder (``Source.folder``)."""
    return f"{source.folder}/{name}"


def read_split(source: Source) -> SplitRule:
    """The dataset's split: ``split.json`` beside its shards, else the default rule."""
    path = _beside_shards(source, "split.json")
    if not source.fs.exists(path):
        return SplitRule()
    try:
        with source.fs.open(path, "r") as f:
            d = json.load(f)
        rule = SplitRule(int(d["seed"]), tuple(float(v) for v in d["fractions"]))
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a split record; it needs {{\"seed\": S, \"fractions\": [train, val]}}") from None
    if len(rule.fractions) != 2 or min(rule.fractions) <= 0 or sum(rule.fractions) >= 1:
        raise UserError(f"{path}: fractions must be two positive numbers (train, val) that sum to less than 1")
    return rule


def _declared_tasks(source: Source) -> list[Task] | None:
    """Tasks from ``tasks.json`` in the folder of the first shard, if present."""
    path = _beside_shards(source, "tasks.json")
    if not source.fs.exists(path):
        return None
    with source.fs.open(path, "r") as f:
        return [Task(t["name"], int(t["classes"]), bool(t.get("dense", False))) for t in json.load(f)]


def read_labels(source: Source, keys: np.ndarray) -> Labels:
    """Labels for the samples ``keys`` (the cache's row order) of ``source``: the tasks of its ``tasks.json``, else
    those its records hold (integer values from 0 a classification, other numbers a regression)."""
    tasks = _declared_tasks(source) if source.tasks_file else None
    found, maps, classes = source.label_records({str(k): i for i, k in enumerate(keys)},
                                                {t.name for t in tasks or () if t.dense})
    if not found:
        raise UserError(f"no labels in {source.spec}: samples need a .json (task -> value) or .cls member, or parquet "
                        "rows an integer label column")
    if tasks is None:
        names = sorted({k for d in found.values() for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        tasks = []
        for name in names:
            vals = [d[name] for d in found.values() if name in d]
            is_class = all(isinstance(v, int) and v >= 0 for v in vals)
            tasks.append(Task(name, classes.get(name, max(vals) + 1) if is_class else 0))
    values = {}
    for task in tasks:
        if task.dense:
            continue
        if task.is_classification:
            arr = np.full(len(keys), -1, np.int64)
        else:
            arr = np.full(len(keys), np.nan)
        for row, d in found.items():
            if task.name in d:
                arr[row] = d[task.name]
        values[task.name] = arr
    return Labels(tasks, values, len(keys), maps)
