"""The pixel pipeline: the batched photometric part against torchvision's per-image definitions (which the
replay of pixel pipeline 1 applied: ``photometric.reference``), and the version a cache records."""

import json

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from unic_cache import Cache, UserError
from unic_cache.cache.pixels import CURRENT, PIPELINES, decode_image, pixel_pipeline
from unic_cache.cache.views import ViewPlan, plan_views
from unic_cache.models.photometric import photometric, reference
from unic_cache.models.device_pixels import channels_first, replay


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    import skimage.data as data

    return [data.coffee(), data.astronaut(), data.chelsea(), data.rocket(), data.immunohistochemistry(), data.colorwheel()]


def _crops(photos, res: int, n: int):
    """n (uint8 (3, res, res) geometry-only crops, view params) of real photos under UNIC's policy."""
    sizes = np.array([[p.shape[1], p.shape[0]] for p in photos])
    params = plan_views(ViewPlan(views=8), np.arange(n // 8), sizes[np.arange(n // 8) % len(photos)]).reshape(-1, 16)
    images = [Image.fromarray(photos[(i // 8) % len(photos)]) for i in range(n)]
    crops = np.stack([CURRENT.crop(image, p, res) for image, p in zip(images, params)])
    return channels_first(crops), params


def _agree(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float, float]:
    """(largest difference in levels, fraction of values within one level, fraction identical)."""
    diff = (a.int() - b.int()).abs()
    return int(diff.max()), float((diff <= 1).float().mean()), float((diff == 0).float().mean())


@pytest.mark.parametrize("res", [224, 32])
def test_batched_policy_matches_torchvision_per_image(photos, res):
    """The whole policy: at least 99.9% of values within one level (a one-level difference in an early
    operation can grow in a later one, e.g. a contrast factor above 1)."""
    x, params = _crops(photos, res, 64)
    batched = photometric(x, params)
    expected = torch.stack([reference(x[i], params[i]) for i in range(len(x))])
    worst, within, same = _agree(batched, expected)
    assert within >= 0.999 and same >= 0.999 and worst <= 3, (worst, within, same)
    assert not torch.equal(batched, x)  # the policy did something


@pytest.mark.parametrize("op,column,value", [("brightness", 5, 1.31), ("contrast", 6, 0.66), ("saturation", 7, 1.17),
                                             ("hue", 8, 0.083), ("hue", 8, -0.5), ("grayscale", 13, 1.0),
                                             ("blur", 14, 2.7), ("solarize", 15, 1.0)])
def test_each_operation_matches_torchvision(photos, op, column, value):
    x, params = _crops(photos, 224, 16)
    params[:, 5:9], params[:, 9:13], params[:, 13:16] = (1, 1, 1, 0), (0, 1, 2, 3), 0
    params[:, column] = value
    worst, _, same = _agree(photometric(x, params), torch.stack([reference(x[i], params[i]) for i in range(len(x))]))
    assert worst <= 1 and same >= 0.999, (op, worst, same)
    if op not in ("hue", "blur"):  # the same float32 arithmetic: bit-identical
        assert same == 1.0, op


def test_identity_params_leave_pixels_alone_and_replay_is_both_parts(photos):
    x, params = _crops(photos, 64, 16)
    eval_view = params.copy()
    eval_view[:, 5:16] = (1, 1, 1, 0, 0, 1, 2, 3, 0, 0, 0)
    assert torch.equal(photometric(x, eval_view), x)
    image = Image.fromarray(photos[0])
    assert torch.equal(replay(image, params[3], 64), photometric(x[3:4], params[3:4])[0])


def test_pipeline_versions_and_exif_orientation(tmp_path):
    """Version 1 decodes the stored raster; versions 2 and 3 (current) apply the EXIF orientation first."""
    assert pixel_pipeline(None) == PIPELINES[1] and CURRENT == PIPELINES[3]
    raster = np.zeros((20, 40, 3), np.uint8)
    raster[:, :10] = 255  # a white band on the left of a 40x20 raster
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = tmp_path / "phone.jpg"
    Image.fromarray(raster).save(path, exif=exif, quality=95)
    data = path.read_bytes()
    assert PIPELINES[1].decode(data).size == (40, 20)
    upright = PIPELINES[2].decode(data)
    assert upright.size == (20, 40) and np.asarray(upright)[:10].mean() > 200  # the band is now on top
    assert np.array_equal(np.asarray(PIPELINES[3].decode(data)), np.asarray(upright))
    assert decode_image(data).size == (40, 20)
    with pytest.raises(UserError, match="pixel pipeline 9.*upgrade"):
        pixel_pipeline({"version": 9})


def test_a_cache_records_its_pipeline_and_an_unknown_one_is_refused(clean_cache, tmp_path):
    import shutil

    assert Cache.open(str(clean_cache)).pixels == CURRENT
    assert json.loads((clean_cache / "zarr.json").read_text())["attributes"]["pixels"]["version"] == CURRENT.version
    future = tmp_path / "future.zarr"
    shutil.copytree(clean_cache, future)
    group = zarr.open_group(str(future), mode="a")
    group.attrs["pixels"] = {"version": 9}
    from unic_cache.cache.format import seal_root

    seal_root(group)  # as the version that wrote it would have sealed it
    from .conftest import run_cli

    result = run_cli("info", str(future))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "pixel pipeline 9" in result.stderr


def _jpeg(image: Image.Image, **options) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def test_pipeline_3_decodes_jpegs_to_pils_pixels(photos):
    """libjpeg-turbo through torchvision gives PIL's pixels: every EXIF orientation, grayscale, CMYK,
    progressive, 4:4:4 and 4:2:2; a truncated JPEG is refused by both (the index marks it bad alike)."""
    photo = Image.fromarray(photos[1])
    cases = [_jpeg(photo.convert("L")), _jpeg(photo.convert("CMYK")), _jpeg(photo, progressive=True, quality=90),
             _jpeg(photo, subsampling=0), _jpeg(photo, subsampling=1), _jpeg(Image.fromarray(photos[0]), quality=75)]
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        cases.append(_jpeg(photo.resize((120, 80)), exif=exif))
    for data in cases:
        expected = np.asarray(PIPELINES[2].decode(data))
        array = PIPELINES[3].decode_array(data)
        assert array.dtype == torch.uint8 and array.is_contiguous() and np.array_equal(array.numpy(), expected)
    truncated = cases[-1][: len(cases[-1]) // 2]
    for version in (2, 3):
        with pytest.raises(OSError, match="truncated"):
            PIPELINES[version].decode_array(truncated)


def _views(photos, n_views: int, seed: int = 0):
    """Packed photos (and a tall and a tiny one) with UNIC's views of each."""
    from unic_cache.models.geometry import pack

    images = [*photos, np.ascontiguousarray(photos[1][:, :90]), photos[5][:9, :13]]  # 512x90: the vertical pass first
    sizes = np.array([[im.shape[1], im.shape[0]] for im in images])
    params = plan_views(ViewPlan(views=n_views, seed=seed), np.arange(len(images)), sizes).reshape(-1, 16)
    which = np.repeat(np.arange(len(images)), n_views)
    data, shapes = pack([torch.from_numpy(np.ascontiguousarray(im)) for im in images])[:2]
    return images, data, shapes, which, params


@pytest.mark.parametrize("res", [224, 40, 517])
def test_device_geometry_is_pils_resize_bit_for_bit(photos, res):
    """The device kernel (float64 products of PIL's integer weights, both pass orders) and the CPU kernel give
    exactly PIL's crop + bicubic resize + flip, view by view, down- and upscaling (517 px upscales most views)."""
    from unic_cache.models import geometry

    images, data, shapes, which, params = _views(photos, 6, seed=res)
    expected = channels_first(np.stack([PIPELINES[2].crop(Image.fromarray(images[i]), p, res) for i, p in zip(which, params)]))
    order = geometry.horizontal_first(shapes[which, 0].numpy(), shapes[which, 1].numpy(), res)
    assert order.any() and (res == 517 or not order.all())  # both orders are exercised
    assert torch.equal(geometry.cut_exact(data, shapes, which, params, res), expected)
    assert torch.equal(geometry.cut_views(data, shapes, which, params, res), expected)


def test_pipeline_2_and_3_caches_and_students_are_bit_identical(tmp_path, weights):
    """The same JPEG photos through pipeline 2 (PIL decode and geometry in the workers) and pipeline 3 (libjpeg-turbo
    via torchvision, geometry cut from the packed images): the same index, features, statistics and digests, and
    students distilled from the two caches (1 and 2 workers, with an online teacher too) equal weight for weight."""
    from safetensors.torch import load_file

    from unic_cache import DistillOptions, distill, extract, open_source
    from unic_cache.cache.audit import array_values
    from unic_cache.photos import make_photos

    from .conftest import STUDENT, opts

    make_photos(tmp_path / "photos", n=10, seed=4, shard_size=5)
    data, source = str(tmp_path / "photos"), open_source(str(tmp_path / "photos"))
    students = {}
    for version in (2, 3):
        url = str(tmp_path / f"v{version}.zarr")
        options = opts(weights, crop_scale=[0.08, 1.0], workers=1)  # pipeline 3: through a worker's reused buffers
        Cache.open_or_create(url, lambda: source.index(progress=False, pixels=PIPELINES[version]), source,
                             options.view_plan(None), pixels=PIPELINES[version])
        assert extract(data, url, options).complete
        assert Cache.open(url).pixels == PIPELINES[version]
        for workers, online in ((1, False), (2, True)):
            out = tmp_path / f"run{version}-{workers}"
            distill(DistillOptions(data=data, cache=url, out=str(out), student=STUDENT, img_size=32, model_args={"depth": 2},
                                  steps=3, batch_size=4, workers=workers, progress=False, online=online))
            students[version, workers] = load_file(str(out / "model" / "model.safetensors"))
    two, three = (array_values(zarr.open_group(str(tmp_path / f"v{v}.zarr"), mode="r")) for v in (2, 3))
    assert two.keys() == three.keys() and all(np.array_equal(two[k], three[k], equal_nan=True) for k in two)
    for workers in (1, 2):
        a, b = students[2, workers], students[3, workers]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_ring_buffer_overwritten_before_it_was_copied_is_an_error(monkeypatch):
    """A worker's reused pixel buffers carry their window's number: one reused too early never yields other pixels."""
    from unic_cache.models import geometry

    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())  # as in a DataLoader worker
    ring = geometry.SharedRing(1)
    images = [torch.full((4, 5, 3), 7, dtype=torch.uint8)]
    first = geometry.pack(images, None, ring)
    assert torch.equal(geometry.settle(first.items())["pixels"], images[0].reshape(-1))
    geometry.pack([torch.zeros((4, 5, 3), dtype=torch.uint8)], None, ring)  # the one slot, reused
    with pytest.raises(RuntimeError, match="reused a pixel buffer"):
        geometry.settle(first.items())


def test_an_old_cache_says_which_path_replays_it(clean_cache):
    from unic_cache.cache.info import cache_info

    assert "in the loader workers, per image" in PIPELINES[2].note() and PIPELINES[3].note() is None
    dataset, _ = cache_info(Cache.open(str(clean_cache)))
    assert dataset["pixel pipeline"] == 3 and dataset["view geometry"] == "on the device, batched"
