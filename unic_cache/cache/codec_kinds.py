"""The kinds of codec, one class each: the stored values (``f32``, ``f16``, ``bitround-B``, ``int8``, ``int8c``:
``StoredValues`` subclasses, registered in ``VALUE_KINDS``) and the transforms before them (``pool-F``, ``pca-K``).
Each owns its spec, bytes, fitted parameters, encode, decode and the decode steps a foreign reader follows, so a
new codec is one class here plus its tests. The module imports no torch: the encoders import it when stage 1
calls them on the device; decoders take numpy or torch arrays alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..errors import UserError


@dataclass(frozen=True)
class StoredValues:
    """One kind of stored values, the last part of a codec spec (``f16``, ``int8``, ...): its dtype, the per-vector
    arrays stored beside the values (float16), the parameters it fits on calibration vectors, how vectors become
    stored arrays (stage 1, torch tensors) and back (numpy or torch arrays alike), and the reader's decode steps.
    A kind is one subclass, registered in ``VALUE_KINDS`` by ``register``."""

    name: ClassVar[str]
    syntax: ClassVar[str]  # how the spec writes it, for errors
    dtype: ClassVar[str]
    parts: ClassVar[tuple[str, ...]] = ()

    @property
    def spec(self) -> str:
        return self.name

    @classmethod
    def from_spec(cls, text: str) -> "StoredValues | None":
        """This kind for spec part ``text``, None when ``text`` is another kind; a bad argument is a UserError."""
        return cls() if text == cls.name else None

    def bytes_per_vector(self, stored_dim: int) -> int:
        """Uncompressed bytes of one stored vector and its per-vector parts."""
        return stored_dim * np.dtype(self.dtype).itemsize + 2 * len(self.parts)

    def param_shapes(self, stored_dim: int) -> dict[str, tuple[int, ...]]:
        """The shapes of the parameters ``fit`` gives, for vectors ``stored_dim`` wide."""
        return {}

    def fit(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Parameters fitted on float64 calibration vectors (M, stored_dim)."""
        return {}

    def encode(self, y, params: dict) -> list:
        """The stored arrays (values, then the parts) of float32 torch vectors ``y``."""
        import torch

        return [y.to(getattr(torch, self.dtype))]

    def decode(self, values, parts: tuple, params: dict):
        """Vectors from stored values already cast to float32 (numpy or torch)."""
        return values

    def reader_steps(self, kind: str) -> list[str]:
        """The decode after ``v = float32(values)``, for a foreign reader."""
        return []


VALUE_KINDS: dict[str, type[StoredValues]] = {}


def register(kind: type[StoredValues]) -> type[StoredValues]:
    """Make a kind of stored values known to ``parse_codec`` (a new codec is one registered class)."""
    VALUE_KINDS[kind.name] = kind
    return kind


@register
@dataclass(frozen=True)
class Float32(StoredValues):
    name, syntax, dtype = "f32", "f32", "float32"


@register
@dataclass(frozen=True)
class Float16(StoredValues):
    name, syntax, dtype = "f16", "f16", "float16"


def bitround(x, keepbits: int):
    """float16 values with only ``keepbits`` of their 10 mantissa bits, rounded to nearest (ties to even),
    as numcodecs' BitRound does (torch)."""
    import torch

    drop = 10 - keepbits
    bits = x.half().view(torch.int16).to(torch.int32) & 0xFFFF
    half = (1 << (drop - 1)) - 1
    bits = (bits + half + ((bits >> drop) & 1)) & (0xFFFF & ~((1 << drop) - 1))
    return torch.where(bits >= 0x8000, bits - 0x10000, bits).to(torch.int16).view(torch.float16)


@register
@dataclass(frozen=True)
class BitRound(StoredValues):
    """float16 keeping ``keepbits`` of its 10 mantissa bits, so that zstd compresses it."""

    keepbits: int
    name, syntax, dtype = "bitround", "bitround-B", "float16"

    @property
    def spec(self) -> str:
        return f"bitround-{self.keepbits}"

    @classmethod
    def from_spec(cls, text: str) -> "BitRound | None":
        if not text.startswith("bitround-"):
            return None
        bits = text.partition("-")[2]
        if not bits.isdigit() or not 1 <= int(bits) <= 9:
            raise UserError(f"codec {text!r}: bitround-B keeps B of float16's 10 mantissa bits, 1 <= B <= 9")
        return cls(int(bits))

    def encode(self, y, params: dict) -> list:
        return [bitround(y, self.keepbits)]


@register
@dataclass(frozen=True)
class Int8(StoredValues):
    """int8 in [-127, 127] times a float16 scale per vector."""

    name, syntax, dtype, parts = "int8", "int8", "int8", ("scale",)

    def encode(self, y, params: dict) -> list:
        import torch

        scale = (y.abs().amax(-1) / 127).half()
        q = torch.round(y / scale.float().clamp_min(2.0 ** -24)[..., None]).clamp(-127, 127)
        return [q.to(torch.int8), scale]

    def decode(self, values, parts: tuple, params: dict):
        return values * parts[0][..., None]

    def reader_steps(self, kind: str) -> list[str]:
        return [f"v = v * float32({kind}_scale)[..., None]  (one scale per stored vector)"]


