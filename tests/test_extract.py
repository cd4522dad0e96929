import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr

from unic_cache import Cache, UserError, build_teacher, extract, open_source
from unic_cache.cache.pixels import decode_image
from unic_cache.models.device_pixels import replay
from unic_cache.cache.audit import array_values
from unic_cache.cache.repair import verify_cache

from .conftest import HANG_GUARD, SMALL8, TINY, VIEWS, extract_in_ranks, opts, run_cli

arrays = array_values  # every array below a group, by path


@pytest.fixture(scope="module")
def two_teacher_cache(shapes_dir, weights, tmp_path_factory):
    url = str(tmp_path_factory.mktemp("cache") / "c.zarr")
    first = extract(str(shapes_dir), url, opts(weights))
    assert first.complete and first.units_total == 6
    before = arrays(zarr.open_group(url, mode="r")["teachers"])
    second = extract(str(shapes_dir), url, opts(weights, arch=SMALL8, res=24, unit_rows=None, shard_mb=0.05))
    assert second.complete
    return url, before


def test_features_equal_direct_recomputation(two_teacher_cache, shapes_dir, weights):
    url, _ = two_teacher_cache
    cache = Cache.open(url)
    assert cache.teacher_names() == [SMALL8, TINY]
    source = open_source(str(shapes_dir))
    for arch, res, grid, dim in ((TINY, 32, 2, 192), (SMALL8, 24, 3, 384)):
        store = cache.teacher(arch)
        assert store.info.grid == (grid, grid) and store.info.dim == dim and store.info.resolution == res
        summary, patch = store.group["summary"], store.group["patch"]
        assert summary.shape == (24, VIEWS, dim) and patch.shape == (24, VIEWS, grid * grid, dim)
        teacher = build_teacher(f"timm:{arch}", resolution=res, weights=str(weights[arch]), model_args={"depth": 2})
        for row, view in ((0, 0), (5, 2), (13, 1), (23, 2)):
            image = decode_image(source.read(cache.location[row], str(cache.keys[row])))
            pixels = replay(image, cache.params(slice(row, row + 1))[0, view], res)
            s, p = teacher(pixels[None])
            np.testing.assert_allclose(summary[row, view], s[0].numpy(), rtol=2e-3, atol=2e-3)
            np.testing.assert_allclose(patch[row, view], p[0].numpy(), rtol=2e-3, atol=2e-3)
            assert np.abs(summary[row, view]).max() > 0


