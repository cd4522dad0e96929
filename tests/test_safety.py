"""Data safety as an adversary tries it: run folders that never touch a user's file, metadata under its seal
(edited attributes refused on open and restored by repair, never "repaired" into wrong data), damage that
verify used to miss (a deleted codec-parameter chunk, swapped unit shards), repairs that restore bit-identical
data or exit 1 saying what they could not repair, and tar names read as webdataset reads them."""

import io
import json
import shutil
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
import zarr

from unic_cache import Cache, UserError, extract
from unic_cache.cache.sources import open_source
from unic_cache.distillation.runs import RunLock

from unic_cache.shapes import make_shapes

from .conftest import TINY, VIEWS, dead_pid, dead_tmp_name, opts
from .test_integrity import cli, flip, one_line_error, same_arrays


def distill_args(cache, out, data, *extra) -> list[str]:
    return ["distill", str(data), "--cache", str(cache), "--out", str(out), "--student", TINY, "--img-size", "32",
            "--model-arg", "depth=2", "--steps", "2", "--batch-size", "8", "--workers", "0", "--no-progress", *extra]


def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=2))


def copy(clean: Path, to: Path) -> Path:
    shutil.copytree(clean, to)
    return to


@pytest.fixture(scope="module")
def pca_cache(shapes_dir, weights, tmp_path_factory) -> Path:
    """A finished cache whose patch tokens are PCA-coded (a basis the features cannot be read without)."""
    url = tmp_path_factory.mktemp("pca") / "c.zarr"
    assert extract(str(shapes_dir), str(url), opts(weights, patch_codec="pca-8+int8")).complete
    return url


# --- 1, 6, 11: run folders (and issue 33's foreign config.json)

@pytest.mark.parametrize("files", [{"model/w.bin": b"user weights"}, {"metrics.jsonl": b"my notes\n"},
                                   {"config.json": b"{not json"}, {"config.json": b"[1, 2]"}, {"config.json": b""},
                                   {"config.json": json.dumps({"architectures": ["ViTModel"], "hidden_size": 768}).encode()}])
