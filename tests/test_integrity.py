"""Faults injected into caches and inputs: foreign folders, flipped bytes, deleted chunks, changed images,
concurrent creators, stale claims, weights that do not fit. Each must end in detection, repair or a
one-line refusal, never in silently wrong data."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import zarr
from safetensors.torch import save_file
from typer.testing import CliRunner

from unic_cache import Cache, UserError, build_teacher, extract
from unic_cache.cache.audit import find_damage
from unic_cache.cache.repair import verify_cache
from unic_cache.cache.seal import SEAL
from unic_cache.cache.claims import CLAIM_DIR, clean_stale_temp_files

from unic_cache.distillation.runs import prune_checkpoints

from .conftest import HANG_GUARD, TINY, dead_tmp_name
from .conftest import VIEWS, opts
from .test_extract import arrays

runner = CliRunner()


def cli(*args: str):
    from unic_cache.cli import app

    return runner.invoke(app, list(args))


def one_line_error(result, message: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def extract_args(data, cache, weights, *extra) -> list[str]:
    return ["extract", str(data), "--cache", str(cache), "--teacher", f"timm:{TINY}", "--resolution", "32",
            "--weights", str(weights), "--model-arg", "depth=2", "--views", str(VIEWS), "--batch-size", "8",
            "--workers", "0", "--unit-rows", "4", "--no-progress", *extra]


def chunk_files(root: Path) -> list[Path]:
    """Every stored chunk or shard of every array (metadata files and their seals excluded)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in ("zarr.json", SEAL))


def same_arrays(a: Path, b: Path) -> None:
    ref, got = arrays(zarr.open_group(str(a), mode="r")), arrays(zarr.open_group(str(b), mode="r"))
    assert ref.keys() == got.keys()
    for path in ref:
        assert np.array_equal(ref[path], got[path], equal_nan=True), path


