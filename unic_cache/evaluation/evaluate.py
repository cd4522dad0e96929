"""``unic-cache eval``: probe the student and every cached teacher on a labelled dataset's tasks.

Teacher features are the cached summary embeddings of view 0 (the eval view), so no teacher is loaded;
a student's are its exported encoder's pooled embedding of the same view. Rows are split once into
train / val / test by a hash of their key (``labels.split_rows``): probes fit on train, choose their
regularisation on val and report test. Per task: kNN and linear-probe accuracy plus k-means NMI for a
classification, ridge R² for a regression target.
"""

from __future__ import annotations

import numpy as np
import torch

from ..cache.sources import open_source
from ..cache.store import Cache
from ..errors import UserError
from ..models.pixels import PixelNorm
from ..models.student import load_exported, pooled
from ..runtime import pick_device
from .images import EvalViews
from .labels import Labels, read_labels, split_rows
from .options import EvalOptions
from .probes import kmeans_nmi, knn_accuracy, linear_probe, ridge_r2
from .results import Results


class Evaluator:
    """Labels, split and cache opened once; ``scores(features)`` probes one model's features."""

    def __init__(self, opts: EvalOptions):
        opts.check()
        self.opts = opts
        self.device = pick_device(opts.device)
        self.cache = Cache.open(opts.cache)
        source = open_source(opts.data)
        self.cache.check_source(source)
        self.labels: Labels = read_labels(source, self.cache.keys)
        self.tasks = opts.tasks or [t.name for t in self.labels.tasks]
        for t in self.tasks:
            self.labels.task(t)
        self.rows = np.flatnonzero(~self.cache.bad)  # features are computed for these rows, in this order
        self.split = split_rows(self.cache.keys, opts.split_seed)[self.rows]
        if not all((self.split == s).any() for s in range(3)):
            raise UserError(f"{len(self.rows)} samples are too few for a train/val/test split")

    def teacher_names(self) -> list[str]:
        available = self.cache.teacher_names()
        names = self.opts.teachers if self.opts.teachers is not None else available
        for name in names:
            if name not in available or not self.cache.teacher(name).complete:
                raise UserError(f"teacher {name!r} is not complete in {self.opts.cache}; extract it first")
        return names

    def teacher_features(self, name: str) -> torch.Tensor:
        """Cached summary embeddings of view 0 for the evaluated rows."""
        summary = self.cache.teacher(name).read("summary", slice(0, self.cache.n), 0)
        return torch.from_numpy(np.asarray(summary, np.float32)[self.rows])

    @torch.inference_mode()
    def student_features(self, run: str, name: str) -> torch.Tensor:
        """The exported encoder's pooled embedding of each row's eval view."""
        encoder, resolution = load_exported(run)
        encoder.to(self.device)
        pixels = PixelNorm.of(encoder).to(self.device)
        views = EvalViews(self.opts.data, self.cache.keys, self.cache.location, self.cache.image_size, self.rows, resolution,
                          self.cache.plan.policy, self.cache.digest)
        feats = [pooled(encoder, pixels(images.to(self.device))).float().cpu()
                 for images in views.batches(self.opts.batch_size, self.opts.workers, f"features {name}", self.opts.progress)]
        return torch.cat(feats)

    def scores(self, features: torch.Tensor, seed: int = 0) -> dict[str, dict[str, float]]:
        """{task: {metric: score}} for one model's features (rows as in ``self.rows``)."""
        out = {}
        x = features.to(self.device)
        for name in self.tasks:
            task = self.labels.task(name)
            known = self.labels.known(name)[self.rows]
            parts = [np.flatnonzero(known & (self.split == s)) for s in range(3)]
            y = torch.from_numpy(self.labels.values[name][self.rows]).to(self.device)
            (xtr, ytr), (xva, yva), (xte, yte) = ((x[p], y[p]) for p in parts)
            if task.is_classification:
                linear, _ = linear_probe(xtr, ytr, xva, yva, xte, yte, task.classes)
                knn = knn_accuracy(torch.cat([xtr, xva]), torch.cat([ytr, yva]), xte, yte, task.classes,
                                   self.opts.k, self.opts.temperature)
                out[name] = {"linear": linear, "knn": knn, "nmi": kmeans_nmi(xte, yte, task.classes, seed)}
            else:
                out[name] = {"r2": ridge_r2(xtr, ytr, xva, yva, xte, yte)[0]}
        return out

    def results(self) -> Results:
        return Results({t: self.labels.task(t).classes for t in self.tasks})


def evaluate(opts: EvalOptions) -> Results:
    """Probe every selected teacher (from the cache) and student (from its run folder)."""
    from tqdm import tqdm

    ev = Evaluator(opts)
    results = ev.results()
    models = [(n, "teacher", None) for n in ev.teacher_names()] + [(n, "student", r) for n, r in opts.students.items()]
    if not models:
        raise UserError("nothing to evaluate: the cache has no teachers and no --student was given")
    for name, kind, run in tqdm(models, desc="probe", unit="model", disable=not opts.progress):
        feats = ev.teacher_features(name) if kind == "teacher" else ev.student_features(run, name)
        results.add(name, kind, ev.scores(feats))
    return results
