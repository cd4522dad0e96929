"""The ``unic-cache`` command line: a thin typer layer over the library."""

from __future__ import annotations

import inspect
import json
from typing import TYPE_CHECKING, Annotated, Callable, Optional

import typer

from .errors import UserError
from .options.cli import options_command, user_errors

if TYPE_CHECKING:
    from .pipeline import PipelineRun

# the commands as a user meets them: try it, choose teachers and size the cache, extract and check it, distil and
# evaluate, whole pipelines; then the tools for the demo's own world
WORKFLOW = ("demo", "teachers", "plan", "extract", "info", "verify", "distill", "eval", "run", "train-teacher",
            "make-shapes")


class _InWorkflowOrder(typer.core.TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: WORKFLOW.index(n) if n in WORKFLOW else len(WORKFLOW))


_app = typer.Typer(
    help="Cache teacher features once (extract), then distil students from the cache alone.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, cls=_InWorkflowOrder,
    rich_markup_mode=None,  # help texts are plain: "[pool-F+]" is a codec spelling, not markup
)


@_app.command("teachers")
@user_errors
def teachers_cmd(
    resolution: Annotated[Optional[int], typer.Option(metavar="INT", help="Show grids at this resolution (default: 224, "
                                                                          "as extract).")] = None,
) -> None:
    """List teacher aliases with their timm ids, dims and token grids (builds no weights). Aliases run at 224 px
    (UNIC's set-up; SAM at 1024), not the hub model's native size, unless extract is given --resolution."""
    from .models.registry import FAMILIES, SHAPES, alias_shape

    rows = []
    for family in FAMILIES.values():
        for size, model_id in family.sizes.items():
            info = alias_shape(family.alias, size, resolution or family.resolution)
            about = f"{family.about}; summary: {family.summary}" if size == family.default else ""
            rows.append((family.alias, size + ("*" if size == family.default else ""), model_id, str(info.dim),
                         "x".join(str(g) for g in info.grid), str(SHAPES[model_id][2]), str(info.resolution), about))
    head = ("alias", "size", "timm id", "dim", "grid", "prefix", "res", "about")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    for row in [head, *rows]:  # text columns left-aligned, numbers right-aligned, every row to the same widths
        cells = [v.rjust(w) if i in (3, 4, 5, 6) else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))]
        typer.echo(" ".join(cells) + "  " + row[-1])
    typer.echo("* default size. prefix: CLS and register tokens, never stored as patch tokens. Any other model: "
               "--teacher timm:<name>, local-dir:FOLDER (a timm / Hugging Face model folder, e.g. a student's model/) "
               "or hf-hub:REPO, at its own resolution unless --resolution.")


def _extract(opts, data: str, cache: str) -> None:
    from .extraction.options import prepare

    for one, prepared in prepare(data, cache, opts):  # before torch is imported: options, weights, the cache, its dataset
        if prepared.finished is not None:
            typer.echo(f"{prepared.finished.name}: already complete in {cache} ({prepared.finished.units} units); "
                       "nothing to do")
            continue
        from .extraction.runner import extract

        r = extract(data, cache, one, prepared)
        state = "complete" if r.complete else "incomplete (other ranks still working, or run again to resume)"
        typer.echo(f"{r.teacher}: {r.units_done_now} units written now, {r.units_done_before} before, of {r.units_total}; "
                   f"{r.samples} samples in {r.seconds:.1f}s ({r.samples_per_s:.1f} samples/s); "
                   f"{r.bad_samples} bad samples skipped; {state}")


def _distill(opts) -> None:
    from pathlib import Path

    from .distillation.runs import check_run_folder

    check_run_folder(Path(opts.out))  # before torch is imported: a user's folder, a wrong cache or teacher is named at once
    opts.check()
    from .distillation.recipe import Distiller

    distiller = Distiller(opts)
    last = distiller.run()
    if distiller.rank == 0:
        state = "already finished (nothing to do)" if distiller.finished_before else "done"
        typer.echo(f"{state}: step {last.get('step')}, loss {last.get('loss', float('nan')):.4f}; student in "
                   f"{opts.out}/model (timm.create_model('local-dir:{opts.out}/model', pretrained=True))")


