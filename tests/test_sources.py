import numpy as np
import pytest

from unic_cache import UserError, open_source
from unic_cache.shapes import make_shapes


def test_tar_index_order_offsets_and_key_checks(shapes_dir):
    src = open_source(str(shapes_dir / "shapes-{000000..000002}.tar"))
    index = src.index(progress=False)
    assert index.n == 24 and [s["count"] for s in index.shards] == [10, 10, 4]
    assert [s["first_row"] for s in index.shards] == [0, 10, 20]
    assert list(index.keys[:2]) == ["sample00000000", "sample00000001"] and not index.bad
    assert (index.image_size == 32).all()
    assert src.read(index.location[13], str(index.keys[13]))[:4] == b"\x89PNG"
    with pytest.raises(UserError, match="index mismatch"):
        src.read(index.location[13], str(index.keys[12]))
    same = open_source(str(shapes_dir)).index(progress=False)  # a folder of .tar is the same dataset
    assert same.fingerprint() == index.fingerprint()


def test_the_image_is_the_plain_member_not_a_label_map(shapes_dir, tmp_path):
    import io
    import tarfile

    from PIL import Image

    index = open_source(str(shapes_dir)).index(progress=False)
    with tarfile.open(shapes_dir / "shapes-000000.tar") as tar:
        names = [m.name for m in tar.getmembers()][:4]
        image = tar.extractfile("sample00000003.png").read()
    assert names[0] == "sample00000000.colour-seg.png"  # a label map comes before the image in the tar
    row = list(index.keys).index("sample00000003")
    assert open_source(str(shapes_dir)).read(index.location[row], "sample00000003") == image
    path = tmp_path / "maps-only.tar"  # a sample whose only image member has a compound extension
    with tarfile.open(path, "w") as tar:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, format="PNG")
        info = tarfile.TarInfo("k1.left.png")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))
    only = open_source(str(path)).index(progress=False)
    assert only.n == 1 and not only.bad


def test_bad_images_are_recorded_and_odd_modes_converted(messy_dir):
    index = open_source(str(messy_dir)).index(progress=False)
    keys = list(index.keys)
    bad = {keys[r]: reason for r, reason in index.bad.items()}
    assert set(bad) == {"f_truncated", "g_empty", "h_text"}
    assert "empty" in bad["g_empty"]
    for ok in ("a_ok", "b_cmyk", "c_16bit", "d_palette", "e_rgba", "i_ok"):
        assert index.image_size[keys.index(ok)].min() > 0


def test_duplicate_keys_and_missing_shards_are_errors(tmp_path):
    make_shapes(tmp_path / "a", n=3, size=16, shard_size=3)
    make_shapes(tmp_path / "b", n=3, size=16, shard_size=3)
    (tmp_path / "b" / "shapes-000000.tar").rename(tmp_path / "b" / "other.tar")
    with pytest.raises(UserError, match="duplicate sample key"):
        open_source(f"{tmp_path}/a/shapes-000000.tar::{tmp_path}/b/other.tar").index(progress=False)
    with pytest.raises(UserError, match="not found"):
        open_source(str(tmp_path / "a" / "nope-{0..1}.tar"))


def test_image_folder_source(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"nope")
    src = open_source(str(tmp_path))
    index = src.index(progress=False)
    assert [s["name"] for s in index.shards] == ["cat", "dog"] and index.n == 7
    assert list(index.keys[:3]) == ["cat/0.png", "cat/1.png", "cat/2.png"]
    assert [index.keys[r] for r in index.bad] == ["dog/broken.jpg"]
    assert src.read(index.location[0], str(index.keys[0]))[:4] == b"\x89PNG"


def _holey_bmp(path, shade: int) -> bytes:
    """A BMP file with a hole in the middle (so that ``tar --sparse`` stores it sparse); its bytes as stored."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((256, 256, 3), shade, np.uint8)).save(buf, "BMP")
    data = buf.getvalue()
    with open(path, "wb") as f:
        f.write(data[:8192])
        f.seek(len(data) - 8192)
        f.write(data[-8192:])
    return path.read_bytes()


@pytest.mark.parametrize("flags", [["--format=gnu"], ["--format=posix", "--sparse-version=0.0"],
                                   ["--format=posix", "--sparse-version=0.1"], ["--format=posix", "--sparse-version=1.0"]])
def test_a_sparse_member_is_refused_with_advice_that_works(tmp_path, flags):
    """A sparse member's bytes are not one range of the shard: refused in one line (it was read as other bytes), and
    the shard re-packed as the message says indexes to the bytes webdataset reads."""
    import subprocess

    import webdataset as wds

    files, data = tmp_path / "files", {}
    files.mkdir()
    for i, key in enumerate("ab"):
        data[key] = _holey_bmp(files / f"{key}.bmp", 60 * i)
    names = ["a.bmp", "b.bmp"]
    sparse, plain = tmp_path / "sparse", tmp_path / "plain"
    sparse.mkdir(), plain.mkdir()
    subprocess.run(["tar", "--sparse", *flags, "-cf", str(sparse / "s.tar"), "-C", str(files), *names], check=True)
    with pytest.raises(UserError, match=r"stored sparse .* re-pack the shard without --sparse .*--format=ustar") as err:
        open_source(str(sparse)).index(progress=False)
    assert "\n" not in str(err.value)
    subprocess.run(["tar", "--format=ustar", "-cf", str(plain / "s.tar"), "-C", str(files), *names], check=True)
    source = open_source(str(plain))
    index = source.index(progress=False)
    theirs = {s["__key__"]: s["bmp"] for s in wds.WebDataset(str(plain / "s.tar"), shardshuffle=False)}
    assert source.read_rows(index.location, [str(k) for k in index.keys], index.digest) == [theirs["a"], theirs["b"]]
    assert theirs == data


def test_a_member_named_like_a_sample_field_is_refused_as_webdataset_does(tmp_path):
    """``a.__key__`` would overwrite the sample's own key: webdataset raises "duplicate file name", and so do we."""
    import io
    import tarfile

    (tmp_path / "d").mkdir()
    with tarfile.open(tmp_path / "d" / "s.tar", "w") as tar:
        for name in ("a.png", "a.__key__"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(UserError, match="'a.__key__'.*duplicate file name"):
        open_source(str(tmp_path / "d")).index(progress=False)
