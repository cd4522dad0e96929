"""Fault injection: random SIGKILLs of extract and distill, then the same command again, concurrent plain extracts
racing to create one new cache, and random damage done to a finished cache and run folder as an adversary would;
every outcome is compared bit for bit with an uninterrupted single run.

    python pipelines/bench/faults_bench.py --kills 10 --races 20 --write
    python pipelines/bench/faults_bench.py --kills 5 --races 20 --s3 --write   # caches on a loopback S3 server
    python pipelines/bench/faults_bench.py --kills 0 --races 0 --damage 240 --write   # damage classes only
    python pipelines/bench/faults_bench.py --kills 0 --races 0 --every-point --write  # a kill at every point

``--every-point``: each command below is killed just before each of its persistence points in turn (every file
write, rename, delete and new folder it makes under its target: ``unic_cache.crashpoints``), then run again (and
the commands after it), and the result compared file by file with the uninterrupted run's: extract into a new
cache, a second teacher, views added to a teacher, ``verify --repair`` of a deleted shard (then the same extract),
and distill (``--every-point-step K`` takes every K-th point only).

``--damage N``: N trials, each one fault of a class drawn at random (an edited attribute or array metadata, an
unparsable or deleted ``zarr.json``, a flipped byte, a truncated, deleted or swapped chunk or shard, a damaged
seal, a run folder left as a kill during each of its files leaves it, a user's file where the tool writes), then
what a user does: ``verify``; if it finds something, ``verify --repair`` and the same extract; each outcome is
caught-and-repaired bit-identical, refused in one line (or "not repaired", exit 1), harmless (nothing the data
means changed), or silent (verify said ok, or repair said done, and the data differ): the target is 0 silent,
0 tracebacks and no user file touched.

With ``--s3`` every cache (the killed extracts' and the racing ones) lives on a moto S3 server started on
127.0.0.1 by this script (the dev extra); the uninterrupted reference stays on local disk.

Prints "N killed / N bit-identical" per stage and the race outcomes (bit-identical, refused in one line,
or broken), plus the temp files and claims left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import fsspec
import numpy as np
import timm
import torch
import zarr
from safetensors.torch import load_file, save_file

from report import heading, publish, start_s3, timed
from unic_cache import make_shapes
from unic_cache.cache.audit import array_values
from unic_cache.cache.claims import CLAIM_DIR, temp_stem
from unic_cache.distillation.exported import student_weights
from unic_cache.distillation.run_files import tmp_name

ARCH = "vit_tiny_patch16_224"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "unic_cache", *args]


def identical_caches(a: str, b: str) -> bool:
    x, y = array_values(zarr.open_group(str(a), mode="r")), array_values(zarr.open_group(str(b), mode="r"))
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k], equal_nan=True) for k in x)


def identical_students(a: Path, b: Path) -> bool:
    x, y = (load_file(str(student_weights(run))) for run in (a, b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def leftovers(url: str) -> int:
    """Temp files of interrupted writes and claim files still present under a cache (any fsspec URL)."""
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    files = fs.find(root) if fs.exists(root) else []
    return sum(1 for f in files if temp_stem(f.rsplit("/", 1)[-1]) is not None or f"/{CLAIM_DIR}/" in f)


def seconds_of(cmd: list[str]) -> float:
    """Seconds one run of the command ``cmd`` takes (it must succeed)."""
    return timed(lambda: subprocess.run(cmd, check=True, capture_output=True))[0]


def kill_then_finish(cmd: list[str], resume: list[str], at: float) -> tuple[bool, int]:
    """Start ``cmd``, SIGKILL it after ``at`` seconds (unless it ended), then run ``resume`` to the end."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=at)
        killed = False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = True
    done = subprocess.run(resume, capture_output=True, text=True)
    return killed, done.returncode


def documents(root: Path) -> dict[str, object]:
    """Every ``zarr.json`` under a cache, parsed (volatile attributes dropped), by path: what the data means."""
    from unic_cache.cache.seal import VOLATILE

    out = {}
    for path in sorted(root.rglob("zarr.json")):
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            doc = "unreadable"
        if isinstance(doc, dict) and isinstance(doc.get("attributes"), dict):
            doc["attributes"] = {k: v for k, v in doc["attributes"].items() if k not in VOLATILE}
        out[str(path.relative_to(root))] = doc
    return out


