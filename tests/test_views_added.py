"""Views added to a made cache (``extract --views K2`` on a cache of K1 views): a view block per teacher that reads
exactly as a cache made with K2 views, crash-safe, verified and repaired like the rest, refused where it cannot apply."""

import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from unic_cache import Cache, UserError, extract
from unic_cache.cache.repair import verify
from unic_cache.cache.info import cache_info
from unic_cache.cache.sizing import human
from unic_cache.distillation.loader import DistillStream, Selection

from .conftest import HANG_GUARD, SMALL8, TINY, opts, run_cli


def _same(a, b, views: int) -> None:
    """Two teachers read the same: every feature array of every view, the view parameters, and the statistics (to
    float64 rounding: the grown one merges its moments in another order)."""
    assert a.views == b.views == views
    rows = slice(0, a.cache.n)
    assert np.array_equal(a.params(rows), b.params(rows))
    for kind in a.kinds:
        for name in a.arrays(kind):
            for view in range(views):
                assert np.array_equal(a.read_stored(name, rows, view), b.read_stored(name, rows, view)), (name, view)
        assert np.array_equal(a.read(kind, rows, slice(None)), b.read(kind, rows, slice(None)))
        sa, sb = a.stats(kind), b.stats(kind)
        assert sa["count"][0] == sb["count"][0] == a.cache.n * views * (1 if kind == "summary" else int(np.prod(a.stored_grid)))
        for stat in ("mean", "var", "cov"):
            np.testing.assert_allclose(sa[stat], sb[stat], rtol=1e-12, atol=1e-15)


@pytest.fixture(scope="module")
def four_views(shapes_dir, weights, tmp_path_factory):
    """A cache made with 4 views, and one made with 2 and grown to 4 (pca+int8: a fitted codec)."""
    out = tmp_path_factory.mktemp("grow")
    made, grown = str(out / "four.zarr"), str(out / "grown.zarr")
    assert extract(str(shapes_dir), made, opts(weights, views=4, codec="pca-32+int8")).complete
    assert extract(str(shapes_dir), grown, opts(weights, views=2, codec="pca-32+int8")).complete
    report = extract(str(shapes_dir), grown, opts(weights, views=4, codec="pca-32+int8"))
    assert report.complete and report.units_done_before == 6 and report.units_done_now == 6
    return made, grown


def test_a_cache_grown_from_2_to_4_views_reads_as_one_made_with_4(four_views, shapes_dir, weights):
    made, grown = four_views
    _same(Cache.open(made).teacher(TINY), Cache.open(grown).teacher(TINY), 4)
    cache = Cache.open(grown)
    assert cache.views == 2  # the cache's own plan is untouched: the teacher holds the added views
    assert [b.name for b in cache.teacher(TINY).blocks] == [f"{TINY}/views-2"]
    assert verify(grown, progress=False).problems == []
    row = cache_info(cache)[1][0]  # `info` counts the added views and their bytes
    assert (row["views"], row["units done"], row["units"], row["complete"]) == (4, 12, 12, True)
    assert row["bytes on disk"] == sum(g.nbytes_stored() for g in (cache.teacher(TINY), *cache.teacher(TINY).blocks))
    again = extract(str(shapes_dir), grown, opts(weights, views=4, codec="pca-32+int8"))  # nothing left to do
    assert again.complete and again.extra == {"already_complete": True}


def test_a_second_teacher_asked_for_more_views_than_the_cache_is_grown_too(four_views, shapes_dir, weights, tmp_path):
    """A teacher added with --views 4 to a 2-view cache gets its 2 views and a block; stage 2 reads the views every
    chosen teacher has."""
    _, grown = four_views
    url = str(tmp_path / "mixed.zarr")
    shutil.copytree(grown, url)
    assert extract(str(shapes_dir), url, opts(weights, arch=SMALL8, res=24, views=3)).complete
    cache = Cache.open(url)
    assert cache.teacher(SMALL8).views == 3 and cache.teacher(TINY).views == 4
    both = DistillStream(str(shapes_dir), url, Selection.of(cache, [TINY, SMALL8]), 32, 8)
    assert both.views == 3
    alone = DistillStream(str(shapes_dir), url, Selection.of(cache, [TINY]), 32, 8)
    assert alone.views == 4
    samples = iter(alone)
    seen = {next(samples)["view"] for _ in range(4 * cache.n)}
    assert seen == {0, 1, 2, 3}  # every view read, the block's included
    with pytest.raises(UserError, match="between 1 and the 3 views"):
        DistillStream(str(shapes_dir), url, Selection.of(cache, [TINY, SMALL8]), 32, 8, views=4)


def test_growing_is_refused_where_it_cannot_apply(four_views, shapes_dir, weights):
    _, grown = four_views
    for change, message in (({"seed": 5}, "planned with other views"), ({"crop_scale": (0.5, 1.0)}, "other views"),
                            ({"views": 1}, "has 2 views per sample")):
        with pytest.raises(UserError, match=message) as err:
            extract(str(shapes_dir), grown, opts(weights, codec="pca-32+int8", **{"views": 4, **change}))
        assert "\n" not in str(err.value)


