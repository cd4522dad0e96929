"""Frozen-feature probes: kNN and linear classification, ridge regression, and k-means clustering (NMI).

All take features as float tensors (rows, dim) and return scores in points (accuracy %, R² x 100,
NMI x 100). Hyper-parameters (weight decay, ridge strength) are chosen on the validation rows and the
score is reported on the test rows.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Z-score every tensor with the train rows' mean and std."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 classes: int, k: int = 20, temperature: float = 0.07) -> float:
    """Cosine kNN with a temperature-weighted vote (weight exp(sim / T)), as in DINO."""
    bank = F.normalize(train_x.float(), dim=1)
    k = min(k, len(bank))
    correct = 0
    for x, y in zip(F.normalize(test_x.float(), dim=1).split(1024), test_y.split(1024)):
        sim, idx = (x @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(x), classes, device=x.device).scatter_add_(1, train_y[idx], (sim / temperature).exp())
        correct += int((votes.argmax(1) == y).sum())
    return 100.0 * correct / max(1, len(test_y))


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, weight_decay: float, max_iter: int) -> torch.Tensor:
    """Multinomial logistic regression (weights with a bias row), full batch L-BFGS with an L2 penalty."""
    x1 = torch.cat([x, torch.ones(len(x), 1, device=x.device)], 1)
    w = torch.zeros(x1.shape[1], classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x1 @ w, y) + weight_decay * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def accuracy(pred: torch.Tensor, target: torch.Tensor, classes: int) -> float:
    """Accuracy of class predictions, in %."""
    return 100.0 * float((pred == target).float().mean()) if len(target) else 0.0


def _predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (torch.cat([x, torch.ones(len(x), 1, device=x.device)], 1) @ w).argmax(1)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 test_x: torch.Tensor, test_y: torch.Tensor, classes: int,
                 weight_decays: tuple[float, ...] = WEIGHT_DECAYS, max_iter: int = 300,
                 metric: Callable[[torch.Tensor, torch.Tensor, int], float] = accuracy) -> tuple[float, float, float]:
    """(test score, val score, chosen weight decay): one probe per weight decay on train, the best ``metric``
    (accuracy, or ``dense.miou``) on val wins."""
    train_x, val_x, test_x = standardise(train_x.float(), val_x.float(), test_x.float())
    best = (-1.0, weight_decays[0], None)
    for wd in weight_decays:
        w = _fit_logistic(train_x, train_y, classes, wd, max_iter)
        score = metric(_predict(w, val_x), val_y, classes)
        if score > best[0]:
            best = (score, wd, w)
    return metric(_predict(best[2], test_x), test_y, classes), best[0], best[1]


def r2_score(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Coefficient of determination, x 100."""
    return 100.0 * float(1 - ((pred - target) ** 2).sum() / ((target - target.mean()) ** 2).sum().clamp_min(1e-12))


def ridge_r2(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
             test_x: torch.Tensor, test_y: torch.Tensor, alphas: tuple[float, ...] = RIDGE_ALPHAS) -> tuple[float, float, float]:
    """(test R² x 100, val R² x 100, chosen alpha) of a closed-form ridge regression on standardised features (float64)."""
    train_x, val_x, test_x = (x.double() for x in standardise(train_x.float(), val_x.float(), test_x.float()))
    y_mean = train_y.double().mean()
    yc = train_y.double() - y_mean
    gram, xty = train_x.T @ train_x, train_x.T @ yc
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    best = (-float("inf"), alphas[0], None)
    for alpha in alphas:
        w = torch.linalg.solve(gram + alpha * len(train_x) * eye, xty)
        score = r2_score(val_x @ w + y_mean, val_y.double())
        if score > best[0]:
            best = (score, alpha, w)
    return r2_score(test_x @ best[2] + y_mean, test_y.double()), best[0], best[1]


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 100, restarts: int = 4) -> torch.Tensor:
    """Cluster ids of the rows of ``x`` (Lloyd with k-means++ seeding; the restart of lowest inertia wins)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    best = (float("inf"), None)
    for _ in range(restarts):
        centres = x[torch.randint(len(x), (1,), generator=gen)]
        for _ in range(1, k):  # k-means++: next centre drawn proportionally to the squared distance
            d2 = torch.cdist(x, centres).min(1).values.pow(2).cpu()
            centres = torch.cat([centres, x[torch.multinomial(d2 + 1e-12, 1, generator=gen)]])
        for _ in range(iters):
            assign = torch.cdist(x, centres).argmin(1)
            new = torch.zeros_like(centres).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=k).unsqueeze(1)
            new = torch.where(counts > 0, new / counts.clamp_min(1), centres)
            if torch.allclose(new, centres):
                break
            centres = new
        assign = torch.cdist(x, centres).argmin(1)
        inertia = float(((x - centres[assign]) ** 2).sum())
        if inertia < best[0]:
            best = (inertia, assign)
    return best[1]


def nmi(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalised mutual information (arithmetic mean of the entropies), x 100."""
    _, a = torch.unique(a, return_inverse=True)
    _, b = torch.unique(b, return_inverse=True)
    joint = torch.zeros(int(a.max()) + 1, int(b.max()) + 1, dtype=torch.float64)
    joint.index_put_((a.cpu(), b.cpu()), torch.ones(len(a), dtype=torch.float64), accumulate=True)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * (p[nz] / (pa[:, None] * pb[None, :])[nz]).log()).sum())
    ha, hb = float(-(pa[pa > 0] * pa[pa > 0].log()).sum()), float(-(pb[pb > 0] * pb[pb > 0].log()).sum())
    return 100.0 * (2 * mi / (ha + hb) if ha + hb > 0 else 1.0)


def kmeans_nmi(x: torch.Tensor, y: torch.Tensor, classes: int, seed: int = 0) -> float:
    """NMI x 100 between the labels and k-means clusters (k = classes) of the L2-normalised features."""
    return nmi(y, kmeans(F.normalize(x.float(), dim=1), classes, seed))
