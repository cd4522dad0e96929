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
from unic_cache.cache.views import PlanConfig, plan_views
from unic_cache.models.photometric import photometric, reference
from unic_cache.models.pixels import channels_first, replay


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    import skimage.data as data

    return [data.coffee(), data.astronaut(), data.chelsea(), data.rocket(), data.immunohistochemistry(), data.colorwheel()]


def _crops(photos, res: int, n: int):
    """n (uint8 (3, res, res) geometry-only crops, view params) of real photos under UNIC's policy."""
    sizes = np.array([[p.shape[1], p.shape[0]] for p in photos])
    params = plan_views(PlanConfig(views=8), np.arange(n // 8), sizes[np.arange(n // 8) % len(photos)]).reshape(-1, 16)
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
    """Version 1 decodes the stored raster; version 2 (current) applies the EXIF orientation first."""
    assert pixel_pipeline(None) == PIPELINES[1] and CURRENT == PIPELINES[2]
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
    from unic_cache.cache.store import seal_root

    seal_root(group)  # as the version that wrote it would have sealed it
    from .conftest import run_cli

    result = run_cli("info", str(future))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "pixel pipeline 9" in result.stderr
