"""Interoperability check: awkward shards written by independent tools, indexed and extracted by unic-cache,
compared with webdataset's reading of the same shards and with tensorstore's reading of the cache.

Cases: tar shards from Python's tarfile (pax, GNU), libarchive (pax, pax_restricted, gnutar) and GNU tar
(--format=posix, gnu), each with an ASCII key, a non-ASCII one, a 42-character CJK key (over 100 bytes of
UTF-8) and a path over 255 characters; Hugging Face parquet shards from ``datasets`` and from pyarrow.
One line per case: keys equal to webdataset's (tars), image bytes read back equal, and every array of the
cache read by tensorstore equal to zarr-python's. Then awkward members (sparse in GNU and POSIX 0.0/0.1/1.0 form,
hard and symbolic links, a ``__key__`` member): the same keys and bytes as webdataset, or refused in one line.

    python pipelines/bench/interop_check.py --write
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from report import heading, publish
from unic_cache import Cache, ExtractOptions, UserError, extract, open_source

KEYS = ["plain000", "café002", "日本語のキー" * 7, "deep/" + "d" * 120 + "/" + "x" * 140 + "/item", "ok/last"]


def images() -> list[bytes]:
    out = []
    for i in range(len(KEYS)):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (24 + i, 20, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def members() -> list[tuple[str, bytes]]:
    return [m for key, png in zip(KEYS, images()) for m in ((f"{key}.png", png), (f"{key}.cls", b"0"))]


def write_tarfile(path: Path, fmt: int) -> None:
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_libarchive(path: Path, fmt: str) -> None:
    import libarchive

    with libarchive.file_writer(str(path), fmt) as archive:
        for name, data in members():
            archive.add_file_from_memory(name, len(data), data)


def write_gnu_tar(path: Path, fmt: str) -> None:
    root = path.parent.parent / f"files-{fmt}"
    for name, data in members():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    subprocess.run(["tar", f"--format={fmt}", "-cf", str(path), "-C", str(root), "--no-recursion",
                    *(name for name, _ in members())], check=True)


def write_datasets(path: Path) -> None:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images()], "label": [0] * len(KEYS)},
                               features=features).to_parquet(str(path))


def write_pyarrow(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images())],
                             "label": [0] * len(KEYS)}), path, row_group_size=2)


CASES = {"tarfile pax": ("tar", lambda p: write_tarfile(p, tarfile.PAX_FORMAT)),
         "tarfile gnu": ("tar", lambda p: write_tarfile(p, tarfile.GNU_FORMAT)),
         "libarchive pax": ("tar", lambda p: write_libarchive(p, "pax")),
         "libarchive pax_restricted": ("tar", lambda p: write_libarchive(p, "pax_restricted")),
         "libarchive gnutar": ("tar", lambda p: write_libarchive(p, "gnutar")),
         "GNU tar --format=posix": ("tar", lambda p: write_gnu_tar(p, "posix")),
         "GNU tar --format=gnu": ("tar", lambda p: write_gnu_tar(p, "gnu")),
         "datasets parquet": ("parquet", write_datasets), "pyarrow parquet (row groups of 2)": ("parquet", write_pyarrow)}


def write_awkward(path: Path, how: str) -> None:
    """A shard of three samples by GNU tar whose members are awkward: stored sparse (``--sparse`` in the GNU format or
    a POSIX sparse version), a hard link or a symbolic link as b's image, or a member named ``a.__key__``."""
    files = path.parent / "files"
    files.mkdir()
    for i, name in enumerate("abc"):
        bmp = io.BytesIO()
        Image.fromarray(np.full((256, 256, 3), 40 * i, np.uint8)).save(bmp, "BMP")
        data = bmp.getvalue()
        with open(files / f"{name}.bmp", "wb") as f:  # a hole in the middle, so --sparse stores it sparse
            f.write(data[:8192])
            f.seek(len(data) - 8192)
            f.write(data[-8192:])
        (files / f"{name}.cls").write_text(str(i))
    names = [f"{n}.{e}" for n in "abc" for e in ("bmp", "cls")]
    options = {"gnu sparse": ["--sparse", "--format=gnu"], "hard link": ["--format=gnu"], "symbolic link": ["--format=gnu"],
               "__key__ member": ["--format=gnu"]}
    sparse = how.split("posix sparse ")[-1] if how.startswith("posix sparse") else None
    if how in ("hard link", "symbolic link"):
        (files / "b.bmp").unlink()
        (os.link if how == "hard link" else os.symlink)("a.bmp" if how == "symbolic link" else files / "a.bmp", files / "b.bmp")
    if how == "__key__ member":
        (files / "a.__key__").write_text("mine")
        names.insert(1, "a.__key__")
    flags = options.get(how) or ["--sparse", "--format=posix", f"--sparse-version={sparse}"]
    subprocess.run(["tar", *flags, "-cf", str(path), "-C", str(files), "--no-recursion", *names], check=True)