def _eval(opts, out: str) -> None:
    from .evaluation.results import check_results_folder

    check_results_folder(out)  # before any work: never into a dataset folder
    from .evaluation.evaluate import evaluate

    results = evaluate(opts)
    paths = results.save(out)
    typer.echo(results.markdown())
    typer.echo(f"table: {paths['markdown']}  json: {paths['json']}  chart: {paths['chart']}")


def _train_teacher(opts) -> None:
    from .evaluation.train_teacher import train_teacher

    record = train_teacher(opts)
    scores = ", ".join(f"{t} {v:.1f}" for t, v in record["val_score"].items())
    typer.echo(f"wrote {opts.out} (val: {scores})\nuse it with: {record['extract']}")


def _make_shapes(opts) -> None:
    from .shapes import make_shapes

    paths = make_shapes(opts.out, n=opts.n, size=opts.size, seed=opts.seed, shard_size=opts.shard_size,
                        split_seed=opts.split_seed)
    typer.echo(f"wrote {opts.n} samples in {len(paths)} shards to {opts.out}")


def _demo(opts) -> None:
    from .demo import demo_config, demo_summary, run_demo

    _report(run_demo(opts.out, opts.quick, opts.progress))
    typer.echo(demo_summary(demo_config(opts.out, opts.quick)))


def _info(opts) -> None:
    from .cache.info import cache_info, fidelity_text
    from .cache.sizing import human
    from .cache.store import Cache

    opts.check()
    cache = Cache.open(opts.cache)
    dataset, teachers = cache_info(cache)
    if opts.json:
        typer.echo(json.dumps({"dataset": dataset, "teachers": teachers}, indent=1))
        return
    if opts.bad:
        for row, reason in sorted(cache.bad_reasons.items()):
            typer.echo(f"{cache.keys[row]}\t{reason}")
        return
    reasons = dataset.pop("bad reasons")
    width = max(map(len, dataset))
    dataset["bad samples"] = f"{dataset['bad samples']:,}" + "".join(
        f"\n{'':{width}}  {count:,} x {reason}" for reason, count in list(reasons.items())[:5]) + (
        f"\n{'':{width}}  ... (every one: unic-cache info {opts.cache} --bad)" if len(reasons) > 5 else "")
    dataset["samples"] = f"{dataset['samples']:,}"
    dataset["crop scale"] = " to ".join(f"{v:g}" for v in dataset["crop scale"])
    for key, value in dataset.items():
        typer.echo(f"{key:<{width}}  {value}")
    if not teachers:
        typer.echo("no teachers yet")
        return
    cols = ("teacher", "model", "dim", "grid", "views", "codec", "on disk", "per sample-view", "vs float32", "units", "state")
    cells = [[t["teacher"], t["model"], str(t["dim"]), t["grid"] or "-", str(t["views"]), t["codec"], human(t["bytes on disk"]),
              human(t["bytes per sample-view"]), f"{t['vs float32']:.3f}", f"{t['units done']}/{t['units']}",
              "complete" if t["complete"] else "incomplete"] for t in teachers]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    typer.echo("")
    typer.echo(" | ".join(c.ljust(w) for c, w in zip(cols, widths)))
    typer.echo("-+-".join("-" * w for w in widths))
    for row in cells:
        typer.echo(" | ".join(v.ljust(w) for v, w in zip(row, widths)))
    typer.echo("\nprovenance:")
    for t in teachers:
        args = ", ".join(f"{k}={v}" for k, v in t["model args"].items())
        sha = f" (sha256 {t['weights sha256'][:16]})" if t["weights sha256"] else ""
        weights = t["weights"].rsplit("/", 1)[-1]  # the file's name; its path: info --json
        typer.echo(f"  {t['teacher']}: timm {t['model']}{f' ({args})' if args else ''}, weights {weights}{sha}, "
                   f"{t['resolution']} px, {t['summary']} summary")
    for t in teachers:
        for warning in t["warnings"]:
            typer.echo(f"warning: teacher {t['teacher']}: {warning}", err=True)
    lines = [f"  {t['teacher']} {kind}: {fidelity_text(f)}" for t in teachers for kind, f in t["fidelity"].items()]
    if lines:
        typer.echo("\ncodec fidelity (calibration sample-views, against the teacher's float32 forward):")
        typer.echo("\n".join(lines))


