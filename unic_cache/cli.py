"""The ``unic-cache`` command line: a thin typer layer over the library."""

from __future__ import annotations

import errno
import functools
import json
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .errors import UserError, yaml_value

if TYPE_CHECKING:
    from .pipeline import PipelineRun

app = typer.Typer(
    help="Cache teacher features once (extract), then distil students from the cache alone.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


def _one_line(exc: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker wrapped it in a traceback."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("Caught "):
        return lines[-1].split(": ", 1)[-1]
    return lines[0] if lines else type(exc).__name__


def user_errors(fn):
    """Print a UserError as one line on stderr and exit with code 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {_one_line(exc)}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            typer.echo(f"error: no space left on the device ({exc.filename or 'writing'}); free space and run the same "
                       "command again: it resumes where it stopped", err=True)
            raise typer.Exit(2) from None

    return wrapper


def parse_model_args(items: list[str]) -> dict:
    """``["depth=2", "qkv_bias=false"]`` -> ``{"depth": 2, "qkv_bias": False}`` (values read as YAML scalars)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--model-arg takes KEY=VALUE, got {item!r}")
        out[key] = yaml_value(value, f"--model-arg {item}")
    return out


@app.command("make-shapes")
@user_errors
def make_shapes_cmd(
    out: Annotated[str, typer.Argument(help="Folder to write shapes-000000.tar ... into.")],
    n: Annotated[int, typer.Option(help="Number of samples.")] = 2000,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="World seed; the same seed gives the same bytes.")] = 0,
    shard_size: Annotated[int, typer.Option(help="Samples per tar shard.")] = 500,
) -> None:
    """Write a procedural multi-task image world (shapes, colours, textures, counts, sizes, positions)."""
    from .shapes import make_shapes

    paths = make_shapes(out, n=n, size=size, seed=seed, shard_size=shard_size)
    typer.echo(f"wrote {n} samples in {len(paths)} shards to {out}")


@app.command("teachers")
def teachers_cmd(
    resolution: Annotated[Optional[int], typer.Option(help="Show grids at this resolution.")] = None,
) -> None:
    """List teacher aliases with their timm ids, dims, token grids and resolutions (builds no weights)."""
    import timm
    import torch

    typer.echo(f"{'alias':<11} {'size':<7} {'timm id':<42} {'dim':>5} {'grid':>6} {'res':>4}  about")
    from .models.teachers import FAMILIES

    for family in FAMILIES.values():
        for size, model_id in family.sizes.items():
            with torch.device("meta"):
                kwargs = {"img_size": resolution} if resolution else {}
                model = timm.create_model(model_id, pretrained=False, num_classes=0, **kwargs)
            res = resolution or model.pretrained_cfg["input_size"][-1]
            grid = "x".join(str(g) for g in model.patch_embed.grid_size)
            mark = "*" if size == family.default else " "
            typer.echo(f"{family.alias:<11} {size + mark:<7} {model_id:<42} {model.num_features:>5} {grid:>6} {res:>4}  {family.about}")
    typer.echo("* default size. Any other timm model: --teacher timm:<name>.")