def _block_units_done(cache, first: int) -> int:
    folder = cache / "teachers" / TINY / f"views-{first}" / "progress"
    if not (folder / "zarr.json").exists():
        return -1
    return sum(1 for p in (folder / "c").rglob("*") if p.is_file()) if (folder / "c").exists() else 0


def test_growing_killed_then_run_again_is_bit_identical(four_views, shapes_dir, weights, tmp_path):
    made = str(tmp_path / "made.zarr")  # the same units of one row (a unit's moments are summed batch by batch)
    assert extract(str(shapes_dir), made, opts(weights, views=4, codec="pca-32+int8", unit_rows=1)).complete
    cache = tmp_path / "killed.zarr"
    assert extract(str(shapes_dir), str(cache), opts(weights, views=2, codec="pca-32+int8", unit_rows=1)).complete
    args = ["extract", str(shapes_dir), "--cache", str(cache), "--teacher", f"timm:{TINY}", "--resolution", "32",
            "--weights", str(weights[TINY]), "--model-arg", "depth=2", "--views", "4", "--batch-size", "8",
            "--workers", "0", "--unit-rows", "1", "--codec", "pca-32+int8", "--no-progress"]
    killed_at = []
    for stage in ("adding the block", 6):  # killed while the block is created, then in the middle of its units
        proc = subprocess.Popen([sys.executable, "-m", "unic_cache", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + HANG_GUARD
        while proc.poll() is None and time.monotonic() < deadline:
            done = _block_units_done(cache, 2)
            if stage == "adding the block" and (cache / "teachers" / TINY / "views-2").exists() or \
                    isinstance(stage, int) and done >= stage:
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at.append(_block_units_done(cache, 2))
    assert killed_at[-1] < 24, f"the run finished before it could be killed: {killed_at}"
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    _same(Cache.open(made).teacher(TINY), Cache.open(str(cache)).teacher(TINY), 4)
    assert verify(str(cache), progress=False).problems == []


def test_damage_in_added_views_is_found_and_repaired(four_views, shapes_dir, weights, tmp_path):
    made, grown = four_views
    url = tmp_path / "damaged.zarr"
    shutil.copytree(grown, url)
    block = url / "teachers" / TINY / "views-2"
    next(p for p in sorted((block / "patch" / "c").rglob("*")) if p.is_file()).unlink()  # a shard of the block
    params = next(p for p in sorted((block / "params" / "c").rglob("*")) if p.is_file())
    params.write_bytes(params.read_bytes()[:-3] + b"xyz")  # its view parameters garbled
    found = verify(str(url), progress=False)
    assert any("views-2" in p and "shard missing" in p for p in found.problems), found.problems
    assert any("views-2 params" in p for p in found.problems), found.problems
    repaired = verify(str(url), repair=True, progress=False)
    assert repaired.not_repaired == [] and any("views-2: removed" in r for r in repaired.repaired), repaired.repaired
    assert Cache.open(str(url)).teacher(TINY).views == 2  # until the same extract adds them again
    assert extract(str(shapes_dir), str(url), opts(weights, views=4, codec="pca-32+int8")).complete
    _same(Cache.open(made).teacher(TINY), Cache.open(str(url)).teacher(TINY), 4)
    assert verify(str(url), progress=False).problems == []


def test_extract_without_teacher_grows_every_teacher_with_its_recorded_options(shapes_dir, weights, tmp_path):
    """`extract DATA --cache C --views K` grows each teacher of C with the options it was extracted with (two
    teachers of other widths, grids and codecs here), and `--teacher NAME` one of them; the planned bytes it prints
    are what the growth writes, and the result reads as caches made with K views."""
    two, made = tmp_path / "two.zarr", tmp_path / "made.zarr"
    for cache, views in ((two, 2), (made, 3)):
        assert extract(str(shapes_dir), str(cache), opts(weights, views=views, codec="pca-32+int8")).complete
        assert extract(str(shapes_dir), str(cache), opts(weights, SMALL8, 24, views=views, name="second")).complete
    one = run_cli("extract", str(shapes_dir), "--cache", str(two), "--views", "3", "--teacher", "second", "--workers", "0")
    assert one.returncode == 0, one.stderr
    block = Cache.open(str(two)).teacher("second").blocks[0]
    planned = [line for line in one.stderr.splitlines() if "to write" in line]
    assert len(planned) == 1 and "views 2-2 to compute" in planned[0]
    assert human(block.nbytes_encoded()) in planned[0]  # what was planned is what the block holds
    assert Cache.open(str(two)).teacher(TINY).views == 2  # --teacher NAME grows that one only
    every = run_cli("extract", str(shapes_dir), "--cache", str(two), "--views", "3", "--workers", "0")
    assert every.returncode == 0, every.stderr
    assert "second: already complete" in every.stdout and f"{TINY}: 1 units written now, 6 before" in every.stdout
    for name in (TINY, "second"):
        _same(Cache.open(str(made)).teacher(name), Cache.open(str(two)).teacher(name), 3)
    nothing = run_cli("extract", str(shapes_dir), "--cache", str(tmp_path / "new.zarr"), "--views", "3")
    assert nothing.returncode == 2 and "extract needs --teacher" in nothing.stderr
