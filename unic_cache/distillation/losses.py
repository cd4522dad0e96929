"""Distillation losses and teacher dropping, per sample so that teachers can be weighted per sample.

- ``unic_loss``: 0.5·(1 − cos) + 0.5·smooth-L1 (UNIC), averaged over features (and tokens).
- ``gaussian_nll``: the task-agnostic objective of Formont et al. 2025: a head predicts the mean and
  log-variance of the (standardised) teacher embedding from the student embedding; its negative
  log-likelihood upper-bounds the conditional entropy H(T | S) that bounds teacher disagreement.
- ``teacher_drop_weights``: per sample keep the teacher with the highest loss and drop each other one
  with probability p; vectorised over the batch. ``norm="batch"`` is UNIC's rule (naver/unic,
  ``aggregate_losses``): kept teachers get coefficient 1 and the loss is divided by the number of kept
  (sample, teacher) pairs in the whole batch; ``norm="sample"`` normalises the kept weights per sample.
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


LOG_VAR_BOUND = 12.0  # |log-variance| is softly bounded: exp() never overflows, gradients never vanish


def gaussian_nll(mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per dimension of target under N(mean, exp(log_var)) -> (B,); the predicted
    log-variance is squashed into (-LOG_VAR_BOUND, LOG_VAR_BOUND) by a scaled tanh."""
    log_var = LOG_VAR_BOUND * torch.tanh(log_var.float() / LOG_VAR_BOUND)
    nll = 0.5 * (log_var + (target.float() - mean.float()).pow(2) * torch.exp(-log_var) + math.log(2 * math.pi))
    return _per_sample(nll)


def teacher_drop_weights(losses: torch.Tensor, p: float, generator: torch.Generator | None = None,
                         norm: str = "batch") -> torch.Tensor:
    """(B, T) per-sample teacher losses -> (B, T) weights with ``(weights * losses).sum()`` the loss: the
    max-loss teacher always kept, each other kept with probability 1 − p; kept pairs weigh 1 / (pairs
    kept in the batch) with ``norm="batch"`` (UNIC), 1 / (teachers kept for the sample) / B with ``"sample"``."""
    keep = torch.rand(losses.shape, generator=generator, device=losses.device) >= p
    keep.scatter_(1, losses.detach().argmax(1, keepdim=True), True)
    keep = keep.to(losses.dtype)
    if norm == "batch":
        return keep / keep.sum()
    return keep / keep.sum(1, keepdim=True) / losses.shape[0]