@app.command("extract")
@user_errors
def extract_cmd(
    data: Annotated[str, typer.Argument(help="Input: tar shards (path, data-{000..009}.tar, glob, fsspec URL, folder of .tar) or an image folder.")],
    cache: Annotated[str, typer.Option("--cache", help="Cache path or fsspec URL (created on first use, only where nothing else is).")],
    teacher: Annotated[str, typer.Option(help="Teacher alias (see `unic-cache teachers`) or timm:<model name>.")],
    size: Annotated[Optional[str], typer.Option(help="Alias size: small, base, large, ...")] = None,
    name: Annotated[Optional[str], typer.Option(help="Name in the cache (default: the alias, with -SIZE when given).")] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Input resolution (default: the model's).")] = None,
    weights: Annotated[Optional[str], typer.Option(help="Weights: a .safetensors/.pth file (must fit the encoder exactly), 'random' or 'random:SEED', or the hub when omitted.")] = None,
    model_arg: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE passed to timm.create_model, e.g. depth=2 (repeatable).")] = None,
    views: Annotated[int, typer.Option(help="Augmented views per sample (view 0 is the eval view).")] = 8,
    seed: Annotated[int, typer.Option(help="View-plan seed.")] = 0,
    crop_scale: Annotated[tuple[float, float], typer.Option(help="Area range of the random resized crops (views 1..K-1), e.g. 0.35 1 for small images.")] = (0.08, 1.0),
    patch: Annotated[bool, typer.Option("--patch/--no-patch", help="Store patch tokens as well as the summary.")] = True,
    codec: Annotated[str, typer.Option(help="Feature codec: f16-zstd or f32-zstd.")] = "f16-zstd",
    batch_size: Annotated[int, typer.Option(help="Images (sample-views) per teacher forward.")] = 64,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes for decode + replay (default: 0 on CPU, min(8, cores-1) on GPU).")] = None,
    shard_mb: Annotated[float, typer.Option(help="Uncompressed size of one zarr shard (one unit of work).")] = 256.0,
    unit_rows: Annotated[Optional[int], typer.Option(help="Rows per zarr shard (overrides --shard-mb).")] = None,
    rank: Annotated[Optional[int], typer.Option(help="This process's rank (default: $RANK or 0).")] = None,
    world_size: Annotated[Optional[int], typer.Option(help="Number of processes (default: $WORLD_SIZE or 1).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Run a teacher once over every (sample, view) and store its features. Re-run to resume."""
    from .extraction.runner import ExtractOptions, extract

    opts = ExtractOptions(teacher=teacher, size=size, name=name, resolution=resolution, weights=weights,
                          model_args=parse_model_args(model_arg or []), views=views,
                          seed=seed, crop_scale=crop_scale, patch=patch, codec=codec, batch_size=batch_size, workers=workers, shard_mb=shard_mb,
                          unit_rows=unit_rows, rank=rank, world_size=world_size, device=device, progress=progress)
    r = extract(data, cache, opts)
    state = "complete" if r.complete else "incomplete (other ranks still working, or run again to resume)"
    typer.echo(f"{r.teacher}: {r.units_done_now} units written now, {r.units_done_before} before, of {r.units_total}; "
               f"{r.samples} samples in {r.seconds:.1f}s ({r.samples_per_s:.1f} samples/s); "
               f"{r.bad_samples} bad samples skipped; {state}")


@app.command("distill")
@user_errors
def distill_cmd(
    data: Annotated[Optional[str], typer.Argument(help="The dataset the cache was made from (same spec as for extract).")] = None,
    cache: Annotated[Optional[str], typer.Option(help="Cache path or URL.")] = None,
    out: Annotated[Optional[str], typer.Option(help="Run folder: checkpoints, metrics.jsonl, student.safetensors.")] = None,
    config: Annotated[Optional[str], typer.Option(help="YAML file with any of these options; flags override it.")] = None,
    teachers: Annotated[Optional[str], typer.Option(help="Comma-separated subset of the cached teachers (default: all).")] = None,
    student: Annotated[Optional[str], typer.Option(help="timm ViT name, e.g. vit_small_patch16_224.")] = None,
    img_size: Annotated[Optional[int], typer.Option(help="Student input resolution.")] = None,
    model_arg: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE for timm.create_model of the student (repeatable).")] = None,
    init: Annotated[Optional[str], typer.Option(help="Initial encoder weights (.safetensors).")] = None,
    lop_blocks: Annotated[Optional[str], typer.Option(help="Blocks feeding the projector ladder: all, last or i,j,k (the last block is always included).")] = None,
    loss: Annotated[Optional[str], typer.Option(help="unic (0.5 cos + 0.5 smooth-L1) or gauss (Gaussian NLL).")] = None,
    norm: Annotated[Optional[str], typer.Option(help="Target standardisation: standard, phis or none.")] = None,
    teacher_drop: Annotated[Optional[float], typer.Option(help="Probability of dropping each non-max-loss teacher.")] = None,
    views: Annotated[Optional[int], typer.Option(help="Use only the first N cached views of each sample (default: all).")] = None,
    online: Annotated[Optional[bool], typer.Option("--online/--cached", help="Reference mode: run the teachers on fresh views every step instead of reading the cache (slow).")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Training length in epochs (or --steps).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training length in optimizer steps (or --epochs).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Samples per step per process.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate for a global batch of 256 (scaled linearly).")] = None,
    warmup: Annotated[Optional[float], typer.Option(help="Warm-up as a fraction of all steps.")] = None,
    drop_path: Annotated[Optional[float], typer.Option(help="Stochastic depth rate of the student.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader workers per process.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the student init, data order and teacher dropping.")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Checkpoint every N steps (0: only at the end).")] = None,
    resume: Annotated[Optional[bool], typer.Option("--resume/--no-resume", help="Continue from the last checkpoint in --out.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda.")] = None,
    progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress")] = None,
) -> None:
    """Train a student from the cache alone (no teacher is loaded). Runs under torchrun for DDP."""
    import yaml

    from .distillation.recipe import DistillConfig, distill

    values: dict = {}
    if config:
        try:
            with open(config) as f:
                values = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"cannot read --config {config}: {exc}") from None
    flags = dict(data=data, cache=cache, out=out, student=student, img_size=img_size, init=init, lop_blocks=lop_blocks,
                 loss=loss, norm=norm, teacher_drop=teacher_drop, views=views, online=online, epochs=epochs, steps=steps, batch_size=batch_size,
                 lr=lr, warmup=warmup, drop_path=drop_path, workers=workers, seed=seed,
                 checkpoint_every=checkpoint_every, resume=resume, device=device, progress=progress,
                 teachers=teachers.split(",") if teachers else None,
                 model_args=parse_model_args(model_arg) if model_arg else None)
    values.update({k: v for k, v in flags.items() if v is not None})
    if not values.get("data") or not values.get("cache"):
        raise UserError("distill needs DATA and --cache (as flags or in --config)")
    last = distill(DistillConfig.from_dict(values))
    typer.echo(f"done: step {last.get('step')}, loss {last.get('loss', float('nan')):.4f}; "
               f"student in {values.get('out', DistillConfig.out)}/student.safetensors")


@app.command("eval")
@user_errors
def eval_cmd(
    data: Annotated[str, typer.Argument(help="The labelled dataset the cache was made from (shapes .json labels, .cls, or class folders).")],
    cache: Annotated[str, typer.Option(help="Cache path or URL: teacher features come from its view 0.")],
    student: Annotated[Optional[list[str]], typer.Option(help="A distill run folder, or NAME=FOLDER (repeatable).")] = None,
    teachers: Annotated[Optional[str], typer.Option(help="Comma-separated cached teachers (default: all; 'none' for none).")] = None,
    tasks: Annotated[Optional[str], typer.Option(help="Comma-separated tasks (default: all of the dataset's).")] = None,
    out: Annotated[str, typer.Option(help="Folder for results.json, results.md and results.png.")] = "eval",
    split_seed: Annotated[int, typer.Option(help="Seed of the train/val/test split (hash of each key).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per student forward.")] = 128,
    workers: Annotated[int, typer.Option(help="DataLoader workers for decoding.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Probe students and cached teachers per task: kNN, linear probe and k-means NMI (classes), ridge R² (targets)."""
    from pathlib import Path

    from .evaluation.evaluate import EvalOptions, evaluate

    students = {}
    for item in student or []:
        name, sep, folder = item.partition("=")
        students[name if sep else Path(item).name] = folder if sep else item
    chosen = None if teachers is None else ([] if teachers == "none" else teachers.split(","))
    results = evaluate(EvalOptions(data=data, cache=cache, students=students, teachers=chosen,
                                   tasks=tasks.split(",") if tasks else None, split_seed=split_seed,
                                   batch_size=batch_size, workers=workers, device=device, progress=progress))
    paths = results.save(out)
    typer.echo(results.markdown())
    typer.echo(f"table: {paths['markdown']}  json: {paths['json']}  chart: {paths['chart']}")


@app.command("train-teacher")
@user_errors
def train_teacher_cmd(
    data: Annotated[str, typer.Argument(help="A labelled dataset (e.g. a shapes world from make-shapes).")],
    out: Annotated[str, typer.Option(help="The .safetensors file to write (a .json beside it records the recipe).")],
    task: Annotated[list[str], typer.Option(help="A task to train on (repeatable), e.g. --task shape --task texture.")],
    arch: Annotated[str, typer.Option(help="timm ViT architecture.")] = "vit_tiny_patch16_224",
    img_size: Annotated[int, typer.Option(help="Input resolution.")] = 32,
    model_arg: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE for timm.create_model, e.g. depth=4 (repeatable).")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 64,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Initialisation and order seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Train a small specialised teacher on some tasks (never on eval's test rows); prints the extract command."""
    from .evaluation.train_teacher import TeacherTrainConfig, train_teacher

    record = train_teacher(TeacherTrainConfig(data=data, out=out, tasks=task, arch=arch, img_size=img_size,
                                              model_args=parse_model_args(model_arg or []), epochs=epochs,
                                              batch_size=batch_size, lr=lr, seed=seed, device=device, progress=progress))
    scores = ", ".join(f"{t} {v:.1f}" for t, v in record["val_score"].items())
    typer.echo(f"wrote {out} (val: {scores})\nuse it with: {record['extract']}")


@app.command("run")
@user_errors
def run_cmd(
    pipeline: Annotated[str, typer.Argument(help="A pipeline YAML (see pipelines/): data, teachers, cache, distill arms, seeds, eval.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key, e.g. --set seeds=[0] --set distill.epochs=2 (repeatable).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Run a pipeline: make data, train/extract missing teachers (never re-extract), distil every arm, evaluate."""
    from .pipeline import run_pipeline

    _report(run_pipeline(pipeline, set_ or [], progress))


@app.command("demo")
@user_errors
def demo_cmd(
    out: Annotated[str, typer.Option(help="Folder for the world, teachers, cache, runs and results.")] = "demo",
    quick: Annotated[bool, typer.Option("--quick", help="A much smaller, faster run (a smoke test, not a benchmark).")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Offline end to end: a shapes world, specialised teachers, one cache, a distilled student, the evaluation."""
    from .demo import run_demo

    _report(run_demo(out, quick, progress))


def _report(run: "PipelineRun") -> None:
    """Print a pipeline's table, what ran and what was reused, and where its outputs are."""
    ran = [f"{step} {what}" for step, what, status in run.steps if status == "ran"]
    skipped = [f"{step} {what}" for step, what, status in run.steps if status == "skipped"]
    typer.echo("\n" + run.results.markdown())
    typer.echo(f"ran: {', '.join(ran) or 'nothing'}")
    if skipped:
        typer.echo(f"reused: {', '.join(skipped)}")
    typer.echo(f"table: {run.paths['markdown']}\nchart: {run.paths['chart']}\njson: {run.paths['json']}\n"
               f"artefacts (data, teachers, cache, runs): {run.out}")


@app.command("info")
@user_errors
def info_cmd(
    cache: Annotated[str, typer.Argument(help="Cache path or URL.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Summarise a cache: samples, bad samples, views, and per teacher dims, grid, codec, bytes, completeness."""
    from .cache.audit import cache_info
    from .cache.store import Cache

    dataset, teachers = cache_info(Cache.open(cache))
    if as_json:
        typer.echo(json.dumps({"dataset": dict(dataset), "teachers": teachers}, indent=1))
        return
    width = max(len(k) for k, _ in dataset)
    for key, value in dataset:
        typer.echo(f"{key:<{width}}  {value}")
    if teachers:
        cols = list(teachers[0])
        cells = [[str(t[c]) for c in cols] for t in teachers]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        typer.echo("")
        typer.echo(" | ".join(c.ljust(w) for c, w in zip(cols, widths)))
        typer.echo("-+-".join("-" * w for w in widths))
        for row in cells:
            typer.echo(" | ".join(v.ljust(w) for v, w in zip(row, widths)))
    else:
        typer.echo("no teachers yet")


@app.command("verify")
@user_errors
def verify_cmd(
    cache: Annotated[str, typer.Argument(help="Cache path or URL.")],
    data: Annotated[Optional[str], typer.Option(help="The dataset: check it is the one the cache was made for, and every image's digest.")] = None,
    repair: Annotated[bool, typer.Option("--repair", help="Unflag damaged units (re-run the same extract to rewrite them), rewrite a damaged view plan, rebuild a damaged index from --data.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Decode every chunk of every array (checksums), check progress, statistics, view plan, index and
    fingerprint; with --data, every image's digest. Exit 1 on any problem (after --repair: 0 once repaired)."""
    from .cache.audit import find_damage, repair_cache
    from .cache.sources import open_source
    from .cache.store import Cache

    opened = Cache.open(cache, mode="a" if repair else "r")
    source = open_source(data) if data else None
    damage = find_damage(opened, source, progress)
    for p in damage.problems:
        typer.echo(p if p.startswith("note:") else f"problem: {p}", err=True)
    problems = [p for p in damage.problems if not p.startswith("note:")]
    if repair and problems:
        for action in repair_cache(opened, damage, source):
            typer.echo(f"repaired: {action}")
        typer.echo(f"now run the same `unic-cache extract ... --cache {cache}` command(s) to rewrite what was unflagged")
        return
    if problems:
        raise typer.Exit(1)
    typer.echo(f"ok: {cache} verified")


def main() -> None:
    app()