def test_a_folder_without_our_run_record_is_refused_untouched(clean_cache, shapes_dir, tmp_path, files):
    out = tmp_path / "o"
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    one_line_error(cli(*distill_args(clean_cache, out, shapes_dir)), "holds files distill did not write")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_run_killed_while_exporting_finishes_on_the_same_command(clean_cache, shapes_dir, tmp_path):
    out = tmp_path / "run"
    assert cli(*distill_args(clean_cache, out, shapes_dir)).exit_code == 0
    heads = (out / "heads.safetensors").read_bytes()
    (out / "heads.safetensors").unlink()  # killed while heads were written:
    shutil.rmtree(out / "model")  # the model, written after them, is not there
    dead_tmp_name(out / "heads.safetensors").write_bytes(heads[: len(heads) // 2])
    again = cli(*distill_args(clean_cache, out, shapes_dir))
    assert again.exit_code == 0, again.output
    assert (out / "heads.safetensors").read_bytes() == heads and (out / "model" / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["format"] == "unic-cache distill run"


def test_a_second_distill_into_a_held_run_folder_is_refused(clean_cache, shapes_dir, tmp_path):
    out = tmp_path / "run"
    lock = RunLock(out)  # another distill holds the folder
    try:
        one_line_error(cli(*distill_args(clean_cache, out, shapes_dir)), "in use by another distill")
    finally:
        lock.release()
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]
    assert cli(*distill_args(clean_cache, out, shapes_dir)).exit_code == 0  # ours, and free again


# --- 2, 3, 8, 9: metadata under its seal

ROOT_EDITS = {
    "plan seed": lambda d: d["attributes"]["plan"].update(seed=1),
    "policy value": lambda d: d["attributes"]["plan"]["policy"].update(brightness=0.9),
    "eval crop": lambda d: d["attributes"]["plan"]["policy"].update(eval_crop_pct=0.5),
    "samples": lambda d: d["attributes"].update(samples=d["attributes"]["samples"] + 1),
    "views": lambda d: d["attributes"]["plan"].update(views=d["attributes"]["plan"]["views"] + 1),
}


@pytest.mark.parametrize("edit", sorted(ROOT_EDITS))
def test_an_edited_plan_is_refused_and_restored_never_rewritten_into_the_data(clean_cache, shapes_dir, tmp_path, edit):
    url = copy(clean_cache, tmp_path / "c.zarr")
    edit_json(url / "zarr.json", ROOT_EDITS[edit])
    with pytest.raises(UserError, match="changed since it was written"):
        Cache.open(str(url))
    one_line_error(cli(*distill_args(url, tmp_path / "run", shapes_dir)), "verify")
    found = cli("verify", str(url), "--no-progress")
    assert found.exit_code == 1 and "zarr.json changed since it was written" in found.stderr
    repaired = cli("verify", str(url), "--repair", "--no-progress")
    assert repaired.exit_code == 0 and "restored (root)/zarr.json" in repaired.stdout, repaired.output
    same_arrays(clean_cache, url)
    assert json.loads((url / "zarr.json").read_text()) == json.loads((clean_cache / "zarr.json").read_text())
    assert cli("verify", str(url), "--no-progress").exit_code == 0


TEACHER_EDITS = {  # (file under teachers/TINY, edit): attributes verify used to miss, and array metadata
    "dim": ("zarr.json", lambda d: d["attributes"].update(dim=193)),
    "mean": ("zarr.json", lambda d: d["attributes"]["mean"].__setitem__(0, 0.1)),
    "resolution": ("zarr.json", lambda d: d["attributes"].update(resolution=48)),
    "prefix_tokens": ("zarr.json", lambda d: d["attributes"].update(prefix_tokens=0)),
    "summary_kind": ("zarr.json", lambda d: d["attributes"].update(summary_kind="pooled")),
    "grid": ("zarr.json", lambda d: d["attributes"].update(grid=[5, 5])),
    "unit_rows": ("zarr.json", lambda d: d["attributes"].update(unit_rows=5)),
    "summary shape": ("summary/zarr.json", lambda d: d["shape"].__setitem__(0, d["shape"][0] + 1)),
    "patch chunks": ("patch/zarr.json", lambda d: d["codecs"][0]["configuration"]["chunk_shape"].__setitem__(0, 1)),
    "progress unreadable": ("progress/zarr.json", None),
    "pca transform": ("zarr.json", lambda d: d["attributes"]["codecs"]["patch"].update(transform="whiten")),
}


@pytest.mark.parametrize("edit", sorted(TEACHER_EDITS))
def test_edited_teacher_metadata_is_caught_and_restored(pca_cache, shapes_dir, tmp_path, edit):
    url = copy(pca_cache, tmp_path / "c.zarr")
    name, change = TEACHER_EDITS[edit]
    path = url / "teachers" / TINY / name
    if change is None:
        path.write_text("{ not json")
    else:
        edit_json(path, change)
    with pytest.raises(UserError, match=f"teachers/{TINY}"):
        Cache.open(str(url)).teacher(TINY)
    assert cli("verify", str(url), "--no-progress").exit_code == 1
    repaired = cli("verify", str(url), "--repair", "--no-progress")
    assert repaired.exit_code == 0 and "restored" in repaired.stdout and "Traceback" not in repaired.output
    same_arrays(pca_cache, url)
    assert cli("verify", str(url), "--no-progress").exit_code == 0


def test_a_shard_first_row_edit_and_an_unparsable_index_array_are_restored(clean_cache, shapes_dir, tmp_path):
    url = copy(clean_cache, tmp_path / "c.zarr")
    edit_json(url / "index" / "zarr.json", lambda d: d["attributes"]["shards"][1].update(first_row=9))
    (url / "index" / "location" / "zarr.json").write_text("{")
    one_line_error(cli(*distill_args(url, tmp_path / "run", shapes_dir)), "changed since it was written")
    assert cli("verify", str(url), "--no-progress").exit_code == 1
    assert cli("verify", str(url), "--repair", "--no-progress").exit_code == 0
    same_arrays(clean_cache, url)
    assert cli("verify", str(url), "--data", str(shapes_dir), "--no-progress").exit_code == 0


def test_a_damaged_seal_is_not_repaired_and_says_so(clean_cache, tmp_path):
    url = copy(clean_cache, tmp_path / "c.zarr")
    flip(url / "index" / "seal.json", 40)
    with pytest.raises(UserError, match="seal.json is damaged"):
        Cache.open(str(url))
    found = cli("verify", str(url), "--no-progress")
    assert found.exit_code == 1 and "problem: index/seal.json is damaged" in found.stderr and "--repair" not in found.stderr
    result = cli("verify", str(url), "--repair", "--no-progress")
    assert result.exit_code == 1 and "not repaired: index/seal.json is damaged" in result.stderr
    assert "Traceback" not in result.output


def test_a_damaged_teacher_seal_is_repaired_by_extracting_that_teacher_again(clean_cache, shapes_dir, weights, tmp_path):
    url = copy(clean_cache, tmp_path / "c.zarr")
    flip(url / "teachers" / TINY / "seal.json", 40)
    found = cli("verify", str(url), "--no-progress")
    assert found.exit_code == 1 and "--repair` removes it" in found.stderr and "new --name" not in found.stderr
    assert cli("verify", str(url), "--repair", "--no-progress").exit_code == 0
    assert extract(str(shapes_dir), str(url), opts(weights)).complete
    same_arrays(clean_cache, url)


def test_verify_says_what_it_cannot_repair_without_advising_repair(clean_cache, tmp_path):
    """A path with no cache is one line; another dataset (same shard names and sizes, other bytes) is a problem that
    no repair fixes, so verify does not advise --repair, and reads the other bytes without a traceback."""
    missing = cli("verify", str(tmp_path / "nothing.zarr"), "--no-progress")
    assert missing.exit_code == 2 and len(missing.stderr.strip().splitlines()) == 1 and "no cache at" in missing.stderr
    other = tmp_path / "other"
    make_shapes(other, n=24, size=32, seed=5, shard_size=10)
    result = cli("verify", str(clean_cache), "--data", str(other), "--no-progress")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "--repair" not in result.stderr and "restore" in result.stderr


def test_a_teacher_killed_before_its_seal_is_finished_by_the_same_extract(clean_cache, shapes_dir, weights, tmp_path):
    """A kill between a teacher's (or a view block's) documents and its seal leaves it unsealed: our unfinished work,
    which info and verify name as such and the same extract command makes again (it was refused for good)."""
    url = copy(clean_cache, tmp_path / "c.zarr")
    (url / "teachers" / TINY / "seal.json").unlink()
    (url / ".unic-cache").mkdir()
    (url / ".unic-cache" / f"teacher-{TINY}.lock").write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(),
                                                                           "token": "t", "heartbeat": 0}))
    info = cli("info", str(url))
    assert info.exit_code == 0 and "unfinished" in info.stdout
    found = cli("verify", str(url), "--no-progress")
    assert found.exit_code == 1 and "addition was interrupted" in found.stderr + found.stdout
    assert extract(str(shapes_dir), str(url), opts(weights)).complete
    same_arrays(clean_cache, url)
    assert not (url / ".unic-cache").exists()
    grown = copy(clean_cache, tmp_path / "g.zarr")
    assert extract(str(shapes_dir), str(grown), opts(weights, views=VIEWS + 1)).complete
    reference = copy(grown, tmp_path / "reference.zarr")
    (grown / "teachers" / TINY / f"views-{VIEWS}" / "seal.json").unlink()
    assert Cache.open(str(grown)).teacher(TINY).views == VIEWS  # the block is not there yet for readers
    assert extract(str(shapes_dir), str(grown), opts(weights, views=VIEWS + 1)).complete
    same_arrays(reference, grown)