def _plan(opts) -> None:
    from .plan import plan_report

    for line in plan_report(opts):
        typer.echo(line)


def _verify(opts) -> None:
    from .cache.repair import verify
    from .cache.sources import open_source

    opts.check()
    verdict = verify(opts.cache, open_source(opts.data) if opts.data else None, opts.repair, opts.progress)
    for line in verdict.notes:
        typer.echo(line, err=True)
    for line in verdict.problems:
        typer.echo(f"problem: {line}", err=True)
    for line in verdict.repaired:
        typer.echo(f"repaired: {line}")
    for line in verdict.not_repaired:
        typer.echo(f"not repaired: {line}", err=True)
    if verdict.error:
        raise UserError(verdict.error)
    if set(verdict.problems) - set(verdict.beyond_repair) and not opts.repair:
        typer.echo(f"run `unic-cache verify {opts.cache} --repair` to repair what can be", err=True)
    if not verdict.ok:
        raise typer.Exit(1)
    if verdict.pending:
        for line in verdict.pending:
            typer.echo(f"to do: {line}")
        typer.echo(f"now run the same `unic-cache extract ... --cache {opts.cache}` command(s) to rewrite what is to do")
        return
    typer.echo(f"ok: {opts.cache} verified")


def _extract_args() -> list:
    keyword = inspect.Parameter.KEYWORD_ONLY
    return [
        inspect.Parameter("data", keyword, annotation=Annotated[str, typer.Argument(
            metavar="DATA", help="Input: webdataset .tar or Hugging Face .parquet shards (path, data-{000..009}.tar, glob, fsspec URL, "
                 "folder of shards) or an image folder.")]),
        inspect.Parameter("cache", keyword, annotation=Annotated[str, typer.Option(
            "--cache", metavar="PATH", help="Cache path or fsspec URL (created on first use, only where nothing else is).")])]


def _eval_args() -> list:
    return [inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, default="eval", annotation=Annotated[str, typer.Option(
        metavar="FOLDER", show_default=False, help="Folder for results.json, results.md and results.png. (default: eval)")])]


# name -> (module and options class, what runs it, help, extra parameters): registered on first use, so that a
# command imports only its own options (``unic-cache teachers`` and ``plan`` never import torch)
OPTION_COMMANDS: dict[str, tuple[str, str, Callable, str, Callable[[], list] | None]] = {
    "extract": ("extraction.options", "ExtractOptions", _extract,
                "Run a teacher once over every (sample, view) and store its features. Re-run to resume.", _extract_args),
    "distill": ("distillation.options", "DistillOptions", _distill,
                "Train a student from the cache alone (no teacher is loaded). Runs under torchrun for DDP.", None),
    "eval": ("evaluation.options", "EvalOptions", _eval, "Probe students and cached teachers per task: kNN, linear probe "
             "and k-means NMI (classes), ridge R² (targets).", _eval_args),
    "train-teacher": ("evaluation.options", "TeacherTrainOptions", _train_teacher, "Train a small specialised teacher on "
                      "some tasks (never on eval's test rows); prints the extract command.", None),
    "make-shapes": ("shapes", "ShapesOptions", _make_shapes, "Write a procedural multi-task image world (shapes, "
                    "colours, textures, counts, sizes, positions).", None),
    "demo": ("demo", "DemoOptions", _demo, "Offline end to end: a shapes world, specialised teachers, one cache, a "
             "distilled student, the evaluation.", None),
    "info": ("cache.options", "InfoOptions", _info, "Summarise a cache: samples, bad samples, views, integrity, and per "
             "teacher dims, grid, codec, bytes, completeness.", None),
    "plan": ("plan", "PlanOptions", _plan, "Bytes per teacher and in total for a dataset, teachers, views and codecs, and "
             "the read bandwidth stage 2 needs; nothing is extracted.", None),
    "verify": ("cache.options", "VerifyOptions", _verify, "Decode every chunk of every array (checksums), check "
               "progress, statistics, view plan, index and fingerprint; with --data, every image's digest. Exit 1 on "
               "any problem (after --repair: 0 once repaired).", None),
}
_registered: set[str] = set()


