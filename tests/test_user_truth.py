"""What a user reads tells the truth: model cards that hold eval's scores, a changed dataset named file by file,
usage errors for arguments out of range, files a colleague can read, codec fidelity on vectors the fit did not
see, and the small frictions (options taken from the cache, "did you mean", provenance, resumes that say where)."""

import json
import os
import shutil
import stat

import numpy as np
import pytest

from unic_cache import Cache, UserError, extract
from unic_cache.cache.sources import open_source
from unic_cache.extraction.calibration import calibration_views, held_out_views

from .conftest import TINY, VIEWS, opts
from .test_integrity import cli, flip, one_line_error
from .test_safety import distill_args


@pytest.fixture(scope="module")
def finished_run(clean_cache, shapes_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("truth") / "run"
    old = os.umask(0o022)
    try:
        assert cli(*distill_args(clean_cache, out, shapes_dir)).exit_code == 0
    finally:
        os.umask(old)
    return out


def test_eval_puts_its_scores_in_the_model_card(finished_run, clean_cache, shapes_dir, tmp_path):
    card = finished_run / "model" / "README.md"
    assert "## Evaluation" not in card.read_text()
    result = cli("eval", str(shapes_dir), "--cache", str(clean_cache), "--student", f"s={finished_run}", "--tasks",
                 "colour,size", "--out", str(tmp_path / "ev"), "--no-progress")
    assert result.exit_code == 0, result.output
    text = card.read_text()
    assert "## Evaluation" in text and "| s | student |" in text and f"| {TINY} | teacher |" in text
    assert f"`{TINY}` (depth=2)" in text  # the teacher is a 2-block ViT, not the named model
    assert "rows: train" in result.stdout and "Validation split (" in result.stdout


def test_exported_files_follow_the_umask(finished_run):
    for path in [*finished_run.rglob("*.safetensors"), finished_run / "config.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_a_changed_image_is_named_with_its_row_and_shard(clean_cache, shapes_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    cache = Cache.open(str(clean_cache))
    shard, offset, nbytes = (int(v) for v in cache.location[5][:3])
    name = cache.shards[shard]["name"]
    flip(data / name, offset + nbytes // 2)
    result = cli("verify", str(clean_cache), "--data", str(data), "--no-progress")
    assert result.exit_code == 1 and f"{cache.keys[5]} (row 5, in {name})" in result.stderr
    with open(data / name, "ab") as f:  # and a shard that grew
        f.write(b"\0" * 512)
    one_line_error(cli(*distill_args(clean_cache, tmp_path / "run", data)), f"shard {name}: ")


def test_a_changed_file_of_an_image_folder_is_named(weights, tmp_path):
    from .test_safety import png

    data = tmp_path / "imgs"
    for i in range(4):
        (data / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        (data / f"class{i % 2}" / f"im{i}.png").write_bytes(png(i))
    url = tmp_path / "c.zarr"
    extract(str(data), str(url), opts(weights, views=1))
    victim = data / "class1" / "im3.png"
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(UserError, match=f"{victim.relative_to(data)} \\(row \\d+, changed size\\)"):
        Cache.open(str(url)).check_source(open_source(str(data)))


def test_reading_beyond_the_cache_is_a_usage_error(clean_cache):
    store = Cache.open(str(clean_cache)).teacher(TINY)
    with pytest.raises(UserError, match=f"view {VIEWS} out of range: the cache has views 0 to {VIEWS - 1}"):
        store.read("summary", slice(0, 4), VIEWS)
    with pytest.raises(UserError, match="out of range"):
        store.read("summary", slice(0, 10_000), 0)


def test_codec_fidelity_is_measured_on_held_out_sample_views(clean_cache, shapes_dir, weights, tmp_path):
    cache = Cache.open(str(clean_cache))
    fit = calibration_views(cache, 32)
    rows, views = held_out_views(cache, 16, fit)
    assert len(rows) == 16 and not set(zip(rows.tolist(), views.tolist())) & set(zip(*(f.tolist() for f in fit)))
    url = tmp_path / "pca.zarr"
    extract(str(shapes_dir), str(url), opts(weights, codec="pca-16", patch=False, calibration=32))
    figures = Cache.open(str(url)).teacher(TINY).codecs["summary"].fidelity
    assert figures["held_out"] and figures["vectors"] == 16
    shown = cli("info", str(url))
    assert "held-out vectors (not fitted on)" in shown.stdout


def test_a_pca_wider_than_the_features_is_refused(shapes_dir, weights, tmp_path):
    with pytest.raises(UserError, match="pca-999\\+f16 keeps 999 components, but these features are 192 wide"):
        extract(str(shapes_dir), str(tmp_path / "c.zarr"), opts(weights, codec="pca-999"))
    assert not (tmp_path / "c.zarr" / "teachers" / TINY / "seal.json").exists()


def test_a_second_teacher_takes_the_views_from_the_cache(clean_cache, shapes_dir, weights, tmp_path):
    url = tmp_path / "c.zarr"
    shutil.copytree(clean_cache, url)
    args = ["extract", str(shapes_dir), "--cache", str(url), "--teacher", f"timm:{TINY}", "--name", "second",
            "--resolution", "32", "--weights", "random:3", "--model-arg", "depth=1", "--batch-size", "8",
            "--workers", "0", "--unit-rows", "4", "--no-progress"]  # no --views: the cache's
    result = cli(*args)
    assert result.exit_code == 0, result.output
    again = cli(*args)
    assert again.exit_code == 0 and "already complete" in again.stdout


def test_unknown_options_say_what_was_meant(shapes_dir, clean_cache, tmp_path):
    one_line_error(cli(*distill_args(clean_cache, tmp_path / "r", shapes_dir, "--set", "batch-size=4")),
                   "did you mean batch-size -> batch_size")
    one_line_error(cli(*distill_args(clean_cache, tmp_path / "r", shapes_dir, "--set", "lrr=1e-3")), "lrr -> lr")
    one_line_error(cli(*distill_args(clean_cache, tmp_path / "r", shapes_dir, "--set", "log_every=abc")), "takes an int")


def test_info_shows_provenance_and_warns_of_a_constant_summary(clean_cache, shapes_dir, tmp_path):
    shown = cli("info", str(clean_cache))
    assert "(depth=2)" in shown.stdout and "sha256" in shown.stdout and "32 px" in shown.stdout
    parsed = json.loads(cli("info", str(clean_cache), "--json").stdout)
    assert parsed["teachers"][0]["model args"] == {"depth": 2}
    url = tmp_path / "flat.zarr"
    shutil.copytree(clean_cache, url)
    import zarr

    stats = zarr.open_group(str(url), mode="a")[f"teachers/{TINY}/stats/summary/var"]
    stats[...] = np.zeros(stats.shape)  # what a constant summary leaves
    assert "is the same vector for every sample-view" in cli("info", str(url)).stderr


def test_eval_of_a_model_folder_or_nothing_says_what_to_give(finished_run, clean_cache, shapes_dir, tmp_path):
    one_line_error(cli("eval", str(shapes_dir), "--cache", str(clean_cache), "--student", str(finished_run / "model")),
                   f"give the run folder: {finished_run}")
    one_line_error(cli("eval", str(shapes_dir), "--cache", str(clean_cache), "--student", str(tmp_path / "none")),
                   "it does not exist")


def test_a_data_folder_given_as_a_cache_is_named(shapes_dir):
    one_line_error(cli("info", str(shapes_dir)), "is a dataset, not a cache")


def test_a_zero_byte_shard_leaves_nothing_behind(weights, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "empty.tar").write_bytes(b"")
    with pytest.raises(UserError):
        extract(str(tmp_path / "d" / "empty.tar"), str(tmp_path / "c.zarr"), opts(weights))
    assert not (tmp_path / "c.zarr").exists()