def test_a_deleted_basis_chunk_is_found_and_the_teacher_extracted_again(pca_cache, shapes_dir, weights, tmp_path):
    url = copy(pca_cache, tmp_path / "c.zarr")
    basis = url / "teachers" / TINY / "codec" / "patch" / "basis"
    for chunk in (p for p in basis.rglob("*") if p.is_file() and p.name != "zarr.json"):
        chunk.unlink()
    with pytest.raises(UserError, match="chunk\\(s\\) missing"):
        Cache.open(str(url)).teacher(TINY).read("patch", slice(0, 4), 0)
    found = cli("verify", str(url), "--no-progress")
    assert found.exit_code == 1 and "codec parameter patch/basis" in found.stderr
    assert cli("verify", str(url), "--repair", "--no-progress").exit_code == 0
    assert extract(str(shapes_dir), str(url), opts(weights, patch_codec="pca-8+int8")).complete
    same_arrays(pca_cache, url)


def test_swapped_unit_shards_are_found_and_extracted_again(clean_cache, shapes_dir, weights, tmp_path):
    url = copy(clean_cache, tmp_path / "c.zarr")
    a, b = (url / "teachers" / TINY / "summary" / "c" / str(u) / "0" / "0" for u in (1, 2))
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    found = cli("verify", str(url), "--no-progress")
    assert found.exit_code == 1 and "digest mismatch" in found.stderr
    assert cli("verify", str(url), "--repair", "--no-progress").exit_code == 0
    report = extract(str(shapes_dir), str(url), opts(weights))
    assert report.complete and report.units_done_now == 2
    same_arrays(clean_cache, url)


