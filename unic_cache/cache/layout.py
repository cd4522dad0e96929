"""What a teacher is recorded as (``TeacherInfo``, its codecs' record) and the arrays a new teacher, or a view block
of one, is created with: shapes, chunks, shards and units fixed once, so that every rank computes the same layout
(docs/cache-format.md, ``teachers/<name>/``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import zarr

from . import seal
from .codecs import ZSTD_LEVEL, Codec, FittedCodec
from .format import create_checked
from .sizing import PARTIALS, UnitLayout, kind_width, partial_stats_bytes

VIEW_BLOCK = "views-"  # a view block's group: teachers/<name>/views-<its first view>


@dataclass(frozen=True)
class TeacherInfo:
    """What a cache records about a teacher (its attrs) and what stage 2 needs to use its features."""

    model_id: str
    weights: str  # "hub" (the model's own: the hub, its local cache, a local-dir folder), "random[:SEED]", or a file
    weights_sha256: str
    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    grid: tuple[int, int]
    prefix_tokens: int
    dim: int
    summary_kind: str  # "cls" or "pooled" (models.registry.summary_kind)
    model_args: dict = field(default_factory=dict)  # extra timm.create_model arguments (depth=2, ...)
    summary_tokens: int = 1  # "cls": the first N tokens concatenated (C-RADIO: one per teacher; registry.SUMMARY_TOKENS)

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def width(self, kind: str) -> int:
        """The width of a ``kind`` vector: a patch token's, or the summary's (``summary_tokens`` of them)."""
        return kind_width(kind, self.dim, self.summary_tokens)

    def to_dict(self) -> dict:
        return asdict(self)


def codec_record(codecs: dict[str, Codec]) -> dict:
    """What identifies a teacher's storage: the codec spec per kind (None: patch tokens not stored)."""
    patch = codecs.get("patch")
    return {"codec": codecs["summary"].spec, "patch_codec": patch.spec if patch else None, "has_patch": patch is not None}


def create_teacher(teachers: zarr.Group, name: str, n: int, k: int, version: int, info: TeacherInfo,
               fitted: dict[str, FittedCodec], shard_mb: float, unit_rows: int | None, code_version: str) -> zarr.Group:
    """Create the arrays of a new teacher in ``teachers`` (replacing our own unfinished ones) for ``n`` rows of ``k``
    views in a cache of format ``version``; sizes are fixed here, so every rank computes the same layout."""
    shapes = {"summary": (), "patch": ()}
    if "patch" in fitted:
        grid = fitted["patch"].codec.stored_grid(info.grid)
        shapes["patch"] = (grid[0] * grid[1],)
    vector = {kind: f.codec.bytes_per_vector(f.stored_dim) for kind, f in fitted.items()}
    row_bytes = k * sum(vector[kind] * int(np.prod(shapes[kind])) for kind in fitted)
    patch_row = shapes["patch"][0] * vector["patch"] if "patch" in fitted else None
    stats_bytes = partial_stats_bytes([info.width(kind) for kind in fitted]) if version >= 5 else 0  # format 4: one shard per unit
    layout = UnitLayout.of(n, row_bytes, patch_row, shard_mb, unit_rows, stats_bytes)
    unit_rows, units, chunk_rows, summary_rows = layout.unit_rows, layout.units, layout.chunk_rows, layout.summary_rows
    group = teachers.create_group(name, overwrite=True)
    zstd = (zarr.codecs.ZstdCodec(level=ZSTD_LEVEL),)
    digested = []  # what each unit's digest covers: its feature arrays, then its partial statistics
    for kind, f in fitted.items():
        rows = summary_rows if kind == "summary" else chunk_rows
        vectors = (n, k, *shapes[kind])
        digested += [kind, *(f"{kind}_{part}" for part in f.parts)]
        create_checked(group, kind, (*vectors, f.stored_dim), f.codec.dtype, chunks=(rows, 1, *shapes[kind], f.stored_dim),
                       shards=(layout.shard_rows, k, *shapes[kind], f.stored_dim), compressors=zstd)
        for part in f.parts:  # per-vector int8 scales, chunked and sharded as the values
            create_checked(group, f"{kind}_{part}", vectors, "float16", chunks=(rows, 1, *shapes[kind]),
                           shards=(layout.shard_rows, k, *shapes[kind]), compressors=zstd)
        for param, value in f.params.items():
            create_checked(group.require_group(f"codec/{kind}"), param, value.shape, "float32")[...] = value
    stats = group.create_group("stats/partial")
    digested += [f"stats/partial/{kind}_{n}" for kind in fitted for n in PARTIALS]
    for kind in fitted:
        d = info.width(kind)
        create_checked(stats, f"{kind}_count", (units,), "float64", chunks=(1,))
        create_checked(stats, f"{kind}_cos", (units,), "float64", chunks=(1,))
        create_checked(stats, f"{kind}_mean", (units, d), "float64", chunks=(1, d), compressors=zstd)
        create_checked(stats, f"{kind}_m2", (units, d, d), "float64", chunks=(1, d, d), compressors=zstd)
    specs = {kind: f.codec for kind, f in fitted.items()}
    group.attrs.update({**info.to_dict(), **codec_record(specs), "codecs": {kind: f.describe(kind) for kind, f in fitted.items()},
                        "unit_rows": unit_rows, "units": units, "shard_rows": layout.shard_rows,
                        "code_version": code_version, "complete": False,
                        "digest_arrays": digested})
    create_checked(group, "digest", (units, len(digested)), "uint32", chunks=(1, len(digested)))
    # one-byte chunks make each unit's flag atomic; then the seal, written last: other processes wait for it
    create_checked(group, "progress", (units,), "uint8", chunks=(1,))
    return group


def seal_teacher(root: zarr.Group, name: str) -> None:
    """Seal the metadata of teacher ``name`` (or a view block, ``<teacher>/views-<K1>``) of the cache ``root`` as it
    is now (at creation, and again with its merged statistics); a teacher's seal leaves out its view blocks, which
    have their own."""
    at = f"teachers/{name}"
    paths = [p for p in seal.member_paths(root[at], at) if not p.startswith(f"{at}/{VIEW_BLOCK}")]
    seal.write_seal(root.store_path, at, paths)