def flip(path: Path, position: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 1 << bit
    path.write_bytes(bytes(data))


def damaged_copy(clean: Path, copy: Path, array: str, position: int) -> Path:
    """A copy of a cache with one byte flipped in every stored chunk of ``array``."""
    shutil.copytree(clean, copy)
    for path in (copy / array / "c").rglob("*"):
        if path.is_file():
            flip(path, position)
    return copy


# --- creation never deletes

def test_a_foreign_folder_is_refused_and_untouched(shapes_dir, weights, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("x")
    one_line_error(cli(*extract_args(shapes_dir, precious, weights[TINY])), "holds files extract did not write (notes.txt)")
    assert (precious / "notes.txt").read_text() == "x" and sorted(os.listdir(precious)) == ["notes.txt"]
    (tmp_path / "file.zarr").write_text("a file")
    one_line_error(cli(*extract_args(shapes_dir, tmp_path / "file.zarr", weights[TINY])), "is a file")


def test_a_foreign_object_store_prefix_is_refused(shapes_dir, weights):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/foreign-prefix/report.csv", b"a,b\n")
    with pytest.raises(UserError, match="holds files extract did not write"):
        extract(str(shapes_dir), "memory://foreign-prefix", opts(weights))
    assert fs.cat("/foreign-prefix/report.csv") == b"a,b\n"


def test_an_abandoned_creation_is_taken_over(shapes_dir, weights, clean_cache, tmp_path):
    """A creator that died (its pid is gone) left a claim and half-made arrays: the next run redoes them."""
    url = tmp_path / "abandoned.zarr"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (url / CLAIM_DIR).mkdir(parents=True)
    (url / CLAIM_DIR / "create.lock").write_text(json.dumps(
        {"token": "t", "what": "create", "host": os.uname().nodename, "pid": dead.pid, "heartbeat": 0}))
    zarr.open_group(str(url), mode="a").create_group("index")  # what it had made before it died
    (url / "index" / "junk.0123456789abcdef0123456789abcdef.partial").write_bytes(b"half")
    assert extract(str(shapes_dir), str(url), opts(weights)).complete
    same_arrays(clean_cache, url)
    assert not (url / CLAIM_DIR).exists() and not list(url.rglob("*.partial"))


# --- checksums everywhere, repair

def test_every_flipped_byte_is_detected(clean_cache, tmp_path):
    url = tmp_path / "flips.zarr"
    shutil.copytree(clean_cache, url)
    files = chunk_files(url)
    arrays_hit = {str(p.relative_to(url)).split("/c/")[0] for p in files}
    assert {"index/keys_utf8", "index/keys_offsets", "index/digest", "views/params", f"teachers/{TINY}/patch", f"teachers/{TINY}/progress",
            f"teachers/{TINY}/stats/partial/patch_m2", f"teachers/{TINY}/stats/patch/cov"} <= arrays_hit
    rng = np.random.default_rng(0)
    missed = []
    trials = [(f, int(rng.integers(f.stat().st_size)), int(rng.integers(8))) for f in files]  # every chunk file once
    for _ in range(60):  # and random positions anywhere
        f = files[int(rng.integers(len(files)))]
        trials.append((f, int(rng.integers(f.stat().st_size)), int(rng.integers(8))))
    for path, position, bit in trials:
        flip(path, position, bit)
        if not verify_cache(Cache.open(str(url)), progress=False):
            missed.append(f"{path.relative_to(url)}@{position}")
        flip(path, position, bit)  # restore
    assert not missed, missed
    assert verify_cache(Cache.open(str(url)), progress=False) == []


def test_repair_then_extract_restores_a_bit_identical_cache(clean_cache, shapes_dir, weights, tmp_path):
    url = tmp_path / "damaged.zarr"
    shutil.copytree(clean_cache, url)
    teacher = url / "teachers" / TINY
    targets = [next((teacher / "summary" / "c").rglob("0")), sorted((teacher / "patch" / "c").rglob("*"))[-1],
               next((teacher / "stats" / "partial" / "patch_m2" / "c").rglob("2")),
               next((teacher / "stats" / "summary" / "cov" / "c").rglob("0")),
               next((teacher / "progress" / "c").rglob("4")), next((url / "views" / "params" / "c").rglob("0"))]
    for path in targets:
        while path.is_dir():
            path = sorted(path.iterdir())[0]
        flip(path, path.stat().st_size // 2)
    first_patch = sorted(p for p in (teacher / "patch" / "c").rglob("*") if p.is_file())[0]
    first_patch.unlink()  # and the first patch shard is deleted outright
    damage = find_damage(Cache.open(str(url)), progress=False)
    assert len(damage.units[TINY]) >= 4 and damage.plan and TINY in damage.stats
    result = cli("verify", str(url), "--no-progress")
    assert result.exit_code == 1 and "Traceback" not in result.output and result.stderr.count("problem:") >= 6
    repaired = cli("verify", str(url), "--repair", "--no-progress")
    assert repaired.exit_code == 0 and "unit(s) to extract again" in repaired.stdout
    report = extract(str(shapes_dir), str(url), opts(weights))
    assert report.complete and report.units_done_now == len(damage.units[TINY]) < report.units_total
    same_arrays(clean_cache, url)
    assert verify_cache(Cache.open(str(url)), progress=False) == []


def test_a_unit_of_many_shards_stores_the_same_and_is_verified_and_repaired_shard_by_shard(clean_cache, shapes_dir,
                                                                                            weights, tmp_path):
    """Units of work made of several shards (format 5) hold the same features as units of one shard, and the same
    statistics to float64 rounding (a batch never spans two shards); a shard deleted from the middle of a unit is
    found, and repair plus extract restore the cache bit-identically."""
    url, clean = tmp_path / "sharded.zarr", Cache.open(str(clean_cache)).teacher(TINY)
    assert extract(str(shapes_dir), str(url), opts(weights, shard_mb=0.004)).complete
    store = Cache.open(str(url)).teacher(TINY)
    assert store.shard_rows == 1 and store.units == clean.units
    for kind in ("summary", "patch"):
        assert np.array_equal(store.group[kind][...], clean.group[kind][...])
        for name, value in store.stats(kind).items():
            np.testing.assert_allclose(value, clean.stats(kind)[name], rtol=1e-12, atol=1e-14)
    assert verify_cache(Cache.open(str(url)), progress=False) == []
    before = arrays(zarr.open_group(str(url / "teachers"), mode="r"))
    array = zarr.open_array(str(url / "teachers" / TINY / "patch"), mode="r")
    (url / "teachers" / TINY / "patch" / array.metadata.encode_chunk_key((6, 0, 0, 0))).unlink()  # unit 1's 3rd
    damage = find_damage(Cache.open(str(url)), progress=False)
    assert damage.units == {TINY: {1}} and "shard missing" in damage.problems[0]
    assert cli("verify", str(url), "--repair", "--no-progress").exit_code == 0
    report = extract(str(shapes_dir), str(url), opts(weights, shard_mb=0.004))
    assert report.complete and report.units_done_now == 1
    after = arrays(zarr.open_group(str(url / "teachers"), mode="r"))
    assert all(np.array_equal(before[path], after[path], equal_nan=True) for path in before) and before.keys() == after.keys()


def test_statistics_stay_a_small_share_of_features_and_old_caches_keep_one_shard_per_unit(shapes_dir, weights,
                                                                                        tmp_path, monkeypatch):
    """Without --unit-rows a unit is as many shards as keep its partial statistics under 1/200 of its features
    (here the whole small dataset: one unit); a teacher added to a format-4 cache keeps one shard per unit."""
    from unic_cache.cache import store as store_module

    new = Cache.open(str(_extract_at(shapes_dir, weights, tmp_path / "new.zarr"))).teacher(TINY)
    assert new.units == 1 and new.shard_rows < new.unit_rows(0).stop
    monkeypatch.setattr(store_module, "FORMAT_VERSION", 4)
    old = Cache.open(str(_extract_at(shapes_dir, weights, tmp_path / "old.zarr"))).teacher(TINY)
    assert old.cache.format == 4 and old.units > 1 and old.shard_rows == len(old.unit_rows(0))
    for kind in ("summary", "patch"):
        assert np.array_equal(new.group[kind][...], old.group[kind][...])
        np.testing.assert_allclose(new.stats(kind)["cov"], old.stats(kind)["cov"], rtol=1e-12, atol=1e-14)


def _extract_at(shapes_dir, weights, url: Path) -> Path:
    assert extract(str(shapes_dir), str(url), opts(weights, unit_rows=None, shard_mb=0.004)).complete
    return url


def test_a_damaged_index_is_rebuilt_from_the_data(clean_cache, shapes_dir, tmp_path):
    url = tmp_path / "index.zarr"
    shutil.copytree(clean_cache, url)
    chunk = next(p for p in (url / "index" / "location" / "c").rglob("*") if p.is_file())
    flip(chunk, 3)
    with pytest.raises(UserError, match="index/location: damaged"):
        Cache.open(str(url)).location
    without = cli("verify", str(url), "--repair", "--no-progress")
    assert without.exit_code == 2 and "problem: index/location: damaged" in without.stderr
    assert without.stderr.strip().splitlines()[-1].startswith("error: ") and "needs the dataset" in without.stderr
    assert cli("verify", str(url), "--repair", "--data", str(shapes_dir), "--no-progress").exit_code == 0
    same_arrays(clean_cache, url)


# --- stage 2 refuses bad targets and bad pixels

@pytest.fixture
def run_args(shapes_dir):
    def make(cache, out, *extra, data=shapes_dir):
        return ["distill", str(data), "--cache", str(cache), "--out", str(out), "--student", TINY,
                "--img-size", "32", "--model-arg", "depth=2", "--steps", "3", "--batch-size", "8", "--workers", "0",
                "--no-progress", *extra]
    return make


def test_distill_refuses_damaged_missing_and_nan_targets(clean_cache, run_args, tmp_path):
    damaged = damaged_copy(clean_cache, tmp_path / "crc.zarr", f"teachers/{TINY}/patch", 10)
    one_line_error(cli(*run_args(damaged, tmp_path / "r1")), f"teacher {TINY} patch rows")
    missing = tmp_path / "missing.zarr"
    shutil.copytree(clean_cache, missing)
    for path in (missing / "teachers" / TINY / "summary" / "c").rglob("*"):
        if path.is_file():
            path.unlink()
    one_line_error(cli(*run_args(missing, tmp_path / "r2")), "non-finite values (NaN/Inf, or a missing chunk)")
    nan = tmp_path / "nan.zarr"
    shutil.copytree(clean_cache, nan)
    summary = zarr.open_group(str(nan), mode="a")[f"teachers/{TINY}/summary"]
    values = summary[...]
    values[:, :, 0] = np.nan  # written as valid chunks with valid checksums: only the values are wrong
    summary[...] = values
    one_line_error(cli(*run_args(nan, tmp_path / "r3")), "non-finite values")
    assert not (tmp_path / "r3" / "model" / "model.safetensors").exists()


def test_a_non_finite_loss_stops_training_naming_step_and_rows(clean_cache, run_args, tmp_path):
    result = cli(*run_args(clean_cache, tmp_path / "run", "--lr", "1e30", "--steps", "6"))
    one_line_error(result, "non-finite loss at step")
    assert "rows [" in result.stderr and not (tmp_path / "run" / "model" / "model.safetensors").exists()


def test_an_image_replaced_in_place_is_caught(clean_cache, shapes_dir, run_args, tmp_path):
    """Same shard names and byte sizes (the quick check passes), other pixels: digests catch it."""
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    cache = Cache.open(str(clean_cache))
    row = 3
    shard, offset, nbytes = (int(v) for v in cache.location[row][:3])
    tar = data / cache.shards[shard]["name"]
    flip(tar, offset + nbytes // 2)  # same size, other bytes
    assert cli("verify", str(clean_cache), "--data", str(shapes_dir), "--no-progress").exit_code == 0
    result = cli("verify", str(clean_cache), "--data", str(data), "--no-progress")
    assert result.exit_code == 1 and "1 image(s) changed" in result.stderr and str(cache.keys[row]) in result.stderr
    one_line_error(cli(*run_args(clean_cache, tmp_path / "run", data=data)), "changed since the cache was made")


# --- strict weights

def test_weights_that_do_not_fit_are_refused(weights, tmp_path):
    good = weights[TINY]
    from safetensors.torch import load_file

    state = load_file(str(good))
    args = dict(resolution=32, model_args={"depth": 2})
    no_block = {k: v for k, v in state.items() if not k.startswith("blocks.1.")}
    save_file(no_block, str(tmp_path / "no_block.safetensors"))
    with pytest.raises(UserError, match=r"missing \d+ \(blocks\.1\."):
        build_teacher(f"timm:{TINY}", weights=str(tmp_path / "no_block.safetensors"), **args)
    renamed = {k.replace("blocks.0.attn", "blocks.0.attention"): v for k, v in state.items()}
    save_file(renamed, str(tmp_path / "renamed.safetensors"))
    with pytest.raises(UserError, match="unexpected"):
        build_teacher(f"timm:{TINY}", weights=str(tmp_path / "renamed.safetensors"), **args)
    with_head = {**state, "head.weight": torch.zeros(10, 192), "head.bias": torch.zeros(10)}
    save_file(with_head, str(tmp_path / "with_head.safetensors"))
    teacher = build_teacher(f"timm:{TINY}", weights=str(tmp_path / "with_head.safetensors"), **args)
    reference = build_teacher(f"timm:{TINY}", weights=str(good), **args)
    x = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(teacher(x)[0], reference(x)[0])
    blob = (tmp_path / "no_block.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 100)
    for name in ("truncated", "garbage"):
        with pytest.raises(UserError, match="not a readable safetensors file"):
            build_teacher(f"timm:{TINY}", weights=str(tmp_path / f"{name}.safetensors"), **args)


def test_a_pickle_is_refused_unread(tmp_path):
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"weight": Evil()}, str(tmp_path / "evil.pth"))
    with pytest.raises(UserError, match="pickled objects beyond tensors; it was refused unread"):
        build_teacher(f"timm:{TINY}", weights=str(tmp_path / "evil.pth"), resolution=32, model_args={"depth": 2})
    assert not marker.exists()


def test_random_weights_are_seeded_and_recorded():
    a, b = (build_teacher(f"timm:{TINY}", weights="random", resolution=32, model_args={"depth": 2}) for _ in range(2))
    c = build_teacher(f"timm:{TINY}", weights="random:1", resolution=32, model_args={"depth": 2})
    assert a.info.weights_sha256 == b.info.weights_sha256 != c.info.weights_sha256
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


# --- concurrency

def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "unic_cache", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_concurrent_plain_extracts_equal_one(clean_cache, shapes_dir, weights, tmp_path):
    url = tmp_path / "race.zarr"
    procs = [_start(extract_args(shapes_dir, url, weights[TINY])) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=HANG_GUARD)
        assert p.returncode == 0, err
    same_arrays(clean_cache, url)
    assert not (url / CLAIM_DIR).exists()


def test_concurrent_teachers_with_other_weights_one_refused(shapes_dir, weights, tmp_path):
    other = tmp_path / "other.safetensors"
    torch.manual_seed(1)
    save_file(timm.create_model(TINY, num_classes=0, img_size=32, depth=2).state_dict(), str(other))
    url = tmp_path / "mixed.zarr"
    procs = [_start(extract_args(shapes_dir, url, w)) for w in (weights[TINY], other)]
    outcomes = [(p.wait(timeout=HANG_GUARD), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 2], outcomes
    refused = next(err for code, err in outcomes if code == 2)
    assert "already in" in refused and "other settings" in refused and len(refused.strip().splitlines()) == 1
    cache = Cache.open(str(url))
    store = cache.teacher(TINY)
    winner = next(w for (code, _), w in zip(outcomes, (weights[TINY], other)) if code == 0)
    assert store.complete and store.info.weights == str(winner)
    assert verify_cache(cache, progress=False) == []


# --- stray temp files, old caches

def test_stale_temp_files_are_cleaned(clean_cache, tmp_path):
    url = tmp_path / "temp.zarr"
    shutil.copytree(clean_cache, url)
    stray = url / "teachers" / TINY / "summary" / "c" / "0.0123456789abcdef0123456789abcdef.partial"
    fresh = url / "views" / "0.fedcba9876543210fedcba9876543210.partial"
    stray.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(stray, (0, 0))
    assert clean_stale_temp_files(str(url)) == 1 and not stray.exists() and fresh.exists()


def test_a_format_1_cache_opens_and_says_it_is_unchecked():
    fixture = Path(__file__).parent.parent / "data" / "fixtures" / "format1"
    cache = Cache.open(str(fixture / "cache.zarr"))
    assert not cache.checksummed and cache.digest is None
    info = cli("info", str(fixture / "cache.zarr"), "--json")
    assert info.exit_code == 0 and "unchecked" in json.loads(info.stdout)["dataset"]["integrity"]
    result = cli("verify", str(fixture / "cache.zarr"), "--data", str(fixture / "data"), "--no-progress")
    assert result.exit_code == 0 and "unchecked" in result.stderr and "ok:" in result.stdout


def test_distill_never_writes_into_a_foreign_folder(clean_cache, run_args, tmp_path):
    notes = tmp_path / "mine"
    notes.mkdir()
    (notes / "config.json").write_text("my own config")
    (notes / "paper.tex").write_text("x")
    one_line_error(cli(*run_args(clean_cache, notes)), "holds files distill did not write (paper.tex)")
    assert (notes / "config.json").read_text() == "my own config"


def test_a_run_killed_while_writing_a_checkpoint_continues(clean_cache, run_args, tmp_path):
    """A kill inside ``save_checkpoint`` leaves the checkpoint's folder and a file in it under temp names of ours (the
    killed process's pid), and one beside the run's files when it was ``heads.safetensors``: provably ours, so the
    same command continues from the last whole checkpoint and removes them."""
    out = tmp_path / "run"
    assert cli(*run_args(clean_cache, out, "--checkpoint-every", "1")).exit_code == 0
    shutil.rmtree(out / "model")
    (out / "heads.safetensors").unlink()
    cut = dead_tmp_name(out / "checkpoints" / "step-00000004")
    cut.mkdir()
    (cut / "model.safetensors").write_bytes(b"whole")
    dead_tmp_name(cut / "optimizer.safetensors").write_bytes(b"half a fil")
    heads = dead_tmp_name(out / "heads.safetensors")
    heads.write_bytes(b"half the heads")
    again = cli(*run_args(clean_cache, out, "--checkpoint-every", "1"))
    assert again.exit_code == 0, again.stderr
    assert (out / "model" / "model.safetensors").exists() and not heads.exists() and not cut.exists()


def test_names_merely_shaped_like_temp_files_are_a_users_and_kept(clean_cache, run_args, tmp_path):
    """Only temp names that carry our marker and the pid of a process of ours that is gone are removed: safetensors'
    own ``.tmpXXXXXX`` names, ``<file>.tmp`` names and anything put inside a checkpoint or ``model.tmp`` are a user's,
    refused before anything is written, and a user's file inside an old checkpoint survives pruning."""
    base = tmp_path / "base"
    assert cli(*run_args(clean_cache, base, "--checkpoint-every", "1")).exit_code == 0
    last = sorted((base / "checkpoints").iterdir())[-1].name
    for name in (".tmpabc123", f"checkpoints/{last}/.tmpabc124", "heads.safetensors.tmp", "config.json.tmp",
                 "model.tmp/notes.txt", f"checkpoints/{last}.tmp/mine.txt"):
        out = tmp_path / name.replace("/", "_")
        shutil.copytree(base, out)
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("a user's")
        shutil.rmtree(out / "model")  # unfinished: the same command would export it
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        one_line_error(cli(*run_args(clean_cache, out, "--checkpoint-every", "1")), "holds files distill did not write")
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before, name
    prune = tmp_path / "prune"
    shutil.copytree(base, prune)
    first = sorted((prune / "checkpoints").iterdir())[0]
    (first / "mine.txt").write_text("kept")
    prune_checkpoints(prune, 1)  # a user's file put in while a run went on
    assert (first / "mine.txt").read_text() == "kept" and len(list((prune / "checkpoints").iterdir())) == 2


def test_a_zarr_group_of_someone_else_is_refused(shapes_dir, weights, tmp_path):
    theirs = tmp_path / "theirs.zarr"
    zarr.open_group(str(theirs), mode="w").attrs["project"] = "not ours"
    before = (theirs / "zarr.json").read_bytes()
    with pytest.raises(UserError, match="not a finished unic-cache cache"):
        extract(str(shapes_dir), str(theirs), opts(weights))
    assert (theirs / "zarr.json").read_bytes() == before and sorted(os.listdir(theirs)) == ["zarr.json"]


def test_eval_refuses_damaged_teacher_features(clean_cache, shapes_dir, tmp_path):
    damaged = damaged_copy(clean_cache, tmp_path / "eval.zarr", f"teachers/{TINY}/summary", 20)
    one_line_error(cli("eval", str(shapes_dir), "--cache", str(damaged), "--out", str(tmp_path / "ev"), "--no-progress"),
                   f"teacher {TINY} summary rows")


def test_hostile_yaml_and_a_full_disk_are_one_line_errors(shapes_dir, weights, tmp_path):
    marker = tmp_path / "ran"
    tag = f"x=!!python/object/apply:os.system ['touch {marker}']"
    one_line_error(cli(*extract_args(shapes_dir, tmp_path / "c", weights[TINY], "--model-arg", tag)), "not a plain YAML value")
    shapes_yaml = str(Path(__file__).parent.parent / "pipelines" / "shapes.yaml")
    one_line_error(cli("run", shapes_yaml, "--set", tag), "not a plain YAML value")
    assert not marker.exists()
    import errno

    import typer

    from unic_cache.options.cli import user_errors

    app = typer.Typer()

    @app.command()
    @user_errors
    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/cache.zarr/teachers/x/patch/c/0/0/0")

    one_line_error(runner.invoke(app, []), "no space left on the device (/data/cache.zarr/")


def test_claims_wait_for_a_live_holder_and_take_over_a_silent_one(tmp_path):
    import threading
    import time

    from unic_cache.cache.claims import once

    url = str(tmp_path / "work")
    lock = tmp_path / "work" / CLAIM_DIR / "job.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"token": "a", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 10_000}))
    ran = []
    assert once(url, "job", lambda: bool(ran), lambda: ran.append(1), lambda: None, "working") and ran == [1]
    assert not lock.parent.exists()  # released, and the claim folder removed
    lock.parent.mkdir()
    lock.write_text(json.dumps({"token": "b", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}))
    finished = threading.Event()
    threading.Timer(1.0, finished.set).start()
    assert not once(url, "job", finished.is_set, lambda: ran.append(2), lambda: None, "working")
    assert ran == [1] and finished.is_set()  # waited for the live holder until its work was done, did not run


def test_a_claim_its_holder_died_before_writing_is_taken_over(tmp_path):
    """Killed between creating its claim file and writing it (SIGKILL during set-up): the empty claim, once older
    than the staleness limit, is taken over; it was waited for forever before."""
    import os
    import time

    from unic_cache.cache.claims import STALE_AFTER, once

    lock = tmp_path / "work" / CLAIM_DIR / "create.lock"
    lock.parent.mkdir(parents=True)
    lock.write_bytes(b"")
    old = time.time() - STALE_AFTER - 5
    os.utime(lock, (old, old))
    ran, cleaned, give_up = [], [], time.monotonic() + 30  # (without the take-over: False after 30 s)
    assert once(str(tmp_path / "work"), "create", lambda: bool(ran) or time.monotonic() > give_up,
                lambda: ran.append(1), lambda: cleaned.append(1), "creating") and ran == [1] and cleaned == [1]


def test_one_of_racing_threads_wins_a_claim_on_an_fsspec_store():
    from concurrent.futures import ThreadPoolExecutor

    from unic_cache.cache.claims import once

    url, ran = "memory://claims-race", []

    def contender(i: int) -> bool:
        return once(url, "job", lambda: bool(ran), lambda: ran.append(i), lambda: None, "working")

    with ThreadPoolExecutor(6) as pool:
        won = list(pool.map(contender, range(6)))
    assert sum(won) == 1 and len(ran) == 1


BLOCK_TORCH = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm", "torchvision"):
            raise ImportError(f"{name} is blocked in this process")
sys.meta_path.insert(0, Blocked())
"""


def test_the_cache_core_and_the_cli_front_run_without_torch(clean_cache, shapes_dir):
    code = BLOCK_TORCH + f"""
from unic_cache.cache.audit import find_damage
from unic_cache.cache.info import cache_info
from unic_cache.cache.sources import open_source
from unic_cache.cache.store import Cache
cache = Cache.open({str(clean_cache)!r})
_, teachers = cache_info(cache)
assert teachers[0]["complete"] and not find_damage(cache, open_source({str(shapes_dir)!r}), progress=False).problems
summary = cache.teacher({TINY!r}).read("summary", slice(0, 4), 1)
assert summary.shape[0] == 4 and "torch" not in sys.modules
from unic_cache.cli import main
sys.argv = ["unic-cache", "info", {str(clean_cache)!r}]
main()
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "per sample-view" in result.stdout and "complete" in result.stdout
    for args in (["--help"], ["extract", "--help"], ["verify", str(clean_cache), "--no-progress"]):
        run = subprocess.run([sys.executable, "-c", BLOCK_TORCH + f"from unic_cache.cli import main\nsys.argv = ['unic-cache', *{args!r}]\nmain()"],
                             capture_output=True, text=True, timeout=HANG_GUARD)
        assert run.returncode == 0, (args, run.stderr[-2000:])



@pytest.fixture(scope="module")
def pca_cache(shapes_dir, weights, tmp_path_factory) -> Path:
    """A finished cache whose patch tokens are PCA coefficients in int8: codec parameters and scale arrays too."""
    url = tmp_path_factory.mktemp("pca") / "c.zarr"
    assert extract(str(shapes_dir), str(url), opts(weights, codec="f16", patch_codec="pca-8+int8")).complete
    return url


def test_every_kind_of_array_damaged_is_found_once_repaired_and_rebuilt(pca_cache, shapes_dir, weights, tmp_path):
    """One byte flipped in one chunk of each array kind of a cache: verify names it (the damaged codec
    parameter once, not once per unit), repair fixes or removes what it must, the same extract rebuilds, and
    the cache verifies clean and equals the undamaged one bit for bit."""
    teacher = f"teachers/{TINY}"
    kinds = ["index/keys_utf8", "index/keys_offsets", "index/location", "index/image_size", "index/digest", "index/bad",
             "views/params", f"{teacher}/summary", f"{teacher}/patch", f"{teacher}/patch_scale",
             f"{teacher}/codec/patch/basis", f"{teacher}/codec/patch/center", f"{teacher}/progress",
             f"{teacher}/stats/partial/patch_m2", f"{teacher}/stats/summary/mean"]
    for i, array in enumerate(kinds):
        url = tmp_path / f"d{i}.zarr"
        shutil.copytree(pca_cache, url)
        chunk = sorted(p for p in (url / array / "c").rglob("*") if p.is_file())[0]
        flip(chunk, chunk.stat().st_size // 2)
        found = cli("verify", str(url), "--data", str(shapes_dir), "--no-progress")
        assert found.exit_code == 1 and "Traceback" not in found.output, (array, found.output)
        lines = [line for line in found.stderr.splitlines() if line.startswith("problem:")]
        assert lines, array
        if "codec" in array:
            assert len(lines) == 1 and "codec parameter" in lines[0], (array, lines)
        repaired = cli("verify", str(url), "--repair", "--data", str(shapes_dir), "--no-progress")
        assert repaired.exit_code == 0, (array, repaired.output)
        if array.startswith("index/"):  # the index is rebuilt first; then the rest can be checked
            assert cli("verify", str(url), "--repair", "--data", str(shapes_dir), "--no-progress").exit_code == 0, array
        assert extract(str(shapes_dir), str(url), opts(weights, codec="f16", patch_codec="pca-8+int8")).complete, array
        clean = cli("verify", str(url), "--data", str(shapes_dir), "--no-progress")
        assert clean.exit_code == 0, (array, clean.output)
        same_arrays(pca_cache, url)
