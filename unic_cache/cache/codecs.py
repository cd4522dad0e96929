"""How teacher features are stored, and rebuilt: one class per kind of codec, behind one interface.

A codec is a spec ``[TRANSFORM+...]VALUES`` (``f16``, ``int8``, ``pca-32+int8``, ``pool-2+int8``, ...):

- transforms, applied in order: ``pool-F`` averages the patch grid over F x F cells (the student then
  predicts the pooled grid; the summary has no grid and skips it); ``pca-K`` / ``pca-0.FF`` keeps the
  first K principal components, or the fewest that keep that fraction of the variance (the basis is
  fitted in float64 on calibration vectors before the first unit is written);
- values: ``f32``, ``f16``, ``bitround-B`` (float16 keeping B of its 10 mantissa bits, so that zstd
  compresses it), ``int8`` (int8 in [-127, 127] times a float16 scale per vector) or ``int8c`` (int8
  around a per-channel centre, times a per-channel scale fitted on calibration vectors: robust to the
  outlier channels of DINO-like features, which spoil a per-vector scale).

Each kind is one class (``cache.codec_kinds``: the values' ``StoredValues`` subclasses registered in
``VALUE_KINDS``, the transforms ``Pool`` and ``PCA``); ``Codec`` is a parsed chain of them, ``FittedCodec`` one
fitted to a teacher's kind.

Stored arrays stay plain zarr (integers, coefficients, scales; every chain ends in crc32c, ``checked``);
a fitted codec (``FittedCodec``: spec, parameters such as the PCA basis, fidelity) is described
completely in the teacher's attrs and ``codec/<kind>/*`` arrays, and ``decode`` rebuilds vectors from
the stored values with numpy or torch arrays alike (on the GPU in stage 2). The names of format-1
caches (``f16-zstd``, ``f32-zstd``) still read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import UserError
from .codec_kinds import PCA, TRANSFORMS, VALUE_KINDS, Float16, Pool, StoredValues

LEGACY = {"f16-zstd": "f16", "f32-zstd": "f32"}
INT8_MISSING = -128  # the fill value of int8 arrays: never written (values are clipped to +-127), so it marks a missing chunk
ZSTD_LEVEL = 3
EXAMPLES = "f16, f32, bitround-7, int8, int8c, pca-32, pca-0.95+int8, pool-2+int8"


def checked(*compressors) -> tuple:
    """A compressor chain with a crc32c checksum last."""
    import zarr  # here: the option checks read this module without loading zarr

    return (*compressors, zarr.codecs.Crc32cCodec())


@dataclass(frozen=True)
class Codec:
    """A parsed codec spec: ``transforms`` (``Pool`` / ``PCA``, in order) then ``values``."""

    values: StoredValues
    transforms: tuple[Pool | PCA, ...] = ()

    @property
    def spec(self) -> str:
        return "+".join([*(f"{t.name}-{t.arg}" for t in self.transforms), self.values.spec])

    @property
    def dtype(self) -> str:
        return self.values.dtype

    @property
    def parts(self) -> tuple[str, ...]:
        """Stored arrays besides the values: "scale" for per-vector int8."""
        return self.values.parts

    @property
    def pool(self) -> int:
        return next((t.factor for t in self.transforms if isinstance(t, Pool)), 1)

    @property
    def pca(self) -> PCA | None:
        return next((t for t in self.transforms if isinstance(t, PCA)), None)

    def for_kind(self, kind: str) -> "Codec":
        """This codec as applied to ``kind``: the summary has no grid to pool."""
        return self if kind == "patch" else replace(self, transforms=tuple(t for t in self.transforms if not isinstance(t, Pool)))

    def stored_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The token grid stored for a teacher grid (pooled cells cover a partial edge too)."""
        return (-(-grid[0] // self.pool), -(-grid[1] // self.pool))

    def bytes_per_vector(self, stored_dim: int) -> int:
        """Uncompressed bytes of one stored vector (values, and a per-vector scale for int8)."""
        return self.values.bytes_per_vector(stored_dim)

    def planned_dim(self, dim: int) -> int:
        """Stored width before fitting: K for pca-K, else ``dim`` (an upper bound for pca-FRACTION)."""
        for t in self.transforms:
            dim = t.planned_dim(dim)
        return dim

    def param_shapes(self, dim: int, stored_dim: int) -> dict[str, tuple[int, ...]]:
        """The shapes of the fitted parameters of vectors ``dim`` wide stored ``stored_dim`` wide."""
        pca = self.pca
        return {**(pca.param_shapes(dim, stored_dim) if pca else {}), **self.values.param_shapes(stored_dim)}


def value_kinds() -> str:
    """The registered kinds of values as a spec writes them: ``f32, f16, bitround-B, int8, int8c``."""
    return ", ".join(kind.syntax for kind in VALUE_KINDS.values())


def parse_codec(spec: str) -> Codec:
    """A codec spec as a ``Codec``; a bad one is a one-line error listing examples."""
    spec = LEGACY.get(spec, spec)
    parts = spec.split("+") if spec else [""]
    values = next((v for kind in VALUE_KINDS.values() if (v := kind.from_spec(parts[-1])) is not None), None)
    if values is None:
        parts, values = [*parts, "f16"], Float16()  # "pca-32" alone stores float16 coefficients
    transforms: list[Pool | PCA] = []
    for part in parts[:-1]:
        name, _, arg = part.partition("-")
        try:
            value = float(arg)
        except ValueError:
            value = float("nan")
        transform = TRANSFORMS[name].from_arg(value, tuple(transforms)) if name in TRANSFORMS else None
        if transform is None:
            raise UserError(f"unknown codec {spec!r}: write [pool-F+][pca-K|pca-0.FF+]VALUES with VALUES one of "
                            f"{value_kinds()} (pool first, at most one pca); e.g. {EXAMPLES}")
        transforms.append(transform)
    return Codec(values, tuple(transforms))


def kind_codecs(codec: str, patch_codec: str | None, patch: bool) -> dict[str, Codec]:
    """The codec of each stored kind: ``codec`` for the summary (without pooling: it has no grid), and
    ``patch_codec`` (default ``codec``) for the patch tokens when they are stored."""
    out = {"summary": parse_codec(codec).for_kind("summary")}
    if patch:
        out["patch"] = parse_codec(patch_codec or codec).for_kind("patch")
    return out


def codec_problem(spec: str) -> str | None:
    """None for a valid spec, else the reason (for option checks)."""
    try:
        parse_codec(spec)
    except UserError as exc:
        return f"{{flag}}: {exc}"
    return None


@dataclass
class FittedCodec:
    """A codec as applied to one kind of one teacher: its spec, the stored width and grid, its fitted
    parameters (numpy: ``center``/``basis`` of the PCA, ``offset``/``scale`` per channel for int8c) and
    the fidelity measured on the calibration vectors."""

    codec: Codec
    dim: int  # the teacher's width: what decode gives back
    stored_dim: int
    params: dict[str, np.ndarray] = field(default_factory=dict)
    fidelity: dict[str, float] = field(default_factory=dict)
    kept_variance: float | None = None

    @property
    def parts(self) -> tuple[str, ...]:
        """Stored arrays besides the values: "scale" for per-vector int8."""
        return self.codec.parts

    def describe(self, kind: str = "summary") -> dict:
        """Everything that defines the stored values of ``kind``, for the teacher's attrs (parameters live in
        arrays), with how a foreign reader rebuilds the vectors: the arrays used, the decode formula, the
        pooled grid's token order and the values that mean "missing"."""
        values = self.codec.values
        return {"spec": self.codec.spec, "values": values.name, "dtype": self.codec.dtype,
                "keepbits": getattr(values, "keepbits", None), "transforms": [[t.name, t.arg] for t in self.codec.transforms],
                "dim": self.dim, "stored_dim": self.stored_dim, "params": sorted(self.params),
                "kept_variance": self.kept_variance, "fidelity": self.fidelity, "zstd_level": ZSTD_LEVEL,
                "scale_dtype": "float16" if self.parts else None, "int8_range": [-127, 127] if self.codec.dtype == "int8" else None,
                **self.reader_notes(kind)}

    def reader_notes(self, kind: str) -> dict:
        """The arrays, the decode formula, the token order and the missing-value marks of ``kind``."""
        arrays = {"values": kind, **{part: f"{kind}_{part}" for part in self.parts},
                  **{name: f"codec/{kind}/{name}" for name in sorted(self.params)}}
        pca = self.codec.pca
        steps = [f"v = float32({kind})", *self.codec.values.reader_steps(kind), *([pca.reader_step(kind, self.dim)] if pca else [])]
        pool = self.codec.pool
        return {"arrays": arrays, "decode": "; ".join(steps),
                "tokens": "one vector per sample-view" if kind == "summary" else
                ("the teacher's patch tokens in row-major order of its grid (registers and CLS removed)" if pool == 1 else
                 f"the mean of each {pool}x{pool} cell of the teacher's grid (edge cells: of the tokens they cover), "
                 "in row-major order of the pooled grid (ceil(H/F) x ceil(W/F))"),
                "missing": (f"{INT8_MISSING} in {kind} (never written: values are clipped to +-127)"
                            if self.codec.dtype == "int8" else f"NaN in {kind}") + " marks a value never written"}

    @classmethod
    def from_attrs(cls, attrs: dict | str, dim: int, params: dict[str, np.ndarray], teacher: str) -> "FittedCodec":
        """From a teacher's attrs: a ``describe()`` dict, or a format-1 codec name (no parameters)."""
        if isinstance(attrs, str):
            if attrs not in LEGACY:
                raise UserError(f"teacher {teacher} uses codec {attrs!r}, which this version of unic-cache does not know; "
                                "upgrade unic-cache to read it")
            return cls(parse_codec(attrs), dim, dim)
        try:
            codec = parse_codec(attrs["spec"])
        except UserError:
            codec = None
        if codec is None or codec.values.name != attrs.get("values") or sorted(params) != sorted(attrs.get("params", [])):
            raise UserError(f"teacher {teacher} uses codec {attrs.get('spec')!r}, which this version of unic-cache does not "
                            "know; upgrade unic-cache to read it")
        return cls(codec, int(attrs["dim"]), int(attrs["stored_dim"]), params, attrs.get("fidelity", {}),
                   attrs.get("kept_variance"))

    def encode(self, y, params: dict, params64: dict) -> list:
        """The stored arrays of float32 torch vectors ``y`` already on the stored grid (``params``: this codec's on
        the vectors' device, ``params64`` the same in float64)."""
        pca = self.codec.pca
        return self.codec.values.encode(pca.encode(y, params64) if pca else y, params)

    def decode(self, values, *parts, params: dict | None = None):
        """Vectors (..., dim) from stored values (..., stored_dim) and their parts already cast to float32, as numpy
        or torch arrays alike; ``params`` (default: this codec's numpy ones) must be of the same kind and device."""
        p = self.params if params is None else params
        values = self.codec.values.decode(values, parts, p)
        pca = self.codec.pca
        return pca.decode(values, p) if pca else values


def fit_codec(codec: Codec, x: np.ndarray) -> FittedCodec:
    """Fit ``codec`` on calibration vectors ``x`` (M, D), after any pooling: the PCA basis in float64, then the
    values' parameters (int8c's channel ranges) on the projected vectors."""
    x = np.asarray(x, np.float64)
    dim, params, kept = x.shape[1], {}, None
    if codec.pca is not None:
        params, x, kept = codec.pca.fit(x, codec.spec)
    params.update(codec.values.fit(x))
    return FittedCodec(codec, dim, x.shape[1], params, kept_variance=kept)


def fidelity(original: np.ndarray, decoded: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, float]:
    """How well ``decoded`` (M, D) keeps ``original``: mean and 1st-percentile cosine, and the mean relative
    error after the per-dimension standardisation (``mean``, ``std``) that the distillation loss sees, over the
    vectors that differ from the mean (NaN when none does: features that do not vary have no relative error)."""
    a, b = np.asarray(original, np.float64), np.asarray(decoded, np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
    za, zb = (a - mean) / std, (b - mean) / std
    size = np.linalg.norm(za, axis=1)
    varied = size > 0
    rel = np.linalg.norm(zb - za, axis=1)[varied] / size[varied]
    return {"cos_mean": float(cos.mean()), "cos_p1": float(np.percentile(cos, 1)),
            "std_rel_err": float(rel.mean()) if varied.any() else float("nan")}


def f32_bytes(dim: int, tokens: int, summary_tokens: int = 1) -> int:
    """Bytes of one sample-view (a summary ``summary_tokens`` wide + tokens) in float32: the reference of every size
    ratio."""
    return 4 * dim * (summary_tokens + tokens)