def test_a_truncated_shard_is_removed_by_repair_so_extract_rewrites_it(clean_cache, shapes_dir, weights, tmp_path):
    url = copy(clean_cache, tmp_path / "c.zarr")
    shard = url / "teachers" / TINY / "summary" / "c" / "3" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert cli("verify", str(url), "--no-progress").exit_code == 1
    assert cli("verify", str(url), "--repair", "--no-progress").exit_code == 0
    assert extract(str(shapes_dir), str(url), opts(weights)).complete
    same_arrays(clean_cache, url)


def test_a_deleted_view_params_chunk_is_one_line_and_restored(clean_cache, shapes_dir, tmp_path):
    url = copy(clean_cache, tmp_path / "c.zarr")
    for chunk in (p for p in (url / "views" / "params" / "c").rglob("*") if p.is_file()):
        chunk.unlink()
    one_line_error(cli(*distill_args(url, tmp_path / "run", shapes_dir)), "views/params rows")
    assert cli("verify", str(url), "--repair", "--no-progress").exit_code == 0
    same_arrays(clean_cache, url)


def test_a_repair_that_cannot_repair_exits_1(clean_cache, shapes_dir, tmp_path):
    data = copy(shapes_dir, tmp_path / "data")
    url = copy(clean_cache, tmp_path / "c.zarr")
    cache = Cache.open(str(url))
    shard, offset, nbytes = (int(v) for v in cache.location[2][:3])
    flip(data / cache.shards[shard]["name"], offset + nbytes // 2)
    result = cli("verify", str(url), "--data", str(data), "--repair", "--no-progress")
    assert result.exit_code == 1 and "not repaired:" in result.stderr and "changed" in result.stderr


# --- 4, 7, 10: tar names

def write_tar(path: Path, members: list[tuple[str, bytes]], fmt=tarfile.PAX_FORMAT, encoding="utf-8") -> None:
    with tarfile.open(path, "w", format=fmt, encoding=encoding) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_a_name_twice_in_a_row_is_refused_as_webdataset_does(tmp_path):
    shard = tmp_path / "d" / "s.tar"
    shard.parent.mkdir()
    write_tar(shard, [("a.jpg", png(0)), ("a.jpg", png(1)), ("b.jpg", png(2))])
    with pytest.raises(ValueError, match="duplicate file name"):
        list(wds.WebDataset(str(shard), shardshuffle=False))
    with pytest.raises(UserError, match="appears twice in a row"):
        open_source(str(shard)).index(progress=False)


def test_keys_are_webdatasets_for_hidden_and_meta_names(tmp_path):
    shard = tmp_path / "d" / "s.tar"
    shard.parent.mkdir()
    write_tar(shard, [("sub/._y.jpg", png(0)), ("__pycache__/a.jpg", png(1)), ("__meta__", b"x"), ("c.png", png(2))])
    theirs = [s["__key__"] for s in wds.WebDataset(str(shard), shardshuffle=False)]
    assert list(open_source(str(shard)).index(progress=False).keys) == theirs == ["sub/", "c"]


def test_a_latin1_tar_name_extracts_and_a_failed_creation_is_taken_over(shapes_dir, weights, tmp_path):
    shard = tmp_path / "d" / "s.tar"
    shard.parent.mkdir()
    write_tar(shard, [("caf\xe9.png", png(0)), ("b.png", png(1))], fmt=tarfile.GNU_FORMAT, encoding="latin-1")
    theirs = [s["__key__"] for s in wds.WebDataset(str(shard), shardshuffle=False)]
    assert theirs[0] == "caf\udce9"
    url = tmp_path / "c.zarr"
    zarr.open_group(str(url), mode="w", attributes={"format": "unic-cache"}).create_group("index")  # what a failed run left
    assert extract(str(shard), str(url), opts(weights)).complete
    assert list(Cache.open(str(url)).keys) == theirs
