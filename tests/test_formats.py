"""Every legal shard reads, and a cache any zarr v3 reader opens: tar shards written by Python's tarfile,
libarchive and GNU tar in their formats, with non-ASCII, long (100+ bytes) and very long (255+ characters)
names, index exactly as webdataset sees them; tensorstore opens every array of a cache."""

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from unic_cache import Cache, UserError, extract, open_source
from unic_cache.cache.audit import cache_info

from .conftest import opts

KEYS = ["plain000", "café002", "日本語のキー" * 7, "deep/" + "d" * 120 + "/" + "x" * 140 + "/item", "ok/last"]


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (12 + seed, 10, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _members() -> list[tuple[str, bytes]]:
    out = []
    for i, key in enumerate(KEYS):
        out += [(f"{key}.png", _png(i)), (f"{key}.cls", str(i).encode())]
    return out


def _tarfile(path: Path, fmt: int) -> None:
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in _members():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _libarchive(path: Path, fmt: str) -> None:
    libarchive = pytest.importorskip("libarchive")
    with libarchive.file_writer(str(path), fmt) as archive:
        for name, data in _members():
            archive.add_file_from_memory(name, len(data), data)


def _gnu_tar(path: Path, fmt: str) -> None:
    if shutil.which("tar") is None or b"GNU tar" not in subprocess.run(["tar", "--version"], capture_output=True).stdout:
        pytest.skip("GNU tar is not installed")
    root = path.parent / f"files-{fmt}"
    for name, data in _members():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    names = [name for name, _ in _members()]
    subprocess.run(["tar", f"--format={fmt}", "-cf", str(path), "-C", str(root), "--no-recursion", *names], check=True)


WRITERS = {"tarfile-pax": lambda p: _tarfile(p, tarfile.PAX_FORMAT), "tarfile-gnu": lambda p: _tarfile(p, tarfile.GNU_FORMAT),
           "libarchive-pax": lambda p: _libarchive(p, "pax"), "libarchive-gnutar": lambda p: _libarchive(p, "gnutar"),
           "libarchive-pax-restricted": lambda p: _libarchive(p, "pax_restricted"),
           "gnu-tar-posix": lambda p: _gnu_tar(p, "posix"), "gnu-tar-gnu": lambda p: _gnu_tar(p, "gnu")}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_awkward_names_index_as_webdataset_sees_them_and_read_back(writer, tmp_path):
    shard = tmp_path / "data" / "shard-000.tar"
    shard.parent.mkdir()
    WRITERS[writer](shard)
    seen = [(s["__key__"], s["png"]) for s in wds.WebDataset(str(shard), shardshuffle=False)]
    source = open_source(str(shard.parent))
    index = source.index(progress=False)
    assert [str(k) for k in index.keys] == [k for k, _ in seen] == KEYS
    assert source.read_rows(index.location, [str(k) for k in index.keys], index.digest) == [png for _, png in seen]


def test_ustar_limits_are_refused_by_the_writer_not_misread(tmp_path):
    """A plain ustar tar cannot hold the long names at all (the writer refuses): nothing to misread."""
    with pytest.raises(ValueError):
        _tarfile(tmp_path / "x.tar", tarfile.USTAR_FORMAT)


def test_a_cache_from_awkward_shards_distils_and_verifies(weights, tmp_path):
    shard = tmp_path / "data" / "shard-000.tar"
    shard.parent.mkdir()
    _tarfile(shard, tarfile.PAX_FORMAT)  # what webdataset's TarWriter writes
    url = tmp_path / "c.zarr"
    assert extract(str(shard.parent), str(url), opts(weights, unit_rows=2)).complete
    from unic_cache.cache.audit import verify_cache

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
