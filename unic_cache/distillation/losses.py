"""Distillation losses and teacher dropping, per sample so that teachers can be weighted per sample.

- ``unic_loss``: 0.5·(1 − cos) + 0.5·smooth-L1 (UNIC), averaged over features (and tokens).
- ``gaussian_nll``: the task-agnostic objective of Formont et al. 2025: a head predicts the mean and
  log-variance of the (standardised) teacher embedding from the student embedding; its negative
  log-likelihood upper-bounds the conditional entropy H(T | S) that bounds teacher disagreement.
- ``teacher_drop_weights``: per sample keep the teacher with the highest loss, drop each other one
  with probability p, and normalise the kept weights to sum to one; vectorised over the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first: (B, ...) -> (B,)."""
    return x.reshape(x.shape[0], -1).mean(1)


def unic_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, D) or (B, T, D) predictions and targets -> (B,) loss."""
    cos = F.cosine_similarity(pred.float(), target.float(), dim=-1, eps=1e-6)
    l1 = F.smooth_l1_loss(pred.float(), target.float(), reduction="none").mean(-1)
    return _per_sample(0.5 * (1 - cos) + 0.5 * l1)


def gaussian_nll(mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per dimension of target under N(mean, exp(log_var)) -> (B,)."""
    log_var = log_var.float()
    nll = 0.5 * (log_var + (target.float() - mean.float()).pow(2) * torch.exp(-log_var) + math.log(2 * math.pi))
    return _per_sample(nll)


def teacher_drop_weights(losses: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, T) per-sample teacher losses -> (B, T) weights: the max-loss teacher always kept, each other
    kept with probability 1 − p, kept weights normalised to sum to one per sample."""
    keep = torch.rand(losses.shape, generator=generator, device=losses.device) >= p
    keep.scatter_(1, losses.detach().argmax(1, keepdim=True), True)
    keep = keep.to(losses.dtype)
    return keep / keep.sum(1, keepdim=True)
