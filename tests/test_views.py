import numpy as np
import torch
from PIL import Image

from unic_cache.cache.views import PARAM_NAMES, ViewPlan, plan_views, uniforms
from unic_cache.models.device_pixels import replay


def test_uniforms_are_a_pure_function_of_seed_row_view():
    a = uniforms(3, np.arange(100), np.arange(4), 8)
    b = uniforms(3, np.arange(50, 100), np.arange(4), 8)
    assert np.array_equal(a[50:], b)
    assert not np.array_equal(uniforms(4, np.arange(100), np.arange(4), 8), a)
    assert 0 <= a.min() and a.max() < 1
    assert abs(a.mean() - 0.5) < 0.02 and abs(a.std() - 12 ** -0.5) < 0.02


def test_plan_is_independent_of_blocking_and_view0_is_the_centre_crop():
    cfg = ViewPlan(views=6, seed=1)
    sizes = np.array([[64, 48]] * 40 + [[30, 90]] * 40, np.int32)
    full = plan_views(cfg, np.arange(80), sizes)
    part = plan_views(cfg, np.arange(33, 80), sizes[33:])
    assert full.shape == (80, 6, len(PARAM_NAMES)) and full.dtype == np.float32
    assert np.array_equal(full[33:], part)
    v0 = full[:, 0]
    side = np.minimum(sizes[:, 0], sizes[:, 1]) * 0.875
    assert np.allclose(v0[:, 2] * sizes[:, 0], side) and np.allclose(v0[:, 3] * sizes[:, 1], side)
    assert np.allclose(v0[:, 0] + v0[:, 2] / 2, 0.5) and (v0[:, 4:5] == 0).all() and (v0[:, 13:] == 0).all()
    rand = full[:, 1:]
    x0, y0, w, h = (rand[..., i] for i in range(4))
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 1 + 1e-6).all() and (y0 + h <= 1 + 1e-6).all()
    assert 0.35 < rand[..., 4].mean() < 0.65  # flip p 0.5
    assert ((rand[..., 14] == 0) | ((rand[..., 14] >= 0.1) & (rand[..., 14] <= 5))).all()
    assert np.array_equal(np.sort(rand[..., 9:13], axis=-1), np.broadcast_to(np.arange(4), rand[..., 9:13].shape))


def test_replay_is_deterministic_and_follows_the_params():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    params = plan_views(ViewPlan(views=8, seed=0), np.arange(10), np.array([[60, 40]] * 10))
    for p in params.reshape(-1, params.shape[-1])[:30]:
        x = replay(image, p, 24)
        assert x.dtype == torch.uint8 and x.shape == (3, 24, 24)
        assert torch.equal(x, replay(image, p, 24))
    p = params[0, 0].copy()
    flipped = p.copy()
    flipped[4] = 1
    assert torch.equal(replay(image, p, 24).flip(-1), replay(image, flipped, 24))
    gray = p.copy()
    gray[13] = 1
    g = replay(image, gray, 24)
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