def same_cache(reference: Path, cache: Path) -> bool:
    """Arrays value for value and metadata document for document."""
    return identical_caches(str(reference), str(cache)) and documents(reference) == documents(cache)


def _mutate(value, rng: random.Random):
    """A plausible edit of one JSON leaf."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + rng.choice((1, -1, 7))
    if isinstance(value, float):
        return value * rng.choice((0.5, 2.0)) + 0.01
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return value[:-1] if value and rng.random() < 0.5 else value + [value[-1] if value else 0]
    return 0


def _leaves(doc, path=()):
    if isinstance(doc, dict) and doc:
        for k, v in doc.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(doc, list) and doc and all(isinstance(v, (dict, list)) for v in doc):
        for i, v in enumerate(doc):
            yield from _leaves(v, (*path, i))
    else:
        yield path


def edit_attribute(cache: Path, rng: random.Random) -> str:
    files = sorted(cache.rglob("zarr.json"))
    path = rng.choice(files)
    doc = json.loads(path.read_text())
    leaf = rng.choice(list(_leaves(doc)))
    node = doc
    for key in leaf[:-1]:
        node = node[key]
    node[leaf[-1]] = _mutate(node[leaf[-1]], rng)
    path.write_text(json.dumps(doc, indent=2))
    return f"{path.relative_to(cache)}:{'.'.join(map(str, leaf))}"


def chunk_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file() and p.name not in ("zarr.json", "seal.json"))


def damage_chunk(cache: Path, rng: random.Random, how: str) -> str:
    files = chunk_files(cache)
    path = rng.choice(files)
    data = path.read_bytes()
    if how == "flip":
        i = rng.randrange(len(data))
        path.write_bytes(data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:])
    elif how == "truncate":
        path.write_bytes(data[:rng.randrange(len(data))])
    elif how == "delete":
        path.unlink()
    else:  # swap with another chunk or shard of the same array
        array = str(path.relative_to(cache)).split("/c/")[0]
        others = [f for f in files if f != path and str(f.relative_to(cache)).split("/c/")[0] == array]
        if not others:
            return damage_chunk(cache, rng, "flip")
        other = rng.choice(others)
        other_data = other.read_bytes()
        other.write_bytes(data)
        path.write_bytes(other_data)
        return f"swap {path.relative_to(cache)} <-> {other.relative_to(cache)}"
    return f"{how} {path.relative_to(cache)}"


def damage_metadata_file(cache: Path, rng: random.Random, how: str) -> str:
    pool = sorted(cache.rglob("seal.json" if how.startswith("seal") else "zarr.json"))
    path = rng.choice(pool)
    if how.endswith("delete"):
        path.unlink()
    else:  # unparsable (cut) or, for a seal, one byte flipped
        data = path.read_bytes()
        i = rng.randrange(len(data))
        path.write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1:] if how == "seal flip" else data[:i])
    return f"{how} {path.relative_to(cache)}"


CACHE_FAULTS = ("attribute edit", "zarr.json unparsable", "zarr.json delete", "chunk flip", "chunk truncate",
                "chunk delete", "chunk swap", "seal flip", "seal delete")
RUN_FAULTS = ("kill while writing config.json", "kill while writing heads", "kill while writing the model",
              "kill while writing a checkpoint", "kill while rewriting metrics")
USER_FAULTS = ("user file in --out", "user file in the model folder", "user config.json in --out", "user file as --cache")


def _invoke(args: list[str]):
    """(exit code, stdout, stderr, traceback?) of one CLI call, in this process."""
    from typer.testing import CliRunner

    from unic_cache.cli import app

    result = CliRunner().invoke(app, args)
    crashed = (result.exception is not None and not isinstance(result.exception, SystemExit)) or "Traceback" in result.output
    return result.exit_code, result.stdout, result.stderr, crashed


def one_line(code: int, err: str) -> bool:
    """A refusal as the CLI makes it: exit 2, one ``error:`` line, last."""
    lines = err.strip().splitlines()
    return code == 2 and bool(lines) and lines[-1].startswith("error: ") and sum(l.startswith("error: ") for l in lines) == 1


def cache_trial(fault: str, reference: Path, cache: Path, extract_args: list[str], data: Path,
                rng: random.Random) -> tuple[str, str]:
    """(outcome, what was done) of one fault on a copy of the reference cache."""
    shutil.copytree(reference, cache)
    if fault == "attribute edit":
        what = edit_attribute(cache, rng)
    elif fault.startswith("chunk"):
        what = damage_chunk(cache, rng, fault.split()[1])
    else:
        what = damage_metadata_file(cache, rng, fault)
    code, _, err, crashed = _invoke(["verify", str(cache), "--no-progress"])
    if crashed:
        return "traceback", what
    if code == 2:
        return ("refused in one line" if one_line(code, err) else "traceback"), what
    if code == 0:
        return ("harmless" if same_cache(reference, cache) else "silent"), what
    code, _, err, crashed = _invoke(["verify", str(cache), "--repair", "--no-progress"])
    if code == 2 and "needs the dataset" in err:  # as the message says: give it the data
        code, _, err, crashed = _invoke(["verify", str(cache), "--repair", "--data", str(data), "--no-progress"])
    if crashed:
        return "traceback", what
    if code != 0:
        said = code == 1 and "not repaired:" in err or one_line(code, err)
        return ("refused (not repaired, said)" if said else "traceback"), what
    code, _, err, crashed = _invoke([*extract_args, "--cache", str(cache)])
    if crashed or code != 0:
        return ("traceback" if crashed or not one_line(code, err) else "silent"), what  # repair said done
    return ("repaired bit-identical" if same_cache(reference, cache) else "silent"), what


def dead_pid() -> int:
    """The pid of a process that has ended (a killed writer's, as far as its temp names say)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def run_trial(fault: str, reference_run: Path, out: Path, distill_args: list[str]) -> tuple[str, str]:
    """A run folder as a kill during one of its files leaves it, then the same command: finished bit-identical?"""
    shutil.copytree(reference_run, out)
    dead = dead_pid()
    cut = lambda path: path.with_name(tmp_name(path).name.replace(f".{os.getpid()}.", f".{dead}."))  # noqa: E731
    if fault.endswith("config.json"):
        cut(out / "config.json").write_text((out / "config.json").read_text()[:40])
    elif fault.endswith("heads"):
        (out / "heads.safetensors").rename(cut(out / "heads.safetensors"))
        shutil.rmtree(out / "model")  # written after the heads
    elif fault.endswith("model"):
        moved = cut(out / "model")
        (out / "model").rename(moved)
        (moved / "model.safetensors").write_bytes(b"cut")
    elif fault.endswith("checkpoint"):
        last = sorted((out / "checkpoints").iterdir())[-1]
        shutil.rmtree(out / "model")
        (out / "heads.safetensors").unlink()
        last.rename(cut(last))
    else:
        cut(out / "metrics.jsonl").write_text("{\"step\": 1")
    code, _, err, crashed = _invoke([*distill_args, "--out", str(out)])
    if crashed:
        return "traceback", fault
    if code != 0:
        return ("refused in one line" if one_line(code, err) else "traceback"), fault
    return ("finished bit-identical" if identical_students(reference_run, out) else "silent"), fault


def user_trial(fault: str, root: Path, i: int, reference_run: Path, extract_args: list[str],
               distill_args: list[str]) -> tuple[str, str]:
    """A user's file where the tool would write: refused in one line and untouched?"""
    place = root / f"user-{i}"
    if fault == "user file as --cache":
        target = place / "mine"
        target.mkdir(parents=True)
        (target / "notes.txt").write_text("mine")
        args = [*extract_args, "--cache", str(target)]
    else:
        if fault == "user file in the model folder":
            shutil.copytree(reference_run, place)
            target = place / "model" / "w.bin"
        else:
            place.mkdir(parents=True)
            target = place / ("config.json" if "config" in fault else "metrics.jsonl")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text('{"hidden_size": 768}' if "config" in fault else "mine")
        args = [*distill_args, "--out", str(place)]
    files = {p: p.read_bytes() for p in place.rglob("*") if p.is_file()}
    code, _, err, crashed = _invoke(args)
    untouched = files == {p: p.read_bytes() for p in place.rglob("*") if p.is_file()}
    if not untouched:
        return "user file touched", fault
    if crashed:
        return "traceback", fault
    return ("refused in one line" if one_line(code, err) else "silent"), fault


def damage_rows(root: Path, trials: int, rng: random.Random) -> list[str]:
    """The --damage trials on a finished cache (tiny teacher, 2 views, units of 8 rows, PCA-coded patch tokens)."""
    from collections import Counter, defaultdict

    torch.manual_seed(1)
    weights = root / "damage-teacher.safetensors"
    save_file(timm.create_model(ARCH, num_classes=0, img_size=32, depth=2).state_dict(), str(weights))
    extract_args = ["extract", str(root / "data"), "--teacher", f"timm:{ARCH}", "--resolution", "32", "--weights",
                    str(weights), "--model-arg", "depth=2", "--views", "2", "--batch-size", "8", "--workers", "0",
                    "--unit-rows", "8", "--patch-codec", "pca-8+int8", "--no-progress"]
    reference = root / "damage-reference.zarr"
    assert _invoke([*extract_args, "--cache", str(reference)])[0] == 0
    distill_args = ["distill", str(root / "data"), "--cache", str(reference), "--student", ARCH, "--img-size", "32",
                    "--model-arg", "depth=2", "--steps", "6", "--batch-size", "8", "--workers", "0",
                    "--checkpoint-every", "2", "--no-progress"]
    reference_run = root / "damage-reference-run"
    assert _invoke([*distill_args, "--out", str(reference_run)])[0] == 0
    faults = [*CACHE_FAULTS, *RUN_FAULTS, *USER_FAULTS]
    weights_of = [4] * len(CACHE_FAULTS) + [1] * len(RUN_FAULTS) + [1] * len(USER_FAULTS)  # cache faults drawn more
    counts: dict[str, Counter] = defaultdict(Counter)
    bad: list[str] = []
    for i in range(trials):
        fault = rng.choices(faults, weights_of)[0]
        if fault in CACHE_FAULTS:
            outcome, what = cache_trial(fault, reference, root / f"damaged-{i}.zarr", extract_args, root / "data", rng)
            shutil.rmtree(root / f"damaged-{i}.zarr", ignore_errors=True)
        elif fault in RUN_FAULTS:
            outcome, what = run_trial(fault, reference_run, root / f"run-{i}", distill_args)
            shutil.rmtree(root / f"run-{i}", ignore_errors=True)
        else:
            outcome, what = user_trial(fault, root, i, reference_run, extract_args, distill_args)
            shutil.rmtree(root / f"user-{i}", ignore_errors=True)
        counts[fault][outcome] += 1
        if outcome in ("silent", "traceback", "user file touched"):
            bad.append(f"{fault}: {what} -> {outcome}")
        print(f"[{i + 1}/{trials}] {fault}: {what} -> {outcome}", flush=True)
    outcomes = ["repaired bit-identical", "finished bit-identical", "refused in one line", "refused (not repaired, said)",
                "harmless", "silent", "traceback", "user file touched"]
    total = Counter()
    for c in counts.values():
        total.update(c)
    rows = [f"| {fault} | {sum(counts[fault].values())} | " + " | ".join(str(counts[fault][o]) for o in outcomes) + " |"
            for fault in faults if counts[fault]]
    return [f"{trials} trials, one fault each, drawn at random (cache faults 4x as often as the others); a cache fault is "
            "followed by `verify`, and when it finds something by `verify --repair` and the same extract; a run-folder "
            "fault by the same distill command; a user's file by the command that would write there. *harmless*: verify "
            "said ok and every array and metadata document is the reference's (the edit touched nothing the data means).",
            "", "| fault | trials | " + " | ".join(outcomes) + " |", "|---|---|" + "---|" * len(outcomes), *rows,
            "| **all** | " + f"{trials} | " + " | ".join(f"**{total[o]}**" for o in outcomes) + " |", "",
            *(["Silent, traceback or touched:", "", *[f"- {b}" for b in bad], ""] if bad else [])]


def every_point_rows(root: Path, step: int) -> list[str]:
    """A kill at every persistence point of each command (every ``step``-th point), then the same command."""
    from unic_cache.crashtest import Runner

    data, work = root / "points-data", root / "points-work"
    make_shapes(data, n=16, size=32, seed=0, shard_size=8)
    work.mkdir()
    torch.manual_seed(0)
    weights = root / "points-teacher.safetensors"
    save_file(timm.create_model(ARCH, num_classes=0, img_size=32, depth=2).state_dict(), str(weights))
    teacher = ["--teacher", f"timm:{ARCH}", "--resolution", "32", "--model-arg", "depth=2", "--batch-size", "8",
               "--workers", "0", "--unit-rows", "4", "--no-progress"]
    def extract(cache: Path, views: int = 2, *more: str) -> list[str]:
        return ["extract", str(data), "--cache", str(cache), *teacher, "--views", str(views), *more]

    extract_a = lambda cache, views=2: extract(cache, views, "--weights", str(weights))  # noqa: E731
    runner = Runner({"OMP_NUM_THREADS": "1"})
    one, damaged, cache, run = root / "points-one.zarr", root / "points-damaged.zarr", root / "points.zarr", root / "points-run"
    out = str(work / "output.txt")
    runner.run_ok(extract_a(one), out)
    shutil.copytree(one, damaged)
    shard = sorted((damaged / "teachers" / ARCH / "summary" / "c").rglob("*"))
    next(p for p in shard if p.is_file()).unlink()

    def fresh(template: Path | None, target: Path):
        def prepare() -> None:
            shutil.rmtree(target, ignore_errors=True)
            if template is not None:
                shutil.copytree(template, target)
        return prepare

    distill = ["distill", str(data), "--cache", str(one), "--out", str(run), "--student", ARCH, "--img-size", "32",
               "--model-arg", "depth=2", "--steps", "4", "--batch-size", "8", "--workers", "0", "--checkpoint-every", "2",
               "--no-progress"]
    modes = [("extract into a new cache", extract_a(cache), cache, fresh(None, cache), ()),
             ("extract a second teacher", extract(cache, 2, "--weights", "random:1", "--name", "second"), cache,
              fresh(one, cache), ()),
             ("extract with more views (a view block)", extract_a(cache, 3), cache, fresh(one, cache), ()),
             ("verify --repair of a deleted shard, then the same extract", ["verify", str(cache), "--repair"], cache,
              fresh(damaged, cache), (extract_a(cache),)),
             ("distill (4 steps, a checkpoint every 2)", distill, run, fresh(None, run), ())]
    rows = []
    for label, args, target, prepare, after in modes:
        n, trials = runner.every_point(args, str(target), prepare, str(work), after,
                                       pick=lambda points: list(range(1, len(points) + 1, step)))
        same = sum(t.identical for t in trials)
        tracebacks = sum("Traceback" in t.output for t in trials)
        temp = sum(t.temp_files for t in trials)
        rows.append(f"| {label} | {n} | {len(trials)} | {sum(t.killed for t in trials)} | {same} | {tracebacks} | {temp} |")
        for t in trials:
            if not t.identical:
                print(f"{label}: point {t.point} ({t.event}): exit {t.code}; {t.differences[:3]}; {t.output[-300:]}",
                      file=sys.stderr)
    runner.close()
    return [f"Tiny ViT teacher (depth 2, 32 px), 16 samples, 2 views, units of 4 rows; "
            f"{'every' if step == 1 else f'every {step}th'} point of each command (a file opened for writing, a rename, a "
            "delete, a new folder under the command's target), killed (SIGKILL) just before it, then the same command "
            "and the ones after it; compared file by file with the uninterrupted run's (JSON parsed, times left out). "
            "zarr's temp files of killed writes are unread and not compared: the next extract removes them once "
            "2 minutes old, and verify --repair at once.", "",
            "| command | points | killed at | died there | then bit-identical | tracebacks | zarr temp files left |",
            "|---|---|---|---|---|---|---|", *rows, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10, help="killed runs of extract, and as many of distill")
    ap.add_argument("--races", type=int, default=20, help="trials of 2-4 concurrent extracts on a new cache")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--damage", type=int, default=0, help="random damage trials on a finished cache and run folder")
    ap.add_argument("--s3", action="store_true", help="caches on a moto S3 server on 127.0.0.1")
    ap.add_argument("--write", action="store_true", help="append the result to BENCHMARKS.md")
    ap.add_argument("--every-point", action="store_true", help="a kill at every persistence point of each command")
    ap.add_argument("--every-point-step", type=int, default=1, help="with --every-point: every K-th point only")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="faults-"))
    if args.every_point:
        publish(heading("Crash points enumerated: a kill at each persistence point, then the same command")
                + every_point_rows(root, args.every_point_step), args.write)
        if not (args.kills or args.races or args.damage):
            shutil.rmtree(root)
            return
    server = start_s3("faults") if args.s3 else None
    store = "s3://faults" if args.s3 else str(root)
    make_shapes(root / "data", n=48, size=32, seed=0, shard_size=12)
    torch.manual_seed(0)
    weights = root / "teacher.safetensors"
    save_file(timm.create_model(ARCH, num_classes=0, img_size=32, depth=2).state_dict(), str(weights))
    base = ["extract", str(root / "data"), "--teacher", f"timm:{ARCH}", "--resolution", "32", "--weights", str(weights),
            "--model-arg", "depth=2", "--views", "3", "--batch-size", "6", "--workers", "0", "--unit-rows", "2",
            "--no-progress"]
    if args.damage:
        lines = heading("Fault injection: damage done to a finished cache and run folder") + damage_rows(root, args.damage, rng)
        publish(lines, args.write)
        if not (args.kills or args.races):
            shutil.rmtree(root)
            return
    reference = root / "reference.zarr"
    t_extract = seconds_of(cli(*base, "--cache", str(reference)))
    run = ["distill", str(root / "data"), "--cache", str(reference), "--student", ARCH, "--img-size", "32",
           "--model-arg", "depth=2", "--steps", "16", "--batch-size", "8", "--workers", "0", "--checkpoint-every", "2",
           "--no-progress"]
    t_distill = seconds_of(cli(*run, "--out", str(root / "reference-run")))

    rows = []
    killed = same = left = 0
    for i in range(args.kills):
        cache = f"{store}/killed-{i}.zarr"
        k, code = kill_then_finish(cli(*base, "--cache", cache), cli(*base, "--cache", cache),
                                   rng.uniform(0.0, 0.9 * t_extract))
        killed += k
        same += k and code == 0 and identical_caches(reference, cache)
        left += leftovers(cache)
    rows.append(("extract, SIGKILL at a random time then the same command", f"{killed} killed / {same} bit-identical",
                 f"{left} temp/claim files left"))

    killed = same = 0
    for i in range(args.kills):
        out = root / f"killed-run-{i}"
        again = cli(*run, "--out", str(out))  # the same command continues a killed run
        k, code = kill_then_finish(again, again, rng.uniform(0.0, 0.9 * t_distill))
        killed += k
        same += k and code == 0 and identical_students(root / "reference-run", out)
    rows.append(("distill, SIGKILL at a random time then the same command", f"{killed} killed / {same} bit-identical", ""))

    outcome = {"bit-identical": 0, "refused in one line": 0, "broken": 0}
    left = 0
    for i in range(args.races):
        cache = f"{store}/race-{i}.zarr"
        procs = [subprocess.Popen(cli(*base, "--cache", cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2 + i % 3)]
        results = [(p.wait(), p.stderr.read()) for p in procs]
        ok = all(code == 0 for code, _ in results)
        refused = all(code == 0 or (code == 2 and len(err.strip().splitlines()) == 1) for code, err in results)
        if ok and identical_caches(reference, cache):
            outcome["bit-identical"] += 1
        elif refused and not ok:
            outcome["refused in one line"] += 1
        else:
            outcome["broken"] += 1
        left += leftovers(cache)
    rows.append((f"{args.races} trials of 2-4 concurrent plain extracts on a new cache",
                 ", ".join(f"{v} {k}" for k, v in outcome.items()), f"{left} temp/claim files left"))

    where = "caches on a moto S3 server on 127.0.0.1 (s3fs)" if args.s3 else "caches on local disk"
    lines = heading(f"Fault injection: kills and concurrent creators, {where}") + [
        f"Tiny ViT teacher (depth 2, 32 px), 48 samples, 3 views, 24 units; uninterrupted extract {t_extract:.1f} s and "
        f"distill (16 steps, checkpoint every 2) {t_distill:.1f} s as subprocesses; kill times uniform over the first 90% of those; "
        "every outcome compared array by array (extract) or tensor by tensor (exported student) with the uninterrupted run.",
        "", "| trial | outcome | left behind |", "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows], ""]
    publish(lines, args.write)
    shutil.rmtree(root)
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
