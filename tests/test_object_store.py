"""Caches and shards on an S3-compatible object store: a real moto server on 127.0.0.1, started and
stopped here, reached through s3fs (credentials and endpoint from the usual AWS environment variables)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from unic_cache import Cache, UserError, extract
from unic_cache.cache.audit import array_values
from unic_cache.cache.repair import verify_cache
from unic_cache.cache.claims import CLAIM_DIR

from .conftest import HANG_GUARD, TINY, VIEWS, moto_s3, opts

pytest.importorskip("moto.server", reason="the dev extra (moto[server]) runs the object-store tests")


@pytest.fixture(scope="module")
def s3(shapes_dir):
    """A moto S3 server on the loopback address with a bucket holding the shapes shards; the AWS
    environment variables point every process (this one and its children) at it."""
    import s3fs

    with moto_s3():
        fs = s3fs.S3FileSystem()
        fs.mkdir("shapes")
        for shard in sorted(shapes_dir.glob("*.tar")):
            fs.put(str(shard), f"shapes/data/{shard.name}")
        yield fs


def same_values(local, remote_url: str) -> None:
    ref, got = array_values(zarr.open_group(str(local), mode="r")), array_values(zarr.open_group(remote_url, mode="r"))
    assert ref.keys() == got.keys()
    for path in ref:
        assert np.array_equal(ref[path], got[path], equal_nan=True), path


def cli_extract(data: str, cache: str, weights, *extra: str, env: dict | None = None) -> subprocess.Popen:
    """The small test extract as a CLI process (later flags override earlier ones: --workers 1)."""
    args = ["extract", data, "--cache", cache, "--teacher", f"timm:{TINY}", "--resolution", "32", "--weights",
            str(weights[TINY]), "--model-arg", "depth=2", "--views", str(VIEWS), "--batch-size", "8", "--workers", "0",
            "--unit-rows", "4", "--no-progress", *extra]
    return subprocess.Popen([sys.executable, "-m", "unic_cache", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def test_two_ranks_write_an_s3_cache_from_s3_shards(s3, weights, clean_cache):
    url, data = "s3://shapes/two-ranks.zarr", "s3://shapes/data/shapes-{000000..000002}.tar"
    procs = [cli_extract(data, url, weights, "--world-size", "2", "--rank", str(r)) for r in (1, 0)]
    for p in procs:
        _, err = p.communicate(timeout=HANG_GUARD)
        assert p.returncode == 0, err[-2000:]
    same_values(clean_cache, url)
    cache = Cache.open(url)
    assert cache.teacher(TINY).complete and verify_cache(cache, progress=False) == []
    assert not s3.exists(f"shapes/two-ranks.zarr/{CLAIM_DIR}")


def test_concurrent_plain_extracts_on_s3_equal_one(s3, shapes_dir, weights, clean_cache):
    url = "s3://shapes/race.zarr"
    procs = [cli_extract(str(shapes_dir), url, weights) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=HANG_GUARD)
        assert p.returncode == 0, err[-2000:]
    same_values(clean_cache, url)
    s3.invalidate_cache()
    assert not s3.exists(f"shapes/race.zarr/{CLAIM_DIR}")


def test_s3_caches_are_read_checked_and_foreign_prefixes_refused(s3, shapes_dir, weights, tmp_path):
    s3.pipe("shapes/theirs/report.csv", b"a,b\n")
    with pytest.raises(UserError, match="holds files extract did not write"):
        extract(str(shapes_dir), "s3://shapes/theirs", opts(weights))
    assert s3.cat("shapes/theirs/report.csv") == b"a,b\n"
    url = "s3://shapes/checked.zarr"
    assert extract(str(shapes_dir), url, opts(weights)).complete
    for args in (["info", url], ["verify", url, "--data", str(shapes_dir), "--no-progress"],
                 ["distill", str(shapes_dir), "--cache", url, "--out", str(tmp_path / "run"), "--student", TINY,
                  "--img-size", "32", "--model-arg", "depth=2", "--steps", "2", "--batch-size", "8", "--workers", "0",
                  "--no-progress"]):
        result = subprocess.run([sys.executable, "-m", "unic_cache", *args], capture_output=True, text=True,
                                timeout=HANG_GUARD)
        assert result.returncode == 0, (args[0], result.stderr[-2000:])
    shard = next(p for p in s3.find(f"shapes/checked.zarr/teachers/{TINY}/summary/c"))
    blob = bytearray(s3.cat(shard))
    blob[len(blob) // 2] ^= 1
    s3.pipe(shard, bytes(blob))
    problems = verify_cache(Cache.open(url), progress=False)
    assert any("crc32c" in p for p in problems), problems


def test_a_stage2_window_costs_a_few_requests_not_one_per_sample(s3, weights, tmp_path):
    """Requests counted from s3fs's own log of its S3 calls: the images of a block come in one ranged
    GET per input shard, and each cache array costs a constant (shard index + chunk), whatever the rows."""
    import logging

    from unic_cache.distillation.loader import DistillStream, Selection

    url, data = "s3://shapes/blocks.zarr", "s3://shapes/data/shapes-{000000..000002}.tar"
    assert extract(data, url, opts(weights, unit_rows=24)).complete
    stream = DistillStream(data, url, Selection.of(Cache.open(url), [TINY]), 32, 8)
    windows = stream.windows()
    first, second = next(windows), next(windows)
    stream[first]  # opens the source and the cache (metadata, index): once per worker
    calls = []

    class Count(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("CALL: "):
                calls.append(record.getMessage().split(" - ")[0][6:])

    logger = logging.getLogger("s3fs")
    handler, level = Count(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        window = stream[second]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    samples = len(window["row"])
    images = calls.count("get_object")
    # 3 ranged GETs of input shards + params (1) + summary and patch (shard index + chunk each): 9 measured
    assert samples == 24 and len(calls) <= 10 and images <= 3 + 1 + 2 * 2, calls


def test_storage_options_reach_every_store_and_worker(s3, shapes_dir, weights, clean_cache, tmp_path):
    """No endpoint in the environment: --storage-option (or YAML / --set) alone points extract, its DataLoader
    worker, info and distill at the server."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    url = "s3://shapes/options.zarr"
    proc = cli_extract("s3://shapes/data/shapes-{000000..000002}.tar", url, weights, "--workers", "1",
                       "--storage-option", f"s3.endpoint_url={endpoint}", env=env)
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 0, err[-2000:]
    same_values(clean_cache, url)
    config = tmp_path / "info.yaml"
    config.write_text(f"storage_options: {{s3: {{endpoint_url: '{endpoint}'}}}}\n")
    out = subprocess.run([sys.executable, "-m", "unic_cache", "info", url, "--config", str(config)], capture_output=True,
                         text=True, env=env, timeout=HANG_GUARD)
    assert out.returncode == 0 and "complete" in out.stdout, out.stderr[-2000:]


def test_an_s3_extract_killed_twice_resumes_bit_identical(s3, shapes_dir, weights, tmp_path):
    reference = tmp_path / "ref.zarr"
    extract(str(shapes_dir), str(reference), opts(weights, unit_rows=2))
    url = "s3://shapes/killed.zarr"

    def units_done() -> int:
        try:
            return int(zarr.open_group(url, mode="r")[f"teachers/{TINY}/progress"][:].sum())
        except Exception:  # not created yet
            return -1

    killed_at = []
    for stage in (2, 6):  # of 12 units
        proc = cli_extract(str(shapes_dir), url, weights, "--unit-rows", "2")
        deadline = time.monotonic() + HANG_GUARD
        while proc.poll() is None and time.monotonic() < deadline and units_done() < stage:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at.append(units_done())
    assert killed_at[-1] < 12, f"the run finished before it could be killed: {killed_at}"
    proc = cli_extract(str(shapes_dir), url, weights, "--unit-rows", "2")
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 0, err[-2000:]
    same_values(reference, url)
