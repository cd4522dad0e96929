"""A kill at enumerated persistence points (``unic_cache.crashpoints``, ``unic_cache.crashtest``), then the same
command: the result is the uninterrupted run's, file by file. The suite takes the points where the cache's state
changes meaning (seals and claims: a teacher made, work claimed and released; a unit flagged done) and every fifth
point of a distill; ``pipelines/bench/faults_bench.py --every-point`` takes every point of five commands."""

import re
import shutil

from unic_cache.crashtest import Runner

from .conftest import TINY


def _seals_and_claims(points: list[str]) -> list[int]:
    return [i for i, p in enumerate(points, 1) if re.search(r"seal\.|\.unic-cache|/progress/", p)]


def test_a_kill_at_each_seal_and_claim_then_the_same_command_is_bit_identical(shapes_dir, weights, tmp_path):
    cache, run, work = tmp_path / "c.zarr", tmp_path / "run", tmp_path / "work"
    work.mkdir()
    extract = ["extract", str(shapes_dir), "--cache", str(cache), "--teacher", f"timm:{TINY}", "--resolution", "32",
               "--weights", str(weights[TINY]), "--model-arg", "depth=2", "--views", "2", "--batch-size", "8",
               "--workers", "0", "--unit-rows", "8", "--no-progress"]
    runner = Runner({"OMP_NUM_THREADS": "1"})
    try:
        n, trials = runner.every_point(extract, str(cache), lambda: shutil.rmtree(cache, ignore_errors=True), str(work),
                                       pick=_seals_and_claims)
        # a point may be one later in a killed run (two writers race to make one folder): all but the last are reached
        assert n > 100 and len(trials) >= 10 and sum(t.killed for t in trials) >= len(trials) - 1
        assert [t for t in trials if not t.identical] == []
        assert any(t.event.endswith("seal.json") and "teachers/" in t.event for t in trials)  # the case that stuck
        distill = ["distill", str(shapes_dir), "--cache", str(cache), "--out", str(run), "--student", TINY,
                   "--img-size", "32", "--model-arg", "depth=2", "--steps", "3", "--batch-size", "8", "--workers", "0",
                   "--checkpoint-every", "2", "--no-progress"]
        n, trials = runner.every_point(distill, str(run), lambda: shutil.rmtree(run, ignore_errors=True), str(work),
                                       pick=lambda points: list(range(1, len(points) + 1, 5)))
        assert n > 10 and [t for t in trials if not t.identical] == []
        assert not list(run.rglob("*unic-tmp*"))
    finally:
        runner.close()
