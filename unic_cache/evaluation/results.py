"""Evaluation results: per model, task and metric a list of scores (one per seed), as tables and a chart.

The headline score of a task is the linear-probe accuracy for a classification, the ridge R² for a
regression target and the mIoU for a dense task (all in points, 0-100), on the test rows; the same
metric on the val rows (``<metric>_val``) is what recipe choices are made on. ``claims()`` checks UNIC's
claim for every student on test: within 2 points of the best teacher on every task, and above every
teacher on the average over tasks. A model without a task's score (a teacher cached without patch
tokens has no dense score) shows "–" there and has no average.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..distillation.run_files import is_tmp, write_atomic
from ..errors import UserError
from ..records import refuse_foreign

METRICS = {"linear": "linear probe accuracy", "knn": "kNN (k=20) accuracy", "nmi": "k-means NMI", "r2": "ridge R²",
           "miou": "dense linear probe mIoU"}
TOLERANCE = 2.0  # points
AGREEMENT = "agreement"  # a student's heads against its teachers' targets (``evaluation.agreement``)
GROUPS = ("distilled", "val", "test", "distilled_cached", "distilled_fresh", "val_fresh")  # the rows and views it compares


def model_colours(n: int) -> np.ndarray:
    """``n`` distinct RGBA colours, one per model in the chart: tab10's, then tab20's lighter shades, then
    samples of a continuous map (matplotlib's default cycle repeats after 10, so two arms looked alike)."""
    from matplotlib import colormaps

    if n <= 20:
        order = np.r_[0:20:2, 1:20:2]  # tab20's dark shades (tab10's hues) first, then the light ones
        return colormaps["tab20"](order[:n])
    return colormaps["turbo"](np.linspace(0.05, 0.95, n))


RESULT_FILES = (".md", ".json", ".png")  # what results (and a pipeline's record of its steps) are written as


def check_results_folder(folder: str | Path, folders: tuple[str, ...] = (), what: str = "eval") -> None:
    """Refuse a ``--out`` holding anything but results (``.md``, ``.json``, ``.png`` files, or the temp name of one a
    kill cut while we wrote it) and the ``folders`` named (a pipeline's own: data, teachers, runs, ``*.zarr``
    caches...): a dataset folder is never written into."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file; give a folder for the results")
    result = lambda name: Path(name).suffix in RESULT_FILES  # noqa: E731
    ours = lambda p: (p.is_file() and (result(p.name) or is_tmp(p.name, result))) or (p.is_dir() and any(  # noqa: E731
        p.name == f or f.startswith("*") and p.name.endswith(f[1:]) for f in folders))
    refuse_foreign("--out", folder, sorted(p.name for p in folder.iterdir() if not ours(p)) if folder.is_dir() else [], what)


@dataclass
class Results:
    """``models[name] = {"kind": "teacher" | "student", "scores": {task: {metric: [score per seed]}}}``."""

    tasks: dict[str, int]  # task -> classes (0: regression)
    models: dict[str, dict] = field(default_factory=dict)
    dense: list[str] = field(default_factory=list)  # the tasks scored on patch tokens
    split: dict | None = None  # the split rule the scores were made with

    def add(self, model: str, kind: str, scores: dict[str, dict[str, float]]) -> None:
        """One seed's scores of ``model``: {task: {metric: value}}, and for a student its heads' agreement with
        the teachers' targets under ``"agreement"`` ({target: {metric: value}}, kept apart from the tasks)."""
        entry = self.models.setdefault(model, {"kind": kind, "scores": {}})
        if entry["kind"] != kind:
            raise UserError(f"{model!r} names both a teacher and a student; give the student (or arm) another name")
        for task, metrics in scores.items():
            kept = entry.setdefault(AGREEMENT, {}) if task == AGREEMENT else entry["scores"]
            for name, values in (metrics.items() if task == AGREEMENT else [(task, metrics)]):
                for metric, value in values.items():
                    kept.setdefault(name, {}).setdefault(metric, []).append(float(value))

    def agreement(self, model: str, target: str, metric: str) -> np.ndarray:
        """A student's head agreement per seed (``evaluation.agreement``); [nan] when it has none."""
        return np.asarray(self.models[model].get(AGREEMENT, {}).get(target, {}).get(metric, [np.nan]))

    def agreement_table(self) -> list[str]:
        """Markdown rows: per student and target, cosine of its heads in every group of ``GROUPS`` and
        standardised error at view 0 on the rows it distilled on and on val and test rows (empty when no student has
        them)."""
        rows = [(m, t) for m in self.of_kind("student") for t in self.models[m].get(AGREEMENT, {})]
        if not rows:
            return []
        cols = [f"cosine_{group}" for group in GROUPS] + [f"error_{group}" for group in GROUPS[:3]]
        lines = ["| student | target | " + " | ".join(c.replace("_", " ") for c in cols) + " | val rows distilled on |",
                 "|" + "---|" * (len(cols) + 3)]
        for m, t in rows:
            seen = "yes" if float(self.agreement(m, t, "seen").max()) > 0 else "no"
            cells = [self._cell(self.agreement(m, t, c), 3) for c in cols]
            lines.append(f"| {m} | {t} | " + " | ".join(cells) + f" | {seen} |")
        return lines

    def headline(self, task: str, split: str = "test") -> str:
        metric = "miou" if task in self.dense else "linear" if self.tasks[task] > 0 else "r2"
        return metric if split == "test" else f"{metric}_{split}"

    def values(self, model: str, task: str, metric: str | None = None) -> np.ndarray:
        """Scores per seed; [nan] when the model has none for this task and metric."""
        return np.asarray(self.models[model]["scores"].get(task, {}).get(metric or self.headline(task), [np.nan]))

    def average(self, model: str, split: str = "test") -> np.ndarray:
        """Per seed, the mean headline score over tasks (nan when a task has no score)."""
        per_task = [self.values(model, t, self.headline(t, split)) for t in self.tasks]
        seeds = max(len(v) for v in per_task)
        return np.mean([np.broadcast_to(v, seeds) if len(v) == 1 else v for v in per_task], axis=0)

    def of_kind(self, kind: str) -> list[str]:
        return [m for m, e in self.models.items() if e["kind"] == kind]

    def best_teacher(self, task: str | None = None) -> float:
        """The best teacher's headline score on ``task`` (None: on the average); teachers without one left out."""
        scores = [float((self.values(t, task) if task else self.average(t)).mean()) for t in self.of_kind("teacher")]
        return max((v for v in scores if not np.isnan(v)), default=float("nan"))

    def claims(self) -> dict[str, dict]:
        """For each student: gap to the best teacher per task (tasks without a teacher's or the student's
        score left out), whether it is within tolerance, and the average."""
        if not self.of_kind("teacher"):
            return {}
        out = {}
        for s in self.of_kind("student"):
            gaps = {t: float(self.values(s, t).mean()) - self.best_teacher(t) for t in self.tasks}
            gaps = {t: g for t, g in gaps.items() if not np.isnan(g)}
            avg_gap = float(self.average(s).mean()) - self.best_teacher()
            out[s] = {"gap_to_best_teacher": gaps, "within_tolerance": all(g >= -TOLERANCE for g in gaps.values()),
                      "average_gap": avg_gap, "beats_every_teacher_on_average": avg_gap > 0}
        return out

    def _cell(self, values: np.ndarray, digits: int = 1) -> str:
        if np.isnan(values).any():
            return "–"
        m, d = values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0
        return f"{m:.{digits}f}" if len(values) == 1 else f"{m:.{digits}f} ± {d:.{digits}f}"

    def table(self, split: str = "test") -> list[str]:
        """Markdown rows of the headline table on ``split`` (test or val): models x tasks + average."""
        tasks = list(self.tasks)
        head = [f"{t} ({'mIoU' if t in self.dense else 'acc' if self.tasks[t] else 'R²'})" for t in tasks]
        lines = ["| model | kind | " + " | ".join(head) + " | average |", "|" + "---|" * (len(tasks) + 3)]
        for m, e in self.models.items():
            cells = [self._cell(self.values(m, t, self.headline(t, split))) for t in tasks]
            lines.append(f"| {m} | {e['kind']} | " + " | ".join(cells) + f" | {self._cell(self.average(m, split))} |")
        return lines

    def markdown(self) -> str:
        """The headline table on test (models x tasks + average), the same on val, the other metrics, and
        the claim check."""
        tasks = list(self.tasks)
        lines = self.table("test")
        seeds = max(len(self.values(m, t)) for m in self.models for t in tasks)
        rows = (self.split or {}).get("rows", {})
        counts = f"; rows: train {rows['train']}, val {rows['val']}, test {rows['test']}" if rows else ""
        split = (f" (split seed {self.split['seed']}, train/val fractions {self.split['fractions']}{counts})"
                 if self.split else "")
        lines.append("")
        dense = ("; dense: mIoU (%) of a linear probe per patch token at the model's token grid, labels pooled to it by "
                 "majority" if self.dense else "; no dense task (the dataset has no label maps, or none was selected)")
        lines.append("Classification: linear-probe accuracy (%); regression: ridge R² (x100)" + dense
                     + f"; test split{split}" + (f"; mean ± std over {seeds} seeds." if seeds > 1 else "."))
        val_rows = f" ({rows['val']} rows)" if rows else ""
        lines += ["", f"Validation split{val_rows}, the scores choices are made on:", "", *self.table("val")]
        extra = [(t, metric) for t in tasks if self.tasks[t] and t not in self.dense for metric in ("knn", "nmi")]
        if extra:
            lines += ["", "| model | " + " | ".join(f"{t} {metric}" for t, metric in extra) + " |",
                      "|" + "---|" * (len(extra) + 1)]
            for m in self.models:
                lines.append(f"| {m} | " + " | ".join(self._cell(self.values(m, t, metric)) for t, metric in extra) + " |")
            lines += ["", "kNN: k=20, cosine, temperature-weighted vote, neighbours from the train and val splits, scored on "
                      "the test split; NMI: k-means (k = classes) on L2-normalised features of the test split."]
        agreement = self.agreement_table()
        if agreement:
            lines += ["", "Label-free: how well each student's heads predict its teachers' targets (in the standardised "
                      "space of the loss): mean cosine (1 is exact) and mean squared error per dimension (1 is the "
                      "teachers' mean), at the cached view 0 of rows it distilled on and of val and test rows; at "
                      "cached views 1-4 of the distilled rows (those it trained on); at 4 fresh views (teachers "
                      "rebuilt) of distilled and val rows (cached minus fresh: overfitting to replayed views; fresh "
                      "distilled minus fresh val: to the images):", "", *agreement]
        for s, c in self.claims().items():
            worst = min(c["gap_to_best_teacher"], key=c["gap_to_best_teacher"].get)
            lines += ["", f"**{s}**: within {TOLERANCE:g} points of the best teacher on every task: "
                      f"{'yes' if c['within_tolerance'] else 'no'} (worst: {worst} {c['gap_to_best_teacher'][worst]:+.1f}); "
                      f"beats every teacher on the average: {'yes' if c['beats_every_teacher_on_average'] else 'no'} "
                      f"({c['average_gap']:+.1f} points)."]
        return "\n".join(lines) + "\n"

    def chart(self, path: str | Path) -> None:
        """Grouped bars of absolute headline scores on the test split, per task and on the average: teachers
        (hatched) beside students, the best teacher of each column marked, every bar labelled with its value,
        so that it reads without the table."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        columns = list(self.tasks) + ["average"]
        models = list(self.models)
        colours = model_colours(len(models))
        width = 0.8 / max(1, len(models))
        fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(columns) * max(1, len(models)) / 3 + 2), 4.8))
        per_model = {m: [self.values(m, t) for t in self.tasks] + [self.average(m)] for m in models}
        best = [self.best_teacher(t) for t in self.tasks] + [self.best_teacher()]
        for i, m in enumerate(models):
            means = [float(v.mean()) for v in per_model[m]]
            errs = [float(v.std(ddof=1)) if len(v) > 1 else 0.0 for v in per_model[m]]
            teacher = self.models[m]["kind"] == "teacher"
            x = np.arange(len(columns)) + (i - (len(models) - 1) / 2) * width
            bars = ax.bar(x, np.nan_to_num(means), width, yerr=errs if any(errs) else None, label=m,
                          hatch="//" if teacher else "", capsize=2, color=colours[i], edgecolor="black", linewidth=0.4)
            for bar, value, top in zip(bars, means, best):
                if np.isnan(value):
                    continue
                mark = " *" if teacher and value == top else ""
                ax.annotate(f"{value:.1f}{mark}", (bar.get_x() + bar.get_width() / 2, max(value, 0)), ha="center",
                            va="bottom", fontsize=7, rotation=90 if len(models) > 3 else 0, xytext=(0, 2),
                            textcoords="offset points")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(np.arange(len(columns)), columns)
        ax.set_ylabel("score (accuracy %, R² x100, mIoU %)")
        ax.set_title("Test-split scores per task (hatched: teachers; * the best teacher)", fontsize=10)
        ax.margins(y=0.15)
        ax.legend(fontsize=8, ncol=min(4, len(models)), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def save(self, folder: str | Path, stem: str = "results") -> dict[str, Path]:
        """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``folder``; return their paths."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--out {folder} is a file; give a folder for the results")
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"json": folder / f"{stem}.json", "markdown": folder / f"{stem}.md", "chart": folder / f"{stem}.png"}
        write_atomic(paths["json"], json.dumps({"tasks": self.tasks, "dense": self.dense, "split": self.split,
                                                "models": self.models, "claims": self.claims()}, indent=1))
        write_atomic(paths["markdown"], self.markdown())
        self.chart(paths["chart"])
        return paths

    @classmethod
    def load(cls, path: str | Path) -> "Results":
        d = json.loads(Path(path).read_text())
        return cls(d["tasks"], d["models"], d.get("dense", []), d.get("split"))
