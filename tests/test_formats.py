"""Every legal shard reads, and a cache any zarr v3 reader opens: tar shards written by Python's tarfile,
libarchive and GNU tar in their formats, with non-ASCII, long (100+ bytes) and very long (255+ characters)
names, index exactly as webdataset sees them; tensorstore opens every array of a cache."""

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from unic_cache import Cache, UserError, extract, open_source
from unic_cache.cache.info import cache_info

from .conftest import HANG_GUARD, opts

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["plain000", "café002", "日本語のキー" * 7, "deep/" + "d" * 120 + "/" + "x" * 140 + "/item", "ok/last"]


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (12 + seed, 10, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_awkward_names_from_every_writer_read_as_webdataset_and_tensorstore_see_them():
    """pipelines/bench/interop_check.py: tarfile (pax, GNU), libarchive (pax, pax_restricted, gnutar), GNU tar
    (posix, gnu) and parquet (datasets, pyarrow) shards with non-ASCII, 100+ byte and 255+ character names; then
    awkward members (sparse in four forms, hard and symbolic links, a ``__key__`` member): webdataset's keys and
    bytes, or refused in one line."""
    result = subprocess.run([sys.executable, str(ROOT / "pipelines" / "bench" / "interop_check.py")], capture_output=True,
                            text=True, timeout=HANG_GUARD, cwd=ROOT / "pipelines" / "bench")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")
            and not line.startswith(("| writer", "| member"))]
    assert len(rows) == 9 + 7 and all(r.endswith("| ok |") or "not run" in r for r in rows), result.stdout
    assert sum(r.endswith("| ok |") for r in rows) >= 5  # tarfile's, parquet's and whichever other writers are here


def test_a_cache_from_awkward_shards_distils_and_verifies(weights, tmp_path):
    shard = tmp_path / "data" / "shard-000.tar"
    shard.parent.mkdir()
    with wds.TarWriter(str(shard), mtime=0.0) as sink:  # pax, as webdataset writes
        for i, key in enumerate(KEYS):
            sink.write({"__key__": key, "png": _png(i), "cls": b"0"})
    url = tmp_path / "c.zarr"
    assert extract(str(shard.parent), str(url), opts(weights, unit_rows=2)).complete
    from unic_cache.cache.repair import verify_cache

    cache = Cache.open(str(url))
    assert verify_cache(cache, open_source(str(shard.parent)), progress=False) == []
    assert list(cache.keys) == KEYS


def test_a_key_used_twice_in_one_shard_is_refused_at_index_time(tmp_path):
    (tmp_path / "d").mkdir()
    with tarfile.open(tmp_path / "d" / "s.tar", "w") as tar:
        for name, data in (("same.png", _png(0)), ("same.cls", b"0"), ("other.png", _png(1)), ("same.png", _png(2)),
                           ("same.cls", b"1")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(UserError, match="key 'same' is used by two samples in s.tar"):
        open_source(str(tmp_path / "d")).index(progress=False)


def test_compressed_shards_are_named(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train-0.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(UserError, match="train-0.tar.gz is a compressed tar shard.*decompress"):
        open_source(str(tmp_path / "d"))
    with pytest.raises(UserError, match="compressed tar shard"):
        open_source(str(tmp_path / "d" / "train-0.tar.gz"))


def test_bad_sample_reasons_are_stable_and_listed(messy_dir, weights, tmp_path):
    from .conftest import run_cli

    first, second = (open_source(str(messy_dir)).index(progress=False).bad for _ in range(2))
    assert first == second and not any("0x" in reason for reason in first.values()), first
    url = tmp_path / "m.zarr"
    assert extract(str(messy_dir), str(url), opts(weights)).complete
    dataset, _ = cache_info(Cache.open(str(url)))
    assert sum(dataset["bad reasons"].values()) == dataset["bad samples"] == 3
    shown = run_cli("info", str(url))
    assert shown.returncode == 0 and "x UnidentifiedImageError" in shown.stdout
    listed = run_cli("info", str(url), "--bad").stdout.splitlines()
    assert [line.split("\t")[0] for line in listed] == ["f_truncated", "g_empty", "h_text"]


def test_every_array_of_a_cache_opens_in_tensorstore(weights, shapes_dir, tmp_path):
    """Keys as UTF-8 bytes and offsets: a reader that is not zarr-python maps rows to keys."""
    ts = pytest.importorskip("tensorstore")
    url = tmp_path / "c.zarr"
    assert extract(str(shapes_dir), str(url), opts(weights, codec="f16", patch_codec="pca-8+int8")).complete
    arrays = [p.parent for p in url.rglob("zarr.json") if json.loads(p.read_text())["node_type"] == "array"]
    assert len(arrays) > 20
    cache = Cache.open(str(url))
    for folder in arrays:
        values = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(folder)}}).result().read().result()
        name = str(folder.relative_to(url))
        reference = cache.group[name][...]
        assert np.array_equal(values, reference, equal_nan=True), name
    data = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(url / "index" / "keys_utf8")}}).result()
    offsets = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(url / "index" / "keys_offsets")}}).result()
    raw, at = data.read().result().tobytes(), offsets.read().result()
    assert [raw[a:b].decode() for a, b in zip(at[:-1], at[1:])] == list(cache.keys)
    notes = json.loads((url / "teachers" / "vit_tiny_patch16_224" / "zarr.json").read_text())["attributes"]["codecs"]["patch"]
    assert notes["arrays"] == {"values": "patch", "scale": "patch_scale", "basis": "codec/patch/basis",
                               "center": "codec/patch/center"}
    assert "patch_scale" in notes["decode"] and "basis.T" in notes["decode"] and "-128" in notes["missing"]
