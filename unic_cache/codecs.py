"""How teacher features are stored: element type + compressor, and the fidelity each one keeps.

Every codec here is made of standard zarr v3 codecs, so any zarr reader decodes the cache; every
array's chain ends in crc32c (``checked``), so a damaged chunk fails on read instead of decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import zarr


def checked(*compressors) -> tuple:
    """A compressor chain with a crc32c checksum last."""
    return (*compressors, zarr.codecs.Crc32cCodec())


@dataclass(frozen=True)
class FeatureCodec:
    """A storage format for features: numpy dtype and zstd level."""

    name: str
    dtype: str
    zstd_level: int

    def compressors(self) -> tuple:
        return (zarr.codecs.ZstdCodec(level=self.zstd_level),)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The values as stored (on the same device)."""
        return x.to(getattr(torch, self.dtype))

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=getattr(torch, self.dtype)).element_size()


CODECS = {c.name: c for c in (FeatureCodec("f16-zstd", "float16", 3), FeatureCodec("f32-zstd", "float32", 3))}


def get_codec(name: str) -> FeatureCodec:
    from .errors import UserError

    if name not in CODECS:
        raise UserError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}")
    return CODECS[name]


def cosine_sum(original: torch.Tensor, stored: torch.Tensor) -> float:
    """Sum over vectors (last dim) of cos(original, stored): the codec's fidelity, before averaging."""
    return float(torch.nn.functional.cosine_similarity(original.double(), stored.double(), dim=-1, eps=1e-12).sum())