AWKWARD = ["gnu sparse", "posix sparse 0.0", "posix sparse 0.1", "posix sparse 1.0", "hard link", "symbolic link",
           "__key__ member"]


def check_awkward(how: str, tmp: Path) -> str:
    """One awkward shard: webdataset's keys and image bytes against ours, or our one-line refusal."""
    import webdataset as wds

    folder = tmp / how.replace(" ", "_")
    folder.mkdir()
    shard = folder / "shard-000.tar"
    try:
        write_awkward(shard, how)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"| {how} | not run ({type(exc).__name__}: {str(exc)[:60]}) | | |"
    try:
        seen = [(s["__key__"], s.get("bmp")) for s in wds.WebDataset(str(shard), shardshuffle=False)]
        theirs = f"reads {len(seen)} samples"
    except ValueError as exc:
        seen, theirs = None, f"raises ({str(exc).split(':')[1].strip()[:40]})"
    try:
        source = open_source(str(folder))
        index = source.index(progress=False)
        keys = [str(k) for k in index.keys]
        read = [source.read_rows(index.location[i:i + 1], [k], index.digest[i:i + 1])[0] if i not in index.bad else None
                for i, k in enumerate(keys)]
        same = seen is not None and keys == [k for k, _ in seen] and read == [b for _, b in seen]
        ours, ok = f"reads {len(keys)} samples{', the same keys and bytes' if same else ', OTHER keys or bytes'}", same
    except UserError as exc:
        ours, ok = f"refused in one line: {str(exc)[:90]}", "\n" not in str(exc)
    return f"| {how} | {theirs} | {ours} | {'ok' if ok else 'FAILS'} |"


def check(case: str, kind: str, write, tmp: Path) -> str:
    """One case: write, index, read back, extract, compare; the verdict as a line."""
    import tensorstore as ts
    import webdataset as wds

    folder = tmp / case.replace(" ", "_").replace("=", "-")
    folder.mkdir()
    shard = folder / ("shard-000.tar" if kind == "tar" else "train-00000-of-00001.parquet")
    try:
        write(shard)
    except (ImportError, OSError, subprocess.CalledProcessError) as exc:  # a writer this machine lacks
        return f"| {case} | not run ({type(exc).__name__}: {str(exc)[:60]}) | | |"
    source = open_source(str(folder))
    index = source.index(progress=False)
    keys = [str(k) for k in index.keys]
    if kind == "tar":
        seen = [(s["__key__"], s["png"]) for s in wds.WebDataset(str(shard), shardshuffle=False)]
        same_keys = keys == [k for k, _ in seen] == KEYS
        same_bytes = source.read_rows(index.location, keys, index.digest) == [png for _, png in seen]
    else:
        same_keys = len(keys) == len(KEYS)
        same_bytes = source.read_rows(index.location, keys, index.digest) == images()
    cache = tmp / f"{folder.name}.zarr"
    extract(str(folder), str(cache), ExtractOptions(teacher="timm:vit_tiny_patch16_224", resolution=32, weights="random",
                                                    model_args={"depth": 1}, views=2, codec="f16", patch_codec="pca-8+int8",
                                                    calibration=8, progress=False))
    opened = Cache.open(str(cache))
    arrays = [p.parent for p in cache.rglob("zarr.json") if json.loads(p.read_text())["node_type"] == "array"]
    equal = all(np.array_equal(ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(a)}}).result().read().result(),
                               opened.group[str(a.relative_to(cache))][...], equal_nan=True) for a in arrays)
    ok = same_keys and same_bytes and equal
    return (f"| {case} | {'yes' if same_keys else 'NO'}{' (webdataset)' if kind == 'tar' else ''} | "
            f"{'yes' if same_bytes else 'NO'} | {'yes' if equal else 'NO'} ({len(arrays)} arrays) | {'ok' if ok else 'FAILS'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="append the results to BENCHMARKS.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [check(case, kind, write, Path(tmp)) for case, (kind, write) in CASES.items()]
        awkward = [check_awkward(how, Path(tmp)) for how in AWKWARD]
    publish(heading("Interoperability: awkward shards from other writers, the cache in tensorstore") + [
        f"Keys: {', '.join(repr(k if len(k) < 30 else k[:12] + '...' + k[-8:]) for k in KEYS)} (the CJK key is "
        f"{len(KEYS[2].encode())} bytes of UTF-8, the long path {len(KEYS[3]) + 4} characters). Each shard indexed and "
        "extracted (a 1-block ViT, f16 summaries, pca-8+int8 patch tokens); every array of each cache read back with "
        "tensorstore.", "",
        "| writer | keys equal | image bytes equal | tensorstore reads every array equal | verdict |",
        "|---|---|---|---|---|", *rows, "",
        "Awkward members (GNU tar; a BMP with a hole so that --sparse stores it sparse): webdataset's reading against "
        "ours, or our one-line refusal; a sparse member cannot be read by byte range.", "",
        "| member | webdataset | unic-cache | verdict |", "|---|---|---|---|", *awkward, ""], args.write)


if __name__ == "__main__":
    main()
