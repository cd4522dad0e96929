"""``unic-cache eval``: probe the student and every cached teacher on a labelled dataset's tasks.

Teacher features are the cached summary embeddings and patch tokens of view 0 (the eval view), so no
teacher is loaded; a student's are its exported encoder's pooled embedding and patch tokens of the same
view. Image-level tasks probe the summary, dense tasks (``dense.py``) the patch tokens. Rows are split by the
dataset's one split (``labels.read_split``, the one train-teacher used): probes fit on train, choose their
regularisation on val and report val and test. Per task: kNN and linear-probe accuracy plus k-means NMI for a
classification, ridge R² for a regression target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..cache.sources import open_source
from ..cache.store import Cache
from ..errors import UserError
from ..models.device_pixels import PixelNorm
from ..distillation.exported import add_scores_to_card, load_student
from ..runtime import pick_device, share_cores
from .agreement import HeadAgreement
from .dense import dense_probe, pool_majority, view_maps
from .images import EvalViews, eval_params
from .labels import Labels, read_labels, read_split
from .options import EvalOptions
from .probes import kmeans_nmi, knn_accuracy, linear_probe, ridge_r2
from .results import AGREEMENT, Results


EVAL_FORMAT = 5  # 4: a student's head agreement (``agreement``) beside its probes; 5: on cached views past 0 and fresh views too; changes whenever the scores of the same model and data would change


@dataclass
class Features:
    """One model's features of the evaluated rows: summary (rows, dim) and, for dense tasks, patch tokens
    (rows, tokens, dim) on ``grid`` of a ``resolution`` px input."""

    summary: torch.Tensor
    tokens: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    resolution: int | None = None


class Evaluator:
    """Labels, split and cache opened once; ``scores(features)`` probes one model's features."""

    def __init__(self, opts: EvalOptions):
        opts.check()
        self.opts = opts
        self.device = pick_device(opts.device)
        share_cores(self.device)
        self.cache = Cache.open(opts.cache)
        source = open_source(opts.data)
        self.cache.check_source(source)
        self.labels: Labels = read_labels(source, self.cache.keys)
        self.tasks = opts.tasks or [t.name for t in self.labels.tasks]
        for t in self.tasks:
            self.labels.task(t)
        self.rows = np.flatnonzero(~self.cache.bad)  # features are computed for these rows, in this order
        self.split_rule = read_split(source)
        self.split = self.split_rule.rows(self.cache.keys)[self.rows]
        if not all((self.split == s).any() for s in range(3)):
            raise UserError(f"{len(self.rows)} samples are too few for a train/val/test split")
        self.dense = [t for t in self.tasks if self.labels.task(t).dense]
        self.view0 = eval_params(self.cache.plan.policy, self.rows, self.cache.image_size) if self.dense else None
        self._token_labels: dict[tuple, torch.Tensor] = {}

    def teacher_names(self) -> list[str]:
        available = self.cache.teacher_names()
        names = self.opts.teachers if self.opts.teachers is not None else available
        for name in names:
            if name not in available:
                raise UserError(f"no teacher {name!r} in {self.opts.cache}; it has {', '.join(available) or 'none'}")
            if not self.cache.teacher(name).complete:
                raise UserError(f"teacher {name!r} is not complete in {self.opts.cache}; finish it with unic-cache extract")
        return names

    def teacher_features(self, name: str) -> Features:
        """Cached summary embeddings (and, when a dense task is evaluated, patch tokens) of view 0."""
        store = self.cache.teacher(name)
        rows = slice(0, self.cache.n)
        summary = torch.from_numpy(np.asarray(store.read("summary", rows, 0), np.float32)[self.rows])
        if not self.dense or not store.has_patch:
            return Features(summary)
        tokens = torch.from_numpy(np.asarray(store.read("patch", rows, 0), np.float32)[self.rows])
        return Features(summary, tokens, tuple(store.stored_grid), store.info.resolution)

    @torch.inference_mode()
    def student_features(self, run: str, name: str) -> Features:
        """The exported encoder's pooled embedding and patch tokens of each row's eval view."""
        encoder, resolution = load_student(run)
        encoder.to(self.device)
        pixels = PixelNorm.of(encoder).to(self.device)
        views = EvalViews(self.opts.data, self.cache.keys, self.cache.location, self.cache.image_size, self.rows, resolution,
                          self.cache.plan.policy, self.cache.digest, self.cache.pixels)
        summary, tokens = [], []
        for images in views.batches(self.opts.batch_size, self.opts.workers, f"features {name}", self.opts.progress,
                                    self.device):
            feats = encoder.forward_features(pixels(images))
            summary.append(encoder.forward_head(feats, pre_logits=True).float().cpu())
            if self.dense:
                tokens.append(feats[:, encoder.num_prefix_tokens:].float().cpu())
        grid = tuple(encoder.patch_embed.grid_size)
        return Features(torch.cat(summary), torch.cat(tokens) if self.dense else None, grid, resolution)

    def student_scores(self, run: str, name: str) -> dict:
        """A student's probe scores (``scores``) and, under ``AGREEMENT``, its heads' agreement with this cache's
        targets (``agreement.HeadAgreement``)."""
        scores = self.scores(self.student_features(run, name), name)
        return {**scores, AGREEMENT: HeadAgreement(run, self.device).report(self.cache, self.opts.data, self.split, self.rows)}

    def token_labels(self, task: str, resolution: int, grid: tuple[int, int]) -> torch.Tensor:
        """(rows, tokens) int64 labels of a dense task at a model's input resolution and token grid (-1: none)."""
        key = (task, resolution, grid)
        if key not in self._token_labels:
            maps = view_maps(self.labels.maps[task], self.rows, self.view0, resolution)
            self._token_labels[key] = torch.from_numpy(pool_majority(maps, grid, self.labels.task(task).classes))
        return self._token_labels[key]

    def scores(self, features: Features, model: str = "", seed: int = 0, headline_only: bool = False
               ) -> dict[str, dict[str, float]]:
        """{task: {metric: score}} for one model's features (rows as in ``self.rows``); dense tasks only
        when the model has patch tokens; ``headline_only``: a classification's linear probe without kNN and
        k-means. A progress bar moves per task."""
        from tqdm import tqdm

        out = {}
        x = features.summary.to(self.device)
        for name in tqdm(self.tasks, desc=f"probe {model}".strip(), unit="task", disable=not self.opts.progress):
            task = self.labels.task(name)
            if task.dense:
                if features.tokens is not None:
                    labels = self.token_labels(name, features.resolution, features.grid).to(self.device)
                    test, val = dense_probe(features.tokens.to(self.device), labels, self.split, task.classes)
                    out[name] = {"miou": test, "miou_val": val}
                continue
            known = self.labels.known(name)[self.rows]
            parts = [np.flatnonzero(known & (self.split == s)) for s in range(3)]
            y = torch.from_numpy(self.labels.values[name][self.rows]).to(self.device)
            (xtr, ytr), (xva, yva), (xte, yte) = ((x[p], y[p]) for p in parts)
            if task.is_classification:
                linear, linear_val, _ = linear_probe(xtr, ytr, xva, yva, xte, yte, task.classes)
                out[name] = {"linear": linear, "linear_val": linear_val}
                if not headline_only:
                    out[name]["knn"] = knn_accuracy(torch.cat([xtr, xva]), torch.cat([ytr, yva]), xte, yte, task.classes,
                                                    self.opts.k, self.opts.temperature)
                    out[name]["nmi"] = kmeans_nmi(xte, yte, task.classes, seed)
            else:
                r2, r2_val, _ = ridge_r2(xtr, ytr, xva, yva, xte, yte)
                out[name] = {"r2": r2, "r2_val": r2_val}
        return out

    def results(self) -> Results:
        rows = {part: int((self.split == i).sum()) for i, part in enumerate(("train", "val", "test"))}
        return Results({t: self.labels.task(t).classes for t in self.tasks}, dense=self.dense,
                       split={**self.split_rule.to_dict(), "rows": rows})


def evaluate(opts: EvalOptions) -> Results:
    """Probe every selected teacher (from the cache) and student (from its run folder)."""
    ev = Evaluator(opts)
    results = ev.results()
    models = [(n, "teacher", None) for n in ev.teacher_names()] + [(n, "student", r) for n, r in opts.students.items()]
    if not models:
        raise UserError("nothing to evaluate: the cache has no teachers and no --student was given")
    teachers: dict[str, dict] = {}
    for name, kind, run in models:  # teachers first: a student's model card shows them beside it
        scores = ev.scores(ev.teacher_features(name), name) if kind == "teacher" else ev.student_scores(run, name)
        results.add(name, kind, scores)
        if kind == "teacher":
            teachers[name] = scores
        else:
            add_scores_to_card(run, score_card(ev, teachers, name, scores))
    return results


def score_card(ev: Evaluator, teachers: dict[str, dict], name: str, scores: dict) -> str:
    """The evaluation section of a student's model card: the teachers' scores and the student's, test then val."""
    card = ev.results()
    for teacher, teacher_scores in teachers.items():
        card.add(teacher, "teacher", teacher_scores)
    card.add(name, "student", scores)
    return "\n".join(card.table("test") + ["", "Validation split:", ""] + card.table("val"))
