"""Per-sample labels of a dataset, aligned with the cache's rows, and the fixed train/val/test split.

Labels come from the dataset itself: a webdataset sample's ``.json`` member (one value per task, as
the shapes world writes) or ``.cls`` member (one class index), or, for an image folder, the sample's
parent folder (one class per folder). Which tasks exist and their kinds come from a ``tasks.json`` next
to the shards when there is one; otherwise integer labels are classes and the rest regression targets.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..cache.sources import FolderSource, Source, KEY_RE

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Task:
    """One label: a classification (``classes`` > 0) or a regression target (``classes`` == 0)."""

    name: str
    classes: int

    @property
    def is_classification(self) -> bool:
        return self.classes > 0


@dataclass
class Labels:
    """Tasks and, per task, one value per row (classes as int64 with -1 for missing, targets float64 with NaN)."""

    tasks: list[Task]
    values: dict[str, np.ndarray]

    def task(self, name: str) -> Task:
        for task in self.tasks:
            if task.name == name:
                return task
        raise UserError(f"the dataset has no task {name!r}; tasks: {', '.join(t.name for t in self.tasks)}")

    def known(self, name: str) -> np.ndarray:
        """Rows that carry a value for task ``name``."""
        v = self.values[name]
        return v >= 0 if self.task(name).is_classification else ~np.isnan(v)


def split_rows(keys: np.ndarray, seed: int = 0, fractions: tuple[float, float] = (0.6, 0.2)) -> np.ndarray:
    """0 (train), 1 (val) or 2 (test) per row, from a hash of (seed, key): stable when rows are added."""
    u = np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest(), "little") / 2.0**64
                  for k in keys])
    return np.where(u < fractions[0], 0, np.where(u < fractions[0] + fractions[1], 1, 2)).astype(np.int8)


def _tar_labels(source: Source, rows: dict[str, int]) -> dict[int, dict]:
    """Row -> label dict, read from the ``.json`` / ``.cls`` members of every shard."""
    found: dict[int, dict] = {}
    for shard in source.shards:
        with source.fs.open(shard.url, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for info in tar:
                m = KEY_RE.match(info.name) if info.isfile() else None
                if m is None or m.group(1) not in rows or m.group(2).lower() not in ("json", "cls"):
                    continue
                raw = tar.extractfile(info).read()
                try:
                    value = json.loads(raw) if m.group(2).lower() == "json" else {"class": int(raw.strip())}
                except (ValueError, UnicodeDecodeError):
                    raise UserError(f"unreadable label member {info.name} in {shard.name}") from None
                if isinstance(value, dict):
                    found.setdefault(rows[m.group(1)], {}).update(value)
    return found


def _declared_tasks(source: Source) -> list[Task] | None:
    """Tasks from ``tasks.json`` in the folder of the first shard, if present."""
    folder = source.shards[0].url.rsplit("/", 1)[0]
    path = f"{folder}/tasks.json"
    if not source.fs.exists(path):
        return None
    with source.fs.open(path, "r") as f:
        return [Task(t["name"], int(t["classes"])) for t in json.load(f)]


def read_labels(source: Source, keys: np.ndarray) -> Labels:
    """Labels for the samples ``keys`` (the cache's row order) of ``source``."""
    if isinstance(source, FolderSource):
        names = [s.name for s in source.shards]
        if len(names) < 2:
            raise UserError(f"{source.spec} has no class folders; put each class's images in its own folder")
        folder = {name: i for i, name in enumerate(names)}
        classes = np.array([folder[k.rsplit("/", 1)[0] if "/" in k else ""] for k in keys], np.int64)
        return Labels([Task("class", len(names))], {"class": classes})
    rows = {str(k): i for i, k in enumerate(keys)}
    found = _tar_labels(source, rows)
    if not found:
        raise UserError(f"no labels in {source.spec}: samples need a .json (task -> value) or .cls member")
    tasks = _declared_tasks(source)
    if tasks is None:
        names = sorted({k for d in found.values() for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        tasks = []
        for name in names:
            vals = [d[name] for d in found.values() if name in d]
            is_class = all(isinstance(v, int) and v >= 0 for v in vals)
            tasks.append(Task(name, max(vals) + 1 if is_class else 0))
    values = {}
    for task in tasks:
        if task.is_classification:
            arr = np.full(len(keys), -1, np.int64)
        else:
            arr = np.full(len(keys), np.nan)
        for row, d in found.items():
            if task.name in d:
                arr[row] = d[task.name]
        values[task.name] = arr
    return Labels(tasks, values)
