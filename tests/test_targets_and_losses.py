import numpy as np
import pytest
import torch

from unic_cache import UserError
from unic_cache.distillation.losses import gaussian_nll, teacher_drop_weights, unic_loss
from unic_cache.distillation.normalize import TargetNorm, hadamard, phis_order


@pytest.mark.parametrize("order", [1, 2, 4, 12, 64, 192, 384, 768, 1152])
def test_hadamard_orders(order):
    h = hadamard(order)
    assert h is not None and set(np.unique(h)) <= {-1.0, 1.0}
    assert np.array_equal(h @ h.T, order * np.eye(order))


def test_phis_pads_only_where_no_hadamard_exists():
    assert phis_order(768) == 768 and phis_order(384) == 384 and phis_order(1536) == 1536
    assert phis_order(6) == 8 and hadamard(6) is None


def _synthetic(dim: int, n: int = 20000) -> np.ndarray:
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(dim, dim)) * np.geomspace(5, 0.01, dim)  # very unequal variances, correlated
    return rng.normal(size=(n, dim)) @ mix.T + rng.normal(size=dim) * 3


@pytest.mark.parametrize("dim", [12, 24, 10])
def test_phis_gives_unit_variance_in_every_dimension(dim):
    x = _synthetic(dim)
    norm = TargetNorm("phis", x.mean(0), np.cov(x, rowvar=False, bias=True))
    y = norm(torch.as_tensor(x, dtype=torch.float64)).double().numpy()
    assert y.shape[1] == phis_order(dim)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(y.var(0), 1.0, rtol=1e-3)  # isotropic: one scale for all dimensions
    raw_var = x.var(0)
    assert raw_var.max() / raw_var.min() > 10  # the input was far from isotropic


def test_standard_and_none():
    x = _synthetic(8)
    cov = np.cov(x, rowvar=False, bias=True)
    y = TargetNorm("standard", x.mean(0), cov)(torch.as_tensor(x)).double().numpy()
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(y.var(0), 1, rtol=1e-4)
    t = torch.randn(3, 8)
    assert torch.equal(TargetNorm("none", x.mean(0), cov)(t), t)
    with pytest.raises(UserError, match="unknown --norm"):
        TargetNorm("zca", x.mean(0), cov)


def test_unic_loss_and_gaussian_nll():
    t = torch.randn(4, 5, 16)
    assert torch.allclose(unic_loss(t, t), torch.zeros(4), atol=1e-6)
    assert (unic_loss(t + 1, t) > 0).all() and unic_loss(t[:, 0], t[:, 0]).shape == (4,)
    residual = torch.randn(4096, 8) * 0.3
    target = residual
    nll = [gaussian_nll(torch.zeros_like(target), torch.full_like(target, lv), target).mean().item()
           for lv in (np.log(0.09) - 1, np.log(0.09), np.log(0.09) + 1)]
    assert nll[1] < nll[0] and nll[1] < nll[2]  # minimised at the true log-variance


def test_teacher_dropping():
    gen = torch.Generator().manual_seed(0)
    losses = torch.rand(20000, 4, generator=gen)
    w = teacher_drop_weights(losses, 0.5, gen, "sample") * len(losses)  # per-sample weights
    top = losses.argmax(1)
    assert (w[torch.arange(len(w)), top] > 0).all()  # the max-loss teacher is never dropped
    torch.testing.assert_close(w.sum(1), torch.ones(len(w)))
    others = torch.ones_like(w, dtype=torch.bool)
    others[torch.arange(len(w)), top] = False
    assert abs((w[others] == 0).float().mean().item() - 0.5) < 0.01  # drop rate ≈ p
    assert torch.allclose(teacher_drop_weights(losses, 0.0, gen, "sample") * len(losses), torch.tensor(0.25))
    only_top = teacher_drop_weights(losses, 1.0, gen, "sample") * len(losses)
    assert torch.equal(only_top.argmax(1), top) and (only_top.max(1).values == 1).all()


def unic_aggregate_loop(losses: torch.Tensor, coins: torch.Tensor, p: float) -> torch.Tensor:
    """UNIC's rule written plainly from its description: per sample, the max-loss teacher is kept and
    each other one kept when its coin is >= p; kept coefficients are 1; the loss is the sum of kept
    losses divided by the number of kept (sample, teacher) pairs in the batch."""
    total, kept = 0.0, 0
    for b in range(losses.shape[0]):
        top = int(losses[b].argmax())
        for t in range(losses.shape[1]):
            if t == top or float(coins[b, t]) >= p:
                total += float(losses[b, t])
                kept += 1
    return torch.tensor(total / kept, dtype=torch.float64)


@pytest.mark.parametrize("p", [0.0, 0.5, 0.9, 1.0])
def test_batch_dropping_equals_unic_rule_loop(p):
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        losses = torch.rand(64, 4, generator=gen, dtype=torch.float64)
        coins = torch.rand(losses.shape, generator=torch.Generator().manual_seed(100 + seed))  # the same coin flips
        weights = teacher_drop_weights(losses, p, torch.Generator().manual_seed(100 + seed), "batch")
        torch.testing.assert_close((weights * losses).sum(), unic_aggregate_loop(losses, coins, p))
        assert torch.isclose(weights.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_gaussian_nll_is_finite_for_extreme_predictions():
    target = torch.randn(8, 16)
    mean = torch.full_like(target, 1e4).requires_grad_()
    for value in (-1e4, -80.0, 0.0, 80.0, 1e4):
        log_var = torch.full_like(target, value).requires_grad_()
        nll = gaussian_nll(mean, log_var, target).mean()
        nll.backward()
        assert torch.isfinite(nll) and torch.isfinite(log_var.grad).all() and torch.isfinite(mean.grad).all(), value