def test_compiled_channels_last_teacher_stores_the_same_features(two_teacher_cache, shapes_dir, weights, tmp_path):
    """--compile and --channels-last change how the teacher runs, not what is stored (statistics included)."""
    url, _ = two_teacher_cache
    fast = str(tmp_path / "fast.zarr")
    assert extract(str(shapes_dir), fast, opts(weights, compile=True, channels_last=True)).complete
    plain, other = Cache.open(url).teacher(TINY), Cache.open(fast).teacher(TINY)
    for kind in ("summary", "patch"):
        np.testing.assert_allclose(other.group[kind][...], plain.group[kind][...], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(other.stats(kind)["mean"], plain.stats(kind)["mean"], rtol=1e-3, atol=1e-4)


def test_second_teacher_leaves_the_first_untouched(two_teacher_cache):
    url, before = two_teacher_cache
    after = arrays(zarr.open_group(url, mode="r")["teachers"])
    for path, value in before.items():
        assert np.array_equal(after[path], value), path


def test_stats_equal_numpy(two_teacher_cache):
    url, _ = two_teacher_cache
    store = Cache.open(url).teacher(TINY)
    for kind in ("summary", "patch"):
        x = store.group[kind][...].astype(np.float64).reshape(-1, store.info.dim)
        stats = store.stats(kind)
        assert stats["count"][0] == len(x)
        np.testing.assert_allclose(stats["mean"], x.mean(0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(stats["cov"], np.cov(x, rowvar=False, bias=True), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(stats["var"], x.var(0), rtol=1e-9, atol=1e-12)
    assert 0.9999 < store.attrs["fidelity_cosine"]["summary"] <= 1.0
    assert verify_cache(Cache.open(url), progress=False) == []


def _units_done(cache) -> int:
    """Units flagged done: the progress array's one-byte chunks on disk (cheap to poll: a fast extract must be
    caught in the middle), -1 before the teacher exists."""
    folder = cache / "teachers" / TINY / "progress"
    if not (folder / "zarr.json").exists():
        return -1
    return sum(1 for p in (folder / "c").rglob("*") if p.is_file()) if (folder / "c").exists() else 0


def test_resume_after_sigkill_is_bit_identical(shapes_dir, weights, tmp_path):
    reference = tmp_path / "ref.zarr"
    extract(str(shapes_dir), str(reference), opts(weights, unit_rows=1))
    cache = tmp_path / "killed.zarr"
    args = ["extract", str(shapes_dir), "--cache", str(cache), "--teacher", f"timm:{TINY}", "--resolution", "32",
            "--weights", str(weights[TINY]), "--model-arg", "depth=2", "--views", str(VIEWS), "--batch-size", "8",
            "--workers", "0", "--unit-rows", "1", "--no-progress"]
    killed_at = []
    for stage in ("creating the cache", 4, 12):  # killed during set-up, then twice in the middle of the work
        proc = subprocess.Popen([sys.executable, "-m", "unic_cache", *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + HANG_GUARD
        while proc.poll() is None and time.monotonic() < deadline:
            if stage == "creating the cache" and cache.exists() or isinstance(stage, int) and _units_done(cache) >= stage:
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at.append(_units_done(cache))
    assert killed_at[-1] < 24, f"the run finished before it could be killed: {killed_at}"
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "complete" in result.stdout
    ref, got = arrays(zarr.open_group(str(reference), mode="r")), arrays(zarr.open_group(str(cache), mode="r"))
    assert ref.keys() == got.keys()
    for path in ref:
        assert np.array_equal(ref[path], got[path]), path


def test_two_ranks_equal_one(shapes_dir, weights, tmp_path):
    one = tmp_path / "one.zarr"
    extract(str(shapes_dir), str(one), opts(weights))
    two = tmp_path / "two.zarr"
    extract_in_ranks(shapes_dir, two, weights)
    ref, got = arrays(zarr.open_group(str(one), mode="r")), arrays(zarr.open_group(str(two), mode="r"))
    assert ref.keys() == got.keys()
    for path in ref:
        assert np.array_equal(ref[path], got[path]), path
    assert Cache.open(str(two)).teacher(TINY).complete


def test_bad_images_are_skipped(messy_dir, weights, tmp_path):
    url = str(tmp_path / "messy.zarr")
    report = extract(str(messy_dir), url, opts(weights, unit_rows=2))
    assert report.complete and report.bad_samples == 3
    cache = Cache.open(url)
    store = cache.teacher(TINY)
    summary = store.group["summary"][...]
    bad = cache.bad
    assert bad.sum() == 3 and (summary[bad] == 0).all() and (np.abs(summary[~bad]).max(-1) > 0).all()
    assert store.stats("summary")["count"][0] == 6 * VIEWS
    assert verify_cache(cache, progress=False) == []


def test_cache_refuses_another_dataset_or_plan(two_teacher_cache, messy_dir, shapes_dir, weights):
    url, _ = two_teacher_cache
    with pytest.raises(UserError, match="made for another dataset"):
        extract(str(messy_dir), url, opts(weights))
    with pytest.raises(UserError, match=f"has {VIEWS} views per sample; extract takes --views {VIEWS} or more"):
        extract(str(shapes_dir), url, opts(weights, views=VIEWS - 1))  # more views grow the cache (test_views_added)
    with pytest.raises(UserError, match=r"other views \(scale: \[0.08, 1.0\] \(cache\) vs \[0.3, 1.0\]\)"):  # named
        extract(str(shapes_dir), url, opts(weights, crop_scale=(0.3, 1.0)))
    with pytest.raises(UserError, match="other settings"):
        extract(str(shapes_dir), url, opts(weights, res=48))
    again = extract(str(shapes_dir), url, opts(weights))  # same teacher again: nothing to do
    assert again.units_done_now == 0 and again.complete


def test_fsspec_urls_for_data_and_cache(shapes_dir, weights, tmp_path):
    data = f"file://{shapes_dir}/shapes-{{000000..000002}}.tar"
    for url in (f"file://{tmp_path}/local-url.zarr", f"memory://{tmp_path.name}/remote.zarr"):
        report = extract(data, url, opts(weights, patch=False, unit_rows=12))
        assert report.complete
        cache = Cache.open(url)
        assert "patch" not in cache.group[f"teachers/{TINY}"] and cache.n == 24
        assert verify_cache(cache, progress=False) == []


def test_verify_finds_damage(shapes_dir, weights, tmp_path):
    url = tmp_path / "damaged.zarr"
    extract(str(shapes_dir), str(url), opts(weights))
    store = zarr.open_group(str(url), mode="a")[f"teachers/{TINY}/summary"]
    store[5, 1, 3] = np.nan
    problems = verify_cache(Cache.open(str(url)), progress=False)
    assert any("NaN" in p for p in problems)
    shard = next((url / "teachers" / TINY / "patch" / "c").rglob("*"))
    while shard.is_dir():
        shard = next(shard.iterdir())
    shard.unlink()
    problems = verify_cache(Cache.open(str(url)), progress=False)
    assert any("shard missing" in p for p in problems)
    result = run_cli("verify", str(url), "--no-progress")
    assert result.returncode == 1 and "problem:" in result.stderr


def test_teacher_forward_matches_timm_tokens(weights):
    teacher = build_teacher("dinov2-reg", size="small", resolution=28, weights="random", model_args={"depth": 2})
    x = torch.randint(0, 255, (2, 3, 28, 28), dtype=torch.uint8)
    s, p = teacher(x)
    feats = teacher.model.forward_features((x.float() - teacher.pixels.mean) / teacher.pixels.std)
    assert teacher.info.prefix_tokens == 5 and p.shape == (2, 4, 384)  # CLS + 4 registers dropped
    assert torch.allclose(s, feats[:, 0]) and torch.allclose(p, feats[:, 5:])
    pooled = build_teacher("siglip", resolution=32, weights="random", model_args={"depth": 2})
    assert pooled.info.summary_kind == "pooled" and pooled.info.prefix_tokens == 0


def test_a_teacher_recorded_by_an_older_version_or_its_weights_by_another_path_is_the_same_teacher(
        shapes_dir, weights, tmp_path, monkeypatch):
    """A 0.3 teacher (no ``summary_tokens`` in its record) keeps growing, and the same weights named by a relative
    path (the cache recorded an absolute one) are the same teacher: compared by their bytes' sha256; other bytes
    under the same name are not."""
    from safetensors.torch import load_file, save_file

    from unic_cache.cache.layout import seal_teacher

    url = str(tmp_path / "c.zarr")
    assert extract(str(shapes_dir), url, opts(weights)).complete
    root = zarr.open_group(url, mode="r+")
    group = root[f"teachers/{TINY}"]
    group.attrs.put({k: v for k, v in group.attrs.asdict().items() if k != "summary_tokens"})
    seal_teacher(root, TINY)
    monkeypatch.chdir(weights[TINY].parent)
    relative = {TINY: weights[TINY].relative_to(weights[TINY].parent)}
    assert extract(str(shapes_dir), url, opts(relative)).complete  # complete already: nothing to do
    assert extract(str(shapes_dir), url, opts(relative, views=VIEWS + 2)).complete
    store = Cache.open(url).teacher(TINY)
    assert store.views == VIEWS + 2 and store.info.summary_tokens == 1 and "summary_tokens" not in store.attrs
    other = tmp_path / "w" / weights[TINY].name
    other.parent.mkdir()
    save_file({k: v + 1 for k, v in load_file(str(weights[TINY])).items()}, str(other))
    with pytest.raises(UserError, match="weights_sha256"):
        extract(str(shapes_dir), url, opts({TINY: other}, views=VIEWS + 2))
