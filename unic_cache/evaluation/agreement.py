"""A label-free measure of what a student learnt: how well its projector heads predict each teacher's cached targets.

For every target of a finished distill run (``<teacher>/summary``, ``<teacher>/patch``) the run's own student and
heads (``model/`` and ``heads.safetensors``, target norms included) are applied to the eval view (view 0) of three
groups of rows, and compared with the teacher's cached view 0 of the same rows, in the standardised space the loss
was trained in: mean cosine and mean squared error per dimension (1.0 is what predicting the teachers' mean scores).

- ``distilled``: up to ``MAX_ROWS`` rows of the run's own cache, whose cached views the student was trained on;
- ``val`` and ``test``: the evaluated dataset's split, rows the student never distilled on when its cache is
  another dataset's (``seen`` says whether they were: a run distilled on the evaluated cache itself).

The gap between ``distilled`` and ``val`` is the overfitting to cached targets, measured directly over thousands of
vectors (every patch token counts) rather than a hundred labels. A teacher of the run that the evaluated cache does
not hold is left out; so is the ``distilled`` group when the run's cache cannot be opened any more.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..cache.store import Cache
from ..errors import UserError
from ..models.student import Student
from ..distillation.exported import student_weights
from ..distillation.loader import Target
from ..distillation.normalize import RunningNorm, TargetNorm
from .images import EvalViews

MAX_ROWS = 1000  # distilled rows compared (evenly spaced over the run's cache)
GROUPS = ("distilled", "val", "test")


def _norms(heads: dict[str, torch.Tensor], targets: list[Target], mode: str) -> dict[Target, torch.nn.Module]:
    """The run's target standardisations, as saved beside its heads (``norms.<teacher>__<kind>.*``)."""
    out = {}
    for target in targets:
        prefix = f"norms.{target.module}."
        state = {k[len(prefix):]: v for k, v in heads.items() if k.startswith(prefix)}
        dim = len(state["mean"])
        norm = RunningNorm(dim) if "std" in state else TargetNorm(mode, np.zeros(dim), np.eye(dim))
        norm.load_state_dict(state)
        out[target] = norm.eval()
    return out


class HeadAgreement:
    """One finished run's student with its heads and target norms, ready to be compared with a cache's targets."""

    def __init__(self, run: str | Path, device: torch.device | str = "cpu"):
        self.run, self.device = Path(run), torch.device(device)
        self.config = json.loads((self.run / "config.json").read_text())
        heads = load_file(str(self.run / "heads.safetensors"))
        self.targets = sorted(Target.named(name) for name in self.config["targets"])
        self.norms = _norms(heads, self.targets, self.config.get("norm", "standard"))
        self.out_factor = 2 if self.config.get("loss") == "gauss" else 1
        self.heads_state = {k[len("heads."):]: v for k, v in heads.items() if k.startswith("heads.")}
        self.encoder_state = load_file(str(student_weights(self.run)))

    def student(self, grids: dict[str, tuple[int, int]]) -> Student:
        """The run's student (encoder and heads) predicting patch targets on ``grids`` (teacher -> token grid)."""
        c = self.config
        targets = {t.name: (self.norms[t].out_dim, grids[t.teacher] if t.kind == "patch" else None) for t in self.targets}
        student = Student(c["student"], c["img_size"], targets, c.get("lop_blocks", "all"), 0.0, self.out_factor,
                          c.get("model_args") or {}, c.get("lop_head", "unic"), str(c.get("lop_hidden", "768")))
        student.encoder.load_state_dict(self.encoder_state)
        student.heads.load_state_dict(self.heads_state)
        return student.eval().to(self.device)

    @torch.inference_mode()
    def compare(self, cache: Cache, data: str, rows: np.ndarray, batch_size: int = 128) -> dict[str, dict[str, float]]:
        """{target: {"cosine": mean cosine, "error": mean squared error per dimension}} of the heads' predictions
        against ``cache``'s view-0 targets of ``rows``, both standardised by the run's norms."""
        teachers = [t for t in {t.teacher for t in self.targets} if t in cache.teacher_names()]
        targets = [t for t in self.targets if t.teacher in teachers and (t.kind == "summary" or cache.teacher(t.teacher).has_patch)]
        if not targets or not len(rows):
            return {}
        stores = {t: cache.teacher(t) for t in teachers}
        student = self.student({t: tuple(s.stored_grid) for t, s in stores.items()})
        views = EvalViews(data, cache.keys, cache.location, cache.image_size, rows, int(self.config["img_size"]),
                          cache.plan.policy, cache.digest, cache.pixels)
        sums = {t: np.zeros(3) for t in targets}  # cosine sum, squared-error sum over dims, vectors
        done = 0
        for images in views.batches(batch_size, 0, progress=False, device=self.device):
            preds = student(images)
            chunk = rows[done:done + len(images)]
            done += len(images)
            for target in targets:
                span = stores[target.teacher].read(target.kind, slice(int(chunk[0]), int(chunk[-1]) + 1), 0)  # rows are sorted
                stored = np.ascontiguousarray(span[chunk - chunk[0]])
                truth = self.norms[target].to(self.device)(torch.from_numpy(stored).to(self.device)).reshape(-1, self.norms[target].out_dim)
                pred = preds[target.name].float().chunk(self.out_factor, dim=-1)[0].reshape(truth.shape)
                cos = torch.nn.functional.cosine_similarity(pred, truth, dim=-1)
                sums[target] += [float(cos.sum()), float(((pred - truth) ** 2).mean(-1).sum()), len(truth)]
        return {t.name: {"cosine": s[0] / s[2], "error": s[1] / s[2]} for t, s in sums.items()}

    def report(self, cache: Cache, data: str, split: np.ndarray, rows: np.ndarray) -> dict[str, dict[str, float]]:
        """{target: {"cosine_<group>", "error_<group>"} for the groups of ``GROUPS``} and ``seen`` (1.0 when the
        val and test rows are in the run's own cache); ``split``: train/val/test (0/1/2) of ``rows`` of ``cache``."""
        per_group = {"val": self.compare(cache, data, rows[split == 1]), "test": self.compare(cache, data, rows[split == 2])}
        seen = self.config.get("cache_fingerprint") == cache.attrs["fingerprint"]
        try:
            own = cache if seen else Cache.open(self.config["cache"])
            good = np.flatnonzero(~own.bad)
            picked = good[np.linspace(0, len(good) - 1, min(MAX_ROWS, len(good))).round().astype(int)] if len(good) else good
            per_group["distilled"] = self.compare(own, self.config["data"], picked)
        except (UserError, OSError, KeyError):  # the run's cache is gone or moved: that group is left out
            per_group["distilled"] = {}
        out: dict[str, dict[str, float]] = {}
        for group, targets in per_group.items():
            for target, metrics in targets.items():
                out.setdefault(target, {}).update({f"{m}_{group}": v for m, v in metrics.items()})
        return {t: {**m, "seen": float(seen)} for t, m in out.items()}
