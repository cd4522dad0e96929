import hashlib
import json

import pytest
from typer.testing import CliRunner

from unic_cache.cli import app

from .conftest import TINY

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_make_shapes_is_deterministic_and_carries_labels(tmp_path):
    digests = []
    for out in ("a", "b"):
        result = invoke("make-shapes", str(tmp_path / out), "--n", "7", "--size", "24", "--shard-size", "4")
        assert result.exit_code == 0, result.output
        digests.append([hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / out).glob("*.tar"))])
    assert digests[0] == digests[1] and len(digests[0]) == 2
    import webdataset as wds

    sample = next(iter(wds.WebDataset(str(tmp_path / "a" / "shapes-000000.tar"), shardshuffle=False)))
    labels = json.loads(sample["json"])
    assert set(labels) >= {"shape", "colour", "texture", "count", "size", "x", "y"}
    tasks = json.loads((tmp_path / "a" / "tasks.json").read_text())
    assert {t["name"] for t in tasks if not t["dense"]} == set(labels)
    assert {t["name"] for t in tasks if t["dense"]} == {"shape-seg", "colour-seg"} <= {k[:-4] for k in sample if k.endswith(".png")}
    assert json.loads((tmp_path / "a" / "split.json").read_text()) == {"seed": 0, "fractions": [0.6, 0.2]}


@pytest.mark.parametrize("args, message", [
    (["extract", "{data}", "--cache", "{tmp}/c", "--teacher", "nosuch"], "unknown teacher 'nosuch'"),
    (["extract", "{data}", "--cache", "{tmp}/c", "--teacher", "dinov2", "--size", "tiny"], "has no size 'tiny'"),
    (["extract", "{data}", "--cache", "{tmp}/c", "--teacher", "dinov2", "--weights", "{tmp}/none.pth"], "weight file not found"),
    (["extract", "{tmp}/nodata/x-{{0..3}}.tar", "--cache", "{tmp}/c", "--teacher", "dinov2"], "input shard not found"),
    (["extract", "{data}", "--cache", "{tmp}/c", "--teacher", f"timm:{TINY}", "--model-arg", "depth"], "KEY=VALUE"),
    (["extract", "{data}", "--cache", "{tmp}/c", "--teacher", "dinov2", "--rank", "3", "--world-size", "2"], "--rank must be"),
    (["extract", "{data}", "--cache", "{tmp}/c", "--teacher", "dinov2", "--codec", "gzip"], "unknown codec"),
    (["extract", "{data}", "--cache", "{tmp}/c", "--teacher", "dinov2", "--patch-codec", "pool-2+pca-0"], "unknown codec"),
    (["extract", "{data}", "--cache", "{tmp}/c", "--teacher", "dinov2", "--name", "dino.v2"], "no '/' or '.'"),
    (["extract", "{data}", "--cache", "{tmp}/c", "--teacher", "dinov2", "--no-patch", "--patch-codec", "int8"], "--patch-codec needs"),
    (["plan", "--samples", "10", "--teachers", "dinov2", "--storage-option", "endpoint=x"], "PROTOCOL.KEY=VALUE"),
    (["info", "{tmp}/missing.zarr"], "no cache at"),
])
def test_bad_input_gives_one_line_errors(args, message, shapes_dir, tmp_path):
    args = [a.format(data=shapes_dir, tmp=tmp_path) for a in args]
    result = invoke(*args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_offline_hub_error_names_weights(shapes_dir, tmp_path):
    result = invoke("extract", str(shapes_dir), "--cache", str(tmp_path / "c"), "--teacher", "dino", "--size", "small",
                    "--resolution", "32", "--no-progress")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--weights" in lines[0] and "vit_small_patch16_224.dino" in lines[0]


def test_extract_info_verify_from_the_cli(shapes_dir, weights, tmp_path):
    cache = str(tmp_path / "cli.zarr")
    result = invoke("extract", str(shapes_dir), "--cache", cache, "--teacher", f"timm:{TINY}", "--resolution", "32",
                    "--weights", str(weights[TINY]), "--model-arg", "depth=2", "--views", "2", "--workers", "1",
                    "--unit-rows", "8", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "3 units written now" in result.stdout and "complete" in result.stdout
    info = invoke("info", cache, "--json")
    assert info.exit_code == 0
    data = json.loads(info.stdout)
    assert data["dataset"]["samples"] == 24 and (data["teachers"][0]["units done"], data["teachers"][0]["units"]) == (3, 3)  # numbers as numbers
    assert data["teachers"][0]["grid"] == "2x2" and float(data["teachers"][0]["vs float32"]) < 0.55
    table = invoke("info", cache).stdout
    assert "per sample-view" in table and "KiB" in table and max(map(len, table.splitlines())) < 160
    assert "{" not in table  # no Python dict in a column
    ok = invoke("verify", cache, "--data", str(shapes_dir), "--no-progress")
    assert ok.exit_code == 0 and "ok:" in ok.stdout
    other = tmp_path / "other"
    assert invoke("make-shapes", str(other), "--n", "3", "--size", "16").exit_code == 0
    wrong = invoke("verify", cache, "--data", str(other), "--no-progress")
    assert wrong.exit_code == 1 and "not the one this cache was made for" in wrong.stderr


def test_teachers_lists_aliases():
    result = invoke("teachers")
    assert result.exit_code == 0
    assert "vit_base_patch14_dinov2.lvd142m" in result.stdout and "16x16" in result.stdout
    assert "siglip" in result.stdout and "timm:<name>" in result.stdout