def register(names=None) -> typer.Typer:
    """Register the option commands ``names`` (all when None) on the app, once each, in their listed order; the app."""
    import importlib

    for name in OPTION_COMMANDS if names is None else names:
        if name in _registered:
            continue
        module, cls, run, doc, extra = OPTION_COMMANDS[name]
        options_command(_app, name, getattr(importlib.import_module(f".{module}", __package__), cls), run, doc,
                        extra() if extra else None)
        _registered.add(name)
    return _app


def __getattr__(name: str):
    if name == "app":  # the whole CLI, for CliRunner and other callers in Python
        return register()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@_app.command("run")
@user_errors
def run_cmd(
    pipeline: Annotated[str, typer.Argument(metavar="PIPELINE", show_default=False, help="A pipeline YAML (see "
                                            "pipelines/): data, teachers, cache, distill arms, seeds, eval.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Override a key, e.g. --set "
                                                      "seeds=[0] --set distill.epochs=2 (repeatable).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", show_default=False,
                                           help="Show progress bars. (default: --progress)")] = True,
    until: Annotated[str, typer.Option(metavar="STEP", show_default=False, help="Stop after this step: data, teachers (trained and "
                                                            "extracted into the cache), distill, or eval (the whole "
                                                            "pipeline). (default: eval)")] = "eval",
) -> None:
    """Run a pipeline: make data, train/extract missing teachers (never re-extract), distil every arm, evaluate."""
    from .pipeline import run_pipeline

    _report(run_pipeline(pipeline, set_ or [], progress, until))


def _report(run: "PipelineRun") -> None:
    """Print a pipeline's table, what ran and what was reused, and where its outputs are."""
    ran = [f"{step} {what}" for step, what, status in run.steps if status == "ran"]
    skipped = [f"{step} {what}" for step, what, status in run.steps if status == "skipped"]
    if run.results is not None:
        typer.echo("\n" + run.results.markdown())
    typer.echo(f"ran: {', '.join(ran) or 'nothing'}")
    if skipped:
        typer.echo(f"reused: {', '.join(skipped)}")
    if run.paths:
        typer.echo(f"table: {run.paths['markdown']}\nchart: {run.paths['chart']}\njson: {run.paths['json']}")
    typer.echo(f"artefacts (data, teachers, cache, runs): {run.out}")


def main() -> None:
    """The ``unic-cache`` command: only the command named is registered (every one for ``--help``)."""
    import os
    import sys

    from .crashpoints import install

    install()  # crash tests only: off unless UNIC_CACHE_CRASH_ROOT is set
    # before torch loads OpenMP: threads that wait sleep rather than spin on cores that others need
    # (runtime.share_cores; runtime.THREADS_ENV spelled out, as runtime imports torch and `teachers` must not)
    if os.environ.get("UNIC_CACHE_THREADS") != "torch":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    name = next((a for a in sys.argv[1:2] if not a.startswith("-")), None)
    if name in ("teachers", "run"):
        register([])
    else:
        register([name] if name in OPTION_COMMANDS else None)
    _app()
