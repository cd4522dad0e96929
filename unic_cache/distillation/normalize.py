"""Target standardisation: from a teacher's cached statistics (``TargetNorm``: no warm-up), or UNIC's
running statistics as an option (``RunningNorm``).

- ``standard``: per dimension, (x - mean) / std, as UNIC.
- ``phis``: PHI-S (Ranzinger et al. 2024): rotate onto the principal axes, spread the variance evenly
  over all dimensions with a Hadamard rotation, and divide by one scale, so that every output dimension
  has unit variance. Dims that are not a power of two use a Paley Hadamard factor (192, 384, 768, 1152,
  1536, ... all have one); where none exists, the targets are zero-padded to the next order that has one.
- ``none``: the raw features.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .options import NORMS

RUNNING_MOMENTUM = (1.0, 0.001)  # UNIC's momentum of the running statistics: first and last step, cosine between


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % k for k in range(2, int(n**0.5) + 1))


def _paley(order: int) -> np.ndarray:
    """Paley construction I: a Hadamard matrix of order q + 1 for a prime q = 3 (mod 4)."""
    q = order - 1
    squares = {(k * k) % q for k in range(1, q)}
    chi = np.array([0] + [1 if k in squares else -1 for k in range(1, q)])
    jacobsthal = chi[(np.arange(q)[None, :] - np.arange(q)[:, None]) % q]
    s = np.zeros((order, order))
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, jacobsthal
    return np.eye(order) + s


def hadamard(order: int) -> np.ndarray | None:
    """A Hadamard matrix (entries ±1, H Hᵀ = order·I) of ``order`` = 2^a · (q + 1), or None."""
    power = 1
    while order % power == 0:
        rest = order // power
        if rest == 1 or (rest % 4 == 0 and _is_prime(rest - 1) and (rest - 1) % 4 == 3):
            h = np.ones((1, 1)) if rest == 1 else _paley(rest)
            sylvester = np.ones((1, 1))
            while sylvester.shape[0] < power:
                sylvester = np.block([[sylvester, sylvester], [sylvester, -sylvester]])
            return np.kron(sylvester, h)
        power *= 2
    return None


def phis_order(dim: int) -> int:
    """The smallest order >= dim that has a Hadamard matrix here (dim itself for all common widths)."""
    order = dim
    while hadamard(order) is None:
        order += 1
    return order


class TargetNorm(nn.Module):
    """standard: y = (x - mean) * scale; phis: y = (x - mean) @ matrix (D -> out_dim); none: y = x."""

    def __init__(self, mode: str, mean: np.ndarray, cov: np.ndarray, eps: float = 1e-6):
        super().__init__()
        if mode not in NORMS:
            raise UserError(f"unknown --norm {mode!r}; choose one of {', '.join(NORMS)}")
        dim = len(mean)
        self.mode, self.in_dim, self.out_dim = mode, dim, dim
        weight = np.ones(dim)
        if mode == "standard":
            weight = 1.0 / np.sqrt(np.diag(cov) + eps)
        elif mode == "phis":
            self.out_dim = phis_order(dim)
            eigval, eigvec = np.linalg.eigh(cov)
            rotation = np.zeros((dim, self.out_dim))
            rotation[:, :dim] = eigvec  # principal axes, then zero columns for padded dims
            h = hadamard(self.out_dim) / np.sqrt(self.out_dim)
            scale = np.sqrt(max(eigval.clip(min=0).sum() / self.out_dim, eps))
            weight = rotation @ h.T / scale
        self.register_buffer("mean", torch.as_tensor(mean if mode != "none" else np.zeros(dim), dtype=torch.float32))
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))

    @classmethod
    def from_stats(cls, mode: str, stats: dict[str, np.ndarray]) -> "TargetNorm":
        """From ``TeacherStore.stats(kind)``."""
        return cls(mode, stats["mean"], stats["cov"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float() - self.mean
        return y @ self.weight if self.mode == "phis" else y * self.weight


def running_momentum(step: int, total: int) -> float:
    """UNIC's momentum at ``step`` of ``total``: a cosine from 1.0 down to 0.001, without warm-up."""
    start, end = RUNNING_MOMENTUM
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * step / max(1, total)))


class RunningNorm(nn.Module):
    """UNIC's per-dimension standardisation with running statistics (naver/unic, ``standard_normalize``):
    a batch is standardised with the running mean and std from before it, ``(x - mean) / (std + eps)``;
    then they move toward the batch's own (gathered over every process; over samples and tokens; std
    unbiased, plus eps) with the momentum of the step: ``stat = stat * (1 - m) + batch_stat * m``. They
    start at mean 0 and std 1, so the first batch is standardised with those, and the first update (m = 1)
    replaces them. ``momentum`` is set by the training loop before each step."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.mode, self.in_dim, self.out_dim, self.eps, self.momentum = "running", dim, dim, eps, 0.0
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        y = (x - self.mean) / (self.std + self.eps)
        with torch.no_grad():
            everyone = _gather(x).reshape(-1, x.shape[-1])
            m = self.momentum
            self.mean.copy_(self.mean * (1 - m) + everyone.mean(0) * m)
            self.std.copy_(self.std * (1 - m) + (everyone.std(0) + self.eps) * m)
        return y


def _gather(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every process, concatenated along the first dimension (``x`` itself outside DDP)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)
