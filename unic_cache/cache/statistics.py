"""Exact dataset statistics from partial ones: count, mean and centred second moment, merged in a fixed order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Moments:
    """Count, mean and centred second moment (sum of outer products) of vectors, in float64: numpy arrays,
    or torch tensors while extraction accumulates them on its device (``to_host`` before writing)."""

    count: float
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> "Moments":
        return cls(0.0, np.zeros(dim), np.zeros((dim, dim)))

    def merge(self, other: "Moments") -> "Moments":
        """Chan et al.'s exact pairwise merge; folding in a fixed order gives bit-identical results."""
        n = self.count + other.count
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta[:, None] * delta[None, :] * (self.count * other.count / n)
        return Moments(n, mean, m2)

    def to_host(self) -> "Moments":
        """The same moments as numpy arrays (they may be accumulated as float64 tensors on a device)."""
        host = lambda a: a.cpu().numpy() if hasattr(a, "cpu") else np.asarray(a)  # noqa: E731
        return Moments(self.count, host(self.mean), host(self.m2))
