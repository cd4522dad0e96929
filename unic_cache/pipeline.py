"""``unic-cache run pipeline.yaml``: data -> teachers (trained or given) -> one cache -> distill arms -> eval -> results.

A pipeline is resumable and incremental: the shapes world is generated once, a trained teacher is
reused while its recipe is unchanged, a teacher already complete in the cache is never extracted again
(a partial one resumes), a finished distill run is reused while its configuration is unchanged (an
interrupted one resumes from its last checkpoint), and evaluation scores are kept beside each run.
Every step is recorded in ``PipelineRun.steps`` as (step, what, "ran" | "skipped").
The YAML keys are those of ``pipeline_config``, which reads and checks a pipeline file.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .cache.codecs import kind_codecs
from .cache.store import Cache
from .cache.layout import codec_record
from .cache.teacher import TeacherStore
from .distillation.options import DistillOptions
from .distillation.recipe import distill
from .distillation.exported import add_scores_to_card, is_finished, student_weights
from .distillation.run_files import write_atomic
from .distillation.runs import recipe_differences, recorded
from .errors import UserError
from .records import differences, json_normal, refuse
from .cache.sources import open_source
from .cache.views import ViewPlan, ViewPolicy
from .evaluation.evaluate import EVAL_FORMAT, Evaluator, score_card
from .evaluation.labels import read_split
from .evaluation.options import EvalOptions, TeacherTrainOptions
from .evaluation.results import Results, check_results_folder
from .evaluation.train_teacher import train_teacher
from .extraction.options import ExtractOptions
from .extraction.runner import extract
from .models.teachers import file_sha256, resolve
from .pipeline_config import load_config
from .shapes import WORLD_FORMAT, ShapesOptions, make_shapes

PIPELINE_FOLDERS = ("data", "teachers", "runs", "eval-teachers", "train-rows", "*.zarr")  # all a pipeline's out holds


def _recipe(values: dict, *ignore: str) -> dict:
    """``values`` as JSON reads them back, without the keys that do not change results."""
    return {k: v for k, v in json_normal(values).items() if k not in ignore}


def _check_same_teacher(name: str, store: TeacherStore, spec: dict, weights: str | None, cache_url: str) -> None:
    """A teacher complete in the cache must be the one the config describes: model id, weights (the file's digest, or
    the seed of random weights as extract recorded it), resolution, model args and codecs."""
    extract_opts = spec.get("extract", {})
    codecs = kind_codecs(extract_opts.get("codec", ExtractOptions.codec), extract_opts.get("patch_codec"),
                         extract_opts.get("patch", ExtractOptions.patch))
    want = {"model_id": resolve(spec["teacher"], spec.get("size")), "model_args": spec.get("model_args", {}),
            **({"resolution": spec["resolution"]} if spec.get("resolution") is not None else {})}
    if weights is None or weights.split(":")[0] == "random":  # the hub's (its digest is the cached file's), or seeded
        want["weights"] = weights or "hub"
    else:
        want["weights_sha256"] = file_sha256(weights) if weights is not None and Path(weights).is_file() else ""
    have = {k: store.attrs.get(k, "" if k == "weights_sha256" else None) for k in want}
    refuse(differences({**have, **codec_record(store.codec_specs())}, {**want, **codec_record(codecs)}),
           f"teacher {name} in {cache_url} was extracted with other settings than this pipeline asks for",
           "give the new one another name, or use another cache")


@dataclass
class PipelineRun:
    """What a pipeline run did and produced."""

    out: Path
    results: Results | None = None
    paths: dict[str, Path] = field(default_factory=dict)
    steps: list[tuple[str, str, str]] = field(default_factory=list)

    def log(self, step: str, what: str, status: str) -> None:
        self.steps.append((step, what, status))


class Pipeline:
    """Runs the steps of one pipeline config; each step skips work that is already done."""

    def __init__(self, config: dict, progress: bool = True):
        self.config, self.progress = config, progress
        self.out = Path(config["out"])
        self.run = PipelineRun(self.out)
        cache = config.get("cache", {}) or {}
        self.cache_url = cache.get("path") or str(self.out / "cache.zarr")
        self.views, self.view_seed = int(cache.get("views", ViewPlan.views)), int(cache.get("seed", ViewPlan.seed))
        self.crop_scale = tuple(cache.get("crop_scale", ViewPolicy.scale))
        self.unit_rows = cache.get("unit_rows")

    def data(self) -> str:
        """The dataset spec, generating the shapes world first when the config asks for one."""
        spec = self.config["data"]
        if "path" in spec:
            return str(spec["path"])
        world = {**{f.name: f.default for f in fields(ShapesOptions) if f.name != "out"}, **spec.get("shapes", {})}
        folder = self.out / "data"
        marker = folder / "world.json"
        record = {**world, "format": WORLD_FORMAT}
        if marker.exists() and not differences(json.loads(marker.read_text()), record):
            self.run.log("data", str(folder), "skipped")
            return str(folder)
        if folder.exists() and any(folder.iterdir()):
            raise UserError(f"{folder} holds another dataset than this pipeline's shapes world (or one written by an older "
                            "version); delete it or change 'out'")
        make_shapes(folder, **world)
        marker.write_text(json.dumps(record))
        self.run.log("data", str(folder), "ran")
        return str(folder)

    def teacher(self, data: str, name: str, spec: dict) -> None:
        """Train the teacher if it is trained here, then extract it unless the cache already holds it complete."""
        weights = spec.get("weights")
        if "train" in spec:
            if not spec["teacher"].startswith("timm:"):
                raise UserError(f"teacher {name}: only timm:<arch> teachers can be trained here")
            weights = str(self.out / "teachers" / f"{spec.get('same_as', name)}.safetensors")  # trained once
            cfg = TeacherTrainOptions(**{"data": data, "out": weights, "arch": spec["teacher"][5:],
                                        "img_size": spec.get("resolution") or 224,
                                        "model_args": spec.get("model_args", {}), "progress": self.progress,
                                        **spec["train"]})
            record = Path(weights).with_suffix(".json")
            saved = json.loads(record.read_text()) if record.exists() and Path(weights).exists() else None
            same = saved is not None and not differences(
                {"split": saved.get("split"), **saved["config"]},
                {"split": read_split(open_source(data)).to_dict(), **json_normal(asdict(cfg))}, ignore={"progress"})
            if same:
                self.run.log("train-teacher", name, "skipped")
            else:
                train_teacher(cfg)
                self.run.log("train-teacher", name, "ran")
        if Cache.exists(self.cache_url):
            cache = Cache.open(self.cache_url)
            if name in cache.teacher_names() and not cache.unfinished(name) and cache.teacher(name).complete:
                _check_same_teacher(name, cache.teacher(name), spec, weights, self.cache_url)
                self.run.log("extract", name, "skipped")
                return
        opts = ExtractOptions(teacher=spec["teacher"], size=spec.get("size"), name=name, resolution=spec.get("resolution"),
                              weights=weights, model_args=spec.get("model_args", {}), views=self.views,
                              seed=self.view_seed, crop_scale=self.crop_scale, unit_rows=self.unit_rows, progress=self.progress,
                              **spec.get("extract", {}))
        report = extract(data, self.cache_url, opts)
        if not report.complete:
            raise UserError(f"extract of {name} did not complete (other ranks still running?); run the pipeline again")
        self.run.log("extract", name, "ran")

    def distill_arm(self, data: str, arm: str, overrides: dict, seed: int) -> Path:
        """Distil one arm for one seed into ``<out>/runs[/<name>]/<arm>/seed-<seed>``, reusing a finished identical run."""
        folder = self.out / "runs" / self.config.get("name", "") / arm / f"seed-{seed}"
        values = {**self.config["distill"], **(overrides or {}), "data": data, "cache": self.cache_url,
                  "out": str(folder), "seed": seed, "progress": self.progress}
        cfg = DistillOptions.from_dict(values)
        want = {**json_normal(asdict(cfg)), "teachers": cfg.teachers or Cache.open(self.cache_url).teacher_names()}
        have = recorded(folder)
        if have is not None and recipe_differences(have, want):
            shutil.rmtree(folder)  # the arm's recipe changed: its old results no longer apply (the pipeline's own folder)
        elif have is not None and is_finished(folder):
            self.run.log("distill", f"{arm}/seed-{seed}", "skipped")
            return folder
        distill(cfg)  # an interrupted run continues from its last checkpoint
        self.run.log("distill", f"{arm}/seed-{seed}", "ran")
        return folder

    def evaluate(self, data: str, runs: dict[str, list[Path]]) -> Results:
        """Probe every teacher once and every run (scores kept in ``<run>/eval.json`` for reuse)."""
        originals = [name for name, spec in self.config["teachers"].items() if "same_as" not in spec]
        opts = EvalOptions(data=data, cache=self.cache_url, teachers=originals, progress=self.progress,
                           **self.config.get("eval", {}))
        ev = Evaluator(opts)
        results = ev.results()
        key = {**_recipe(asdict(opts), "progress", "students", "teachers"), "format": EVAL_FORMAT,
               "split": ev.split_rule.to_dict()}
        teachers = {}
        for name in ev.teacher_names():  # scores kept in <out>/eval-teachers/<name>.json while teacher and options hold
            store = ev.cache.teacher(name)
            identity = {**key, "cache": ev.cache.attrs["fingerprint"], "plan": ev.cache.attrs["plan"],
                        "teacher": {k: store.attrs.get(k) for k in ("model_id", "weights_sha256", "resolution", "codecs")}}
            teachers[name] = self._kept(self.out / "eval-teachers" / f"{name}.json", identity,
                                        lambda: ev.scores(ev.teacher_features(name), name), f"teacher {name}")
            results.add(name, "teacher", teachers[name])
        for arm, folders in runs.items():
            for folder in folders:
                model = f"{arm}/{folder.name}"
                saved = folder / "eval.json"
                fresh = saved.exists() and saved.stat().st_mtime >= student_weights(folder).stat().st_mtime
                scores = self._kept(saved, key, lambda: ev.student_scores(str(folder), model), model, fresh)
                results.add(arm, "student", scores)
                add_scores_to_card(folder, score_card(ev, teachers, model, scores))
        return results

    def _kept(self, path: Path, key: dict, compute, what: str, fresh: bool = True) -> dict:
        """Scores kept in ``path`` when recorded under the same ``key`` (and ``fresh``), else computed and kept."""
        record = json.loads(path.read_text()) if fresh and path.exists() else None
        if record is not None and not differences(record["options"], key):
            self.run.log("eval", what, "skipped")
            return record["scores"]
        scores = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"options": key, "scores": scores}, indent=1))  # another call may read it now
        self.run.log("eval", what, "ran")
        return scores

    def __call__(self, until: str = "eval") -> PipelineRun:
        """Every step in order up to ``until`` (one of ``STEPS``)."""
        if until not in STEPS:
            raise UserError(f"--until takes one of {', '.join(STEPS)}, got {until!r}")
        if "distill_on" in self.config["data"]:
            raise UserError("data.distill_on (students distilled on another world than the one probed) is run by "
                            "pipelines/train_rows_only.py; unic-cache run distils on the world itself")
        check_results_folder(self.out, PIPELINE_FOLDERS, "a pipeline")
        data = self.data()
        for name, spec in self.config["teachers"].items() if until != "data" else ():
            self.teacher(data, name, spec)
        stem = self.config.get("name") or "results"
        if STEPS.index(until) >= STEPS.index("distill"):
            arms = self.config.get("arms") or {"student": {}}
            seeds = self.config.get("seeds") or [0]
            runs = {arm: [self.distill_arm(data, arm, overrides, int(s)) for s in seeds] for arm, overrides in arms.items()}
            if until == "eval":
                self.run.results = self.evaluate(data, runs)
                self.run.paths = self.run.results.save(self.out, stem)
        (self.out / f"{stem}-steps.json").write_text(json.dumps(self.run.steps, indent=1))
        return self.run


STEPS = ("data", "teachers", "distill", "eval")  # a pipeline's steps, in order (teachers: trained and extracted)


def run_pipeline(config: str | Path | dict, overrides: list[str] = (), progress: bool = True,
                 until: str = "eval") -> PipelineRun:
    """Run a pipeline from a YAML file (with ``a.b=c`` overrides) or an already loaded config dict, every step up to
    ``until`` (``STEPS``: the data, the teachers trained and extracted, the students distilled, all evaluated)."""
    if not isinstance(config, dict):
        config = load_config(config, overrides)
    return Pipeline(config, progress)(until)
