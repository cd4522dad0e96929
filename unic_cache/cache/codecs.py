"""How teacher features are stored: element type + compressor (the format; no torch here: the
extraction runner casts tensors to ``dtype`` and measures the fidelity each codec keeps).

Every codec here is made of standard zarr v3 codecs, so any zarr reader decodes the cache; every
array's chain ends in crc32c (``checked``), so a damaged chunk fails on read instead of decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError


def checked(*compressors) -> tuple:
    """A compressor chain with a crc32c checksum last."""
    import zarr  # here: the option checks read CODECS without loading zarr

    return (*compressors, zarr.codecs.Crc32cCodec())


@dataclass(frozen=True)
class FeatureCodec:
    """A storage format for features: numpy dtype and zstd level."""

    name: str
    dtype: str
    zstd_level: int

    def compressors(self) -> tuple:
        import zarr

        return (zarr.codecs.ZstdCodec(level=self.zstd_level),)

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize


CODECS = {c.name: c for c in (FeatureCodec("f16-zstd", "float16", 3), FeatureCodec("f32-zstd", "float32", 3))}


def get_codec(name: str) -> FeatureCodec:
    if name not in CODECS:
        raise UserError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}")
    return CODECS[name]