@register
@dataclass(frozen=True)
class Int8Centred(StoredValues):
    """int8 around a per-channel centre, times a per-channel scale fitted on calibration vectors: robust to the
    outlier channels of DINO-like features, which spoil a per-vector scale."""

    name, syntax, dtype = "int8c", "int8c", "int8"

    def param_shapes(self, stored_dim: int) -> dict[str, tuple[int, ...]]:
        return {"offset": (stored_dim,), "scale": (stored_dim,)}

    def fit(self, x: np.ndarray) -> dict[str, np.ndarray]:
        offset = x.mean(0)
        reach = np.abs(x - offset).max(0) * 1.1  # 10% headroom for values past the calibration range
        return {"offset": offset.astype(np.float32), "scale": (np.maximum(reach, 1e-12) / 127).astype(np.float32)}

    def encode(self, y, params: dict) -> list:
        import torch

        return [torch.round((y - params["offset"]) / params["scale"]).clamp(-127, 127).to(torch.int8)]

    def decode(self, values, parts: tuple, params: dict):
        return values * params["scale"] + params["offset"]

    def reader_steps(self, kind: str) -> list[str]:
        return [f"v = v * codec/{kind}/scale + codec/{kind}/offset  (per channel)"]


@dataclass(frozen=True)
class Pool:
    """``pool-F``: the patch grid averaged over F x F cells (the student then predicts the pooled grid; the summary
    has no grid and skips it). Pooling happens on the token grid (``models.codecs.on_stored_grid``), before the
    vectors reach the rest of the chain."""

    factor: int
    name: ClassVar[str] = "pool"

    @property
    def arg(self) -> int:
        return self.factor

    @classmethod
    def from_arg(cls, value: float, before: tuple) -> "Pool | None":
        return cls(int(value)) if value.is_integer() and value >= 2 and not before else None

    def planned_dim(self, dim: int) -> int:
        return dim


@dataclass(frozen=True)
class PCA:
    """``pca-K`` / ``pca-0.FF``: the first K principal components, or the fewest that keep that fraction of the
    variance (the basis fitted in float64 on calibration vectors before the first unit is written; the projection
    runs in float64, so what is stored does not depend on how many vectors a batch holds)."""

    keep: float
    name: ClassVar[str] = "pca"

    @property
    def arg(self) -> float:
        return self.keep

    @classmethod
    def from_arg(cls, value: float, before: tuple) -> "PCA | None":
        valid = (0 < value < 1 or (value.is_integer() and value >= 1)) and not any(isinstance(t, PCA) for t in before)
        return cls(value if value < 1 else int(value)) if valid else None

    def planned_dim(self, dim: int) -> int:
        """K, or ``dim`` (an upper bound) for a fraction of the variance."""
        return dim if self.keep < 1 else min(dim, int(self.keep))

    def fit(self, x: np.ndarray, spec: str) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
        """(center and basis, the projected vectors, the kept variance) of float64 vectors ``x`` (M, D): components
        sorted by variance, sign fixed so that each has a positive largest entry."""
        dim = x.shape[1]
        center = x.mean(0)
        xc = x - center
        eigval, eigvec = np.linalg.eigh(xc.T @ xc / max(len(x) - 1, 1))
        eigval, eigvec = eigval[::-1].clip(min=0), eigvec[:, ::-1]
        eigvec *= np.sign(eigvec[np.abs(eigvec).argmax(0), np.arange(dim)])
        total = max(eigval.sum(), 1e-300)
        if self.keep < 1:
            stored = int(min(dim, np.searchsorted(np.cumsum(eigval) / total, self.keep) + 1))
        elif self.keep > dim:
            raise UserError(f"{spec} keeps {self.keep} components, but these features are {dim} wide; use "
                            f"pca-K with K <= {dim}, or pca-0.FF to keep a fraction of the variance")
        else:
            stored = int(self.keep)
        params = {"center": center.astype(np.float32), "basis": np.ascontiguousarray(eigvec[:, :stored]).astype(np.float32)}
        return params, xc @ eigvec[:, :stored], float(eigval[:stored].sum() / total)

    def param_shapes(self, dim: int, stored_dim: int) -> dict[str, tuple[int, ...]]:
        return {"center": (dim,), "basis": (dim, stored_dim)}

    def encode(self, y, params64: dict):
        return ((y.double() - params64["center"]) @ params64["basis"]).float()

    def decode(self, values, params: dict):
        return values @ params["basis"].T + params["center"]

    def reader_step(self, kind: str, dim: int) -> str:
        return f"v = v @ codec/{kind}/basis.T + codec/{kind}/center  (PCA coefficients -> {dim} dims)"


TRANSFORMS = {"pool": Pool, "pca": PCA}
