"""Hugging Face ``datasets`` parquet shards as a source: the same index contract as tar shards."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from unic_cache import Cache, extract, open_source
from unic_cache.evaluation.labels import read_labels

from .conftest import opts


@pytest.fixture(scope="module")
def blobs() -> list[bytes]:
    """JPEG and PNG images of several sizes, and two that cannot be decoded."""
    rng = np.random.default_rng(3)
    out = []
    for i in range(10):
        image = Image.fromarray(rng.integers(0, 255, (30 + 3 * i, 40 - 2 * i, 3), dtype=np.uint8))
        buf = io.BytesIO()
        image.save(buf, format="JPEG" if i % 3 else "PNG", quality=90)
        out.append(buf.getvalue())
    out[4], out[7] = b"not an image at all", out[7][: len(out[7]) // 3]
    return out


def test_parquet_from_datasets_gives_the_features_of_the_same_images_as_tars(blobs, weights, tmp_path):
    datasets = pytest.importorskip("datasets")
    tars, parquets = tmp_path / "tars", tmp_path / "parquet"
    tars.mkdir()
    parquets.mkdir()
    labels = [i % 3 for i in range(len(blobs))]
    with wds.TarWriter(str(tars / "train-000.tar"), mtime=0.0) as sink:
        for i, (b, y) in enumerate(zip(blobs, labels)):
            sink.write({"__key__": f"s{i:03d}", "jpg": b, "cls": str(y).encode()})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c", "d"])})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in blobs], "label": labels}, features=features)
    ds.to_parquet(str(parquets / "train-00000-of-00001.parquet"))
    for folder in (tars, parquets):
        assert extract(str(folder), str(tmp_path / f"{folder.name}.zarr"), opts(weights)).complete
    a, b = (Cache.open(str(tmp_path / f"{name}.zarr")) for name in ("tars", "parquet"))
    assert np.array_equal(a.bad, b.bad) and a.bad.sum() == 2 and np.array_equal(a.image_size, b.image_size)
    assert list(b.keys[:2]) == ["train-00000-of-00001/00000000", "train-00000-of-00001/00000001"]
    for kind in ("summary", "patch"):
        x, y = (c.teacher(c.teacher_names()[0]).group[kind][...] for c in (a, b))
        assert np.array_equal(x, y, equal_nan=True), kind
    got = read_labels(open_source(str(parquets)), b.keys)
    assert [(t.name, t.classes) for t in got.tasks] == [("label", 4)]  # the ClassLabel's names, not the max seen
    assert got.values["label"].tolist() == labels


def test_parquet_rows_are_read_by_row_group(blobs, tmp_path):
    """pyarrow's writer, several row groups, a null image: every row reads back its bytes (digest checked)."""
    images = [{"bytes": b, "path": f"img{i}.jpg"} for i, b in enumerate(blobs)] + [{"bytes": None, "path": "gone.jpg"}]
    table = pa.table({"image": images, "y": list(range(len(images)))})
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=3)
    pq.write_table(table.slice(0, 4), tmp_path / "part-1.parquet", row_group_size=2)
    source = open_source(str(tmp_path / "*.parquet"))
    index = source.index(progress=False)
    assert index.n == len(images) + 4 and index.bad[len(images) - 1].startswith("no image bytes")
    good = [i for i in range(index.n) if i not in index.bad]
    data = source.read_rows(index.location[good], [str(k) for k in index.keys[good]], index.digest[good])
    expected = [b for i, b in enumerate(blobs) if i not in (4, 7)] + blobs[:4]  # undecodable and null rows are bad
    assert data == expected
    assert source.read(index.location[12], str(index.keys[12])) == blobs[1]  # part-1's second row
