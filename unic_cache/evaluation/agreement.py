"""A label-free measure of what a student learnt: how well its projector heads predict each teacher's targets.

For every target of a finished distill run (``<teacher>/summary``, ``<teacher>/patch``) the run's own student and
heads (``model/`` and ``heads.safetensors``, target norms included) are applied to one view of a group of rows and
compared with the teacher's target for that same view, in the standardised space the loss was trained in: mean
cosine and mean squared error per dimension (1.0 is what predicting the teachers' mean scores). The groups:

- ``distilled``: up to ``MAX_ROWS`` rows of the run's own cache, whose cached views the student was trained on,
  at view 0 (the eval view); ``val`` and ``test``: the evaluated dataset's split at view 0, rows the student never
  distilled on when its cache is another dataset's (``seen`` says whether they were: a run distilled on the
  evaluated cache itself);
- ``distilled_cached``: the distilled rows at cached views 1 to ``VIEWS_COMPARED``, random views: of those a cached
  run trained on (none for a run of one view: the group is left out), and of those the cache holds for an online
  run, which never saw them (there, a control: it reads as ``distilled_fresh``, within the noise of the views drawn);
- ``distilled_fresh`` and ``val_fresh`` (up to ``MAX_ROWS`` val rows): ``VIEWS_COMPARED`` random views no cache holds
  and no online run drew (from ``FRESH_VIEW`` on), the teachers rebuilt (``models.teachers.rebuild_teacher``) and
  their outputs passed through the cache's codecs, as extract would have stored them.

Several views are averaged because one random view per row moves a mean cosine by about 0.3 points from draw to
draw (measured on the powered reuse grid's online students), as much as the effects measured. ``distilled`` minus
``val`` is the overfitting to cached targets, measured directly over thousands of vectors (every patch token
counts) rather than a hundred labels; with the teachers rebuilt it splits in two on random views:
``distilled_cached`` minus ``distilled_fresh`` is the overfitting to the replayed views themselves,
``distilled_fresh`` minus ``val_fresh`` the overfitting to the distilled images. A teacher of the run that the
evaluated cache does not hold is left out; so are the distilled groups when the run's cache cannot be opened any
more, and the fresh groups when a teacher cannot be rebuilt here (hub weights out of reach, unseeded random weights,
a changed weights file).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..cache.layout import TeacherInfo
from ..cache.store import Cache
from ..errors import UserError
from ..models.student import Student
from ..distillation.exported import student_weights
from ..distillation.loader import Target
from ..distillation.normalize import RunningNorm, TargetNorm
from ..models.device_codecs import DeviceCodec
from ..models.teachers import Teacher, rebuild_teacher
from .images import EvalViews

MAX_ROWS = 1000  # distilled rows, and val rows on a fresh view, compared (evenly spaced)
FRESH_VIEW = 1_000_000  # the first view number no cache holds and no online run draws (it draws the cached views + epoch)
VIEWS_COMPARED = 4  # random views averaged per row in the cached and fresh groups


def spread(rows: np.ndarray, most: int = MAX_ROWS) -> np.ndarray:
    """At most ``most`` of ``rows``, evenly spaced (all of them when there are fewer)."""
    return rows[np.linspace(0, len(rows) - 1, min(most, len(rows))).round().astype(int)] if len(rows) else rows


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
        self._rebuilt: dict[tuple[str, str], Teacher] = {}  # (teacher, weights sha256) -> the teacher, rebuilt once
        self._students: dict[tuple, Student] = {}  # token grids -> the student, built once for every view compared

    def teacher(self, name: str, info: TeacherInfo) -> Teacher:
        """Teacher ``name`` as a cache holding it was extracted with (``UserError`` when it cannot be rebuilt here)."""
        key = (name, str(info.weights_sha256))
        if key not in self._rebuilt:
            self._rebuilt[key] = rebuild_teacher(name, info).to(self.device)
        return self._rebuilt[key]

    def student(self, grids: dict[str, tuple[int, int]]) -> Student:
        """The run's student (encoder and heads) predicting patch targets on ``grids`` (teacher -> token grid)."""
        key = tuple(sorted(grids.items()))
        if key not in self._students:
            self._students[key] = self._build_student(grids)
        return self._students[key]

    def _build_student(self, grids: dict[str, tuple[int, int]]) -> Student:
        c = self.config
        targets = {t.name: (self.norms[t].out_dim, grids[t.teacher] if t.kind == "patch" else None) for t in self.targets}
        student = Student(c["student"], c["img_size"], targets, c.get("lop_blocks", "all"), 0.0, self.out_factor,
                          c.get("model_args") or {}, c.get("lop_head", "unic"), str(c.get("lop_hidden", "768")))
        student.encoder.load_state_dict(self.encoder_state)
        student.heads.load_state_dict(self.heads_state)
        return student.eval().to(self.device)

    @torch.inference_mode()
    def compare(self, cache: Cache, data: str, rows: np.ndarray, view: int = 0, batch_size: int = 128
                ) -> dict[str, dict[str, float]]:
        """{target: {"cosine": mean cosine, "error": mean squared error per dimension}} of the heads' predictions
        on view ``view`` of ``rows`` (sorted) against ``cache``'s targets of that view, both standardised by the run's
        norms: read when the cache holds the view, else computed by the teachers rebuilt (``UserError`` when one
        cannot be) and stored-and-rebuilt through the cache's codecs."""
        teachers = [t for t in {t.teacher for t in self.targets} if t in cache.teacher_names()]
        targets = [t for t in self.targets if t.teacher in teachers and (t.kind == "summary" or cache.teacher(t.teacher).has_patch)]
        if not targets or not len(rows):
            return {}
        stores = {t: cache.teacher(t) for t in teachers}
        fresh = view >= min(store.views for store in stores.values())
        rebuilt = {t: self.teacher(t, stores[t].info) for t in teachers} if fresh else {}
        codecs = {t: DeviceCodec(stores[t.teacher].codecs[t.kind], stores[t.teacher].info.grid, self.device)
                  for t in targets} if fresh else {}
        student = self.student({t: tuple(s.stored_grid) for t, s in stores.items()})
        streams = [EvalViews(data, cache.keys, cache.location, cache.image_size, rows, resolution, cache.plan.policy,
                             cache.digest, cache.pixels, view, cache.plan.seed).batches(batch_size, 0, progress=False,
                                                                                         device=self.device)
                   for resolution in (int(self.config["img_size"]), *(t.info.resolution for t in rebuilt.values()))]
        sums = {t: np.zeros(3) for t in targets}  # cosine sum, squared-error sum over dims, vectors
        done = 0
        for images, *teacher_images in zip(*streams):
            preds = student(images)
            outputs = {t: dict(zip(("summary", "patch"), teacher(x))) for (t, teacher), x in zip(rebuilt.items(), teacher_images)}
            chunk = rows[done:done + len(images)]
            done += len(images)
            for target in targets:
                if fresh:
                    codec = codecs[target]
                    stored = codec.decode(codec.encode(codec.original(outputs[target.teacher][target.kind])))
                else:
                    span = stores[target.teacher].read(target.kind, slice(int(chunk[0]), int(chunk[-1]) + 1), view)
                    stored = torch.from_numpy(np.ascontiguousarray(span[chunk - chunk[0]])).to(self.device)
                truth = self.norms[target].to(self.device)(stored).reshape(-1, self.norms[target].out_dim)
                pred = preds[target.name].float().chunk(self.out_factor, dim=-1)[0].reshape(truth.shape)
                cos = torch.nn.functional.cosine_similarity(pred, truth, dim=-1)
                sums[target] += [float(cos.sum()), float(((pred - truth) ** 2).mean(-1).sum()), len(truth)]
        return {t.name: {"cosine": s[0] / s[2], "error": s[1] / s[2]} for t, s in sums.items()}

    def averaged(self, cache: Cache, data: str, rows: np.ndarray, views: range) -> dict[str, dict[str, float]]:
        """``compare`` on each of ``views``, its metrics averaged over them."""
        per_view = [self.compare(cache, data, rows, view) for view in views]
        return {t: {m: float(np.mean([p[t][m] for p in per_view])) for m in per_view[0][t]} for t in per_view[0]}

    def report(self, cache: Cache, data: str, split: np.ndarray, rows: np.ndarray) -> dict[str, dict[str, float]]:
        """{target: {"cosine_<group>", "error_<group>"} for the groups of ``results.GROUPS`` that could be measured} and
        ``seen`` (1.0 when the val and test rows are in the run's own cache); ``split``: train/val/test (0/1/2) of
        ``rows`` of ``cache``."""
        per_group = {"val": self.compare(cache, data, rows[split == 1]), "test": self.compare(cache, data, rows[split == 2])}
        seen = self.config.get("cache_fingerprint") == cache.attrs["fingerprint"]
        own, picked, fresh = None, np.zeros(0, int), range(FRESH_VIEW, FRESH_VIEW + VIEWS_COMPARED)
        try:
            own = cache if seen else Cache.open(self.config["cache"])
            picked = spread(np.flatnonzero(~own.bad))
            distilled = {"distilled": self.compare(own, self.config["data"], picked)}
            trained = own.views if self.config.get("online") else self.config.get("views") or own.views
            cached = range(1, min(own.views, trained, VIEWS_COMPARED + 1))  # random views the run trained on, if any
            if len(cached):
                distilled["distilled_cached"] = self.averaged(own, self.config["data"], picked, cached)
            per_group.update(distilled)
        except (UserError, OSError, KeyError):  # the run's cache or images are gone or moved: those groups are left out
            own = None
        try:
            if own is not None:
                per_group["distilled_fresh"] = self.averaged(own, self.config["data"], picked, fresh)
            per_group["val_fresh"] = self.averaged(cache, data, spread(rows[split == 1]), fresh)
        except UserError:  # a teacher that cannot be rebuilt here: the fresh groups are left out
            per_group.pop("distilled_fresh", None)
        out: dict[str, dict[str, float]] = {}
        for group, targets in per_group.items():
            for target, metrics in targets.items():
                out.setdefault(target, {}).update({f"{m}_{group}": v for m, v in metrics.items()})
        return {t: {**m, "seen": float(seen)} for t, m in out.items()}
