"""How big a cache gets, before anything is extracted: the arithmetic of ``unic-cache plan`` and the
free-space check of ``extract``. Figures are the encoded bytes before zstd (zstd saves a few percent
on float16 and int8 values, more on bit-rounded ones), so they bound what lands on disk."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
import numpy as np

from .codecs import Codec, f32_bytes


def human(nbytes: float) -> str:
    """Bytes in binary units: 1.2 KiB, 3.4 TiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


SUMMARY_CHUNK_ROWS = 64  # rows per summary chunk: one loader block (DistillStream's block_rows)
PARTIALS = ("count", "cos", "mean", "m2")  # a unit's partial statistics of a kind: stats/partial/<kind>_<name>
KEY_BYTES = 24  # a sample key's UTF-8 bytes when the dataset is not read ("n01440764/n01440764_10026")


STATS_SHARE = 200  # a unit's features take at least this many times the bytes of its partial statistics (format 5)


def kind_width(kind: str, dim: int, summary_tokens: int = 1) -> int:
    """The width of a ``kind`` vector of a teacher ``dim`` wide: a patch token's, or its summary's (``summary_tokens``
    tokens concatenated, C-RADIO's)."""
    return dim * summary_tokens if kind == "summary" else dim


def partial_stats_bytes(widths: list[int]) -> int:
    """Bytes of one unit's partial statistics: per kind (of width D) a count, a codec cosine, a mean and a D x D
    float64 m2."""
    return sum((2 + d + d * d) * 8 for d in widths)


@dataclass(frozen=True)
class UnitLayout:
    """How a teacher's rows are cut: units of work (claimed, flagged done, digested and given partial statistics
    as a whole), each of one or more shards (one file per feature array each), and the rows of a patch chunk and
    of a summary chunk inside a shard. Fixed when the teacher is added, so every rank agrees."""

    unit_rows: int
    units: int
    chunk_rows: int
    summary_rows: int
    shard_rows: int

    @classmethod
    def of(cls, n: int, row_bytes: int, patch_row_bytes: int | None, shard_mb: float, unit_rows: int | None,
           stats_bytes: int = 0) -> "UnitLayout":
        """``row_bytes``: a row's encoded bytes over every view and kind; ``patch_row_bytes``: one view's patch tokens
        (None: no patch). Shards of about ``shard_mb`` MiB (at most ``unit_rows`` rows); units of ``unit_rows``
        rows (whole shards), else of as many shards as keep ``stats_bytes`` (a unit's partial statistics) under
        1/STATS_SHARE of the unit's features, so that the statistics do not grow with the unit count. With
        ``stats_bytes`` 0 (a format-4 cache) a unit is one shard, as that format has it."""
        chunk_rows = SUMMARY_CHUNK_ROWS
        if patch_row_bytes:  # about 2 MB per patch chunk, a power of two so that it divides a summary chunk
            chunk_rows = 1 << int(np.log2(max(1, min(SUMMARY_CHUNK_ROWS, (2 << 20) // patch_row_bytes))))
        shard_rows = max(1, int(shard_mb * (1 << 20)) // row_bytes)
        if unit_rows is not None:
            shard_rows = min(shard_rows, unit_rows) if stats_bytes else unit_rows
        chunk_rows = min(chunk_rows, shard_rows)
        summary_rows = min(SUMMARY_CHUNK_ROWS, max(chunk_rows, shard_rows // chunk_rows * chunk_rows))
        shard_rows = max(summary_rows, shard_rows // summary_rows * summary_rows)
        if unit_rows is None:
            shards = -(-STATS_SHARE * stats_bytes // (shard_rows * row_bytes)) if stats_bytes else 1
            unit_rows = shard_rows * max(1, min(shards, -(-n // shard_rows)))
        unit_rows = max(shard_rows, unit_rows // shard_rows * shard_rows)
        return cls(unit_rows, -(-n // unit_rows), chunk_rows, summary_rows, shard_rows)


@dataclass(frozen=True)
class ArrayPlan:
    """One array a cache will hold: its path, shape, bytes per element and the files (objects) its data takes."""

    path: str
    shape: tuple[int, ...]
    itemsize: int
    files: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.itemsize


def _chunked(path: str, shape: tuple[int, ...], itemsize: int, rows_per_file: int | None = None) -> ArrayPlan:
    """An array whose files each hold ``rows_per_file`` rows (None: one file)."""
    files = 1 if rows_per_file is None else -(-shape[0] // max(1, rows_per_file)) if shape[0] else 0
    return ArrayPlan(path, shape, itemsize, files)


def cache_arrays(n: int, views: int, key_bytes: int) -> list[ArrayPlan]:
    """The index and the view plan (format 4), for ``n`` samples whose keys take ``key_bytes`` in all."""
    return [_chunked("index/keys_utf8", (key_bytes,), 1, 1 << 20), _chunked("index/keys_offsets", (n + 1,), 8, 1 << 16),
            _chunked("index/location", (n, 4), 8, 1 << 16), _chunked("index/image_size", (n, 2), 4, 1 << 16),
            _chunked("index/bad", (n,), 1, 1 << 16), _chunked("index/digest", (n,), 4, 1 << 16),
            _chunked("views/params", (n, views, 16), 4, 4096)]


def teacher_arrays(name: str, n: int, views: int, widths: dict[str, int], kinds: dict[str, tuple[Codec, int, int, dict]],
                   layout: UnitLayout) -> list[ArrayPlan]:
    """Every array of a teacher: ``kinds`` maps summary/patch to (codec, stored width, stored tokens per vector
    (1 for the summary), codec parameter shapes), ``widths`` to their vectors' width."""
    at, out, digested = f"teachers/{name}/", [], 0
    for kind, (codec, stored, tokens, params) in kinds.items():
        dim = widths[kind]
        vectors = (n, views, *((tokens,) if kind == "patch" else ()))
        out.append(_chunked(at + kind, (*vectors, stored), np.dtype(codec.dtype).itemsize, layout.shard_rows))
        parts = codec.parts
        out += [_chunked(f"{at}{kind}_{part}", vectors, 2, layout.shard_rows) for part in parts]
        out += [_chunked(f"{at}codec/{kind}/{param}", shape, 4) for param, shape in sorted(params.items())]
        partial = {"count": (), "cos": (), "mean": (dim,), "m2": (dim, dim)}
        out += [_chunked(f"{at}stats/partial/{kind}_{stat}", (layout.units, *partial[stat]), 8, 1) for stat in PARTIALS]
        out += [_chunked(f"{at}stats/{kind}/{stat}", shape, 8) for stat, shape in
                (("count", (1,)), ("mean", (dim,)), ("var", (dim,)), ("cov", (dim, dim)))]
        digested += 1 + len(parts) + len(PARTIALS)
    return out + [_chunked(at + "digest", (layout.units, digested), 4, 1), _chunked(at + "progress", (layout.units,), 1, 1)]


def metadata_files(arrays: list[ArrayPlan]) -> int:
    """The metadata objects beside the arrays' data: a ``zarr.json`` per array and per group (the root's too), and
    the seals (``index/seal.json``, one per teacher)."""
    groups = {"/".join(a.path.split("/")[:i]) for a in arrays for i in range(1, a.path.count("/") + 1)}
    seals = 1 + len({a.path.split("/")[1] for a in arrays if a.path.startswith("teachers/")})
    return len(arrays) + len(groups) + 1 + seals


@dataclass(frozen=True)
class TeacherSize:
    """One teacher's share of a cache: bytes of one sample-view, and of the whole dataset."""

    name: str
    dim: int
    grid: tuple[int, int]
    codec: Codec
    patch_codec: Codec | None  # None: summary only
    samples: int
    views: int
    shard_mb: float = 256.0  # extract's shards and units of work, as its --shard-mb and --unit-rows
    unit_rows: int | None = None
    summary_tokens: int = 1  # the summary is this many tokens wide (C-RADIO's)

    def width(self, kind: str) -> int:
        """The width of a ``kind`` vector before its codec."""
        return kind_width(kind, self.dim, self.summary_tokens)

    def kinds(self) -> dict[str, tuple[Codec, int, int, dict]]:
        """summary/patch -> (codec, planned stored width, stored tokens per vector, codec parameter shapes)."""
        out = {}
        for kind, codec in (("summary", self.codec), ("patch", self.patch_codec)):
            if codec is not None:
                stored = codec.planned_dim(self.width(kind))
                params = codec.param_shapes(self.width(kind), stored)
                tokens = self.stored_grid[0] * self.stored_grid[1] if kind == "patch" else 1
                out[kind] = (codec, stored, tokens, params)
        return out

    @property
    def layout(self) -> UnitLayout:
        """The units extract will cut this teacher into."""
        kinds = self.kinds()
        patch = kinds["patch"][2] * kinds["patch"][0].bytes_per_vector(kinds["patch"][1]) if "patch" in kinds else None
        stats = partial_stats_bytes([self.width(kind) for kind in kinds])  # a new cache: format 5's units
        return UnitLayout.of(self.samples, self.per_sample_view * self.views, patch, self.shard_mb, self.unit_rows, stats)

    def arrays(self) -> list[ArrayPlan]:
        """Every array extract will write for this teacher (features, codec parameters, statistics, digest, progress)."""
        return teacher_arrays(self.name, self.samples, self.views, {k: self.width(k) for k in ("summary", "patch")},
                              self.kinds(), self.layout)

    @property
    def stored_grid(self) -> tuple[int, int]:
        return self.patch_codec.stored_grid(self.grid) if self.patch_codec else (0, 0)

    @property
    def per_sample_view(self) -> int:
        """Encoded bytes of one sample-view: the summary and the (possibly pooled) patch tokens."""
        summary = self.codec.bytes_per_vector(self.codec.planned_dim(self.width("summary")))
        if self.patch_codec is None:
            return summary
        tokens = self.stored_grid[0] * self.stored_grid[1]
        return summary + tokens * self.patch_codec.bytes_per_vector(self.patch_codec.planned_dim(self.dim))

    @property
    def total(self) -> int:
        return self.per_sample_view * self.samples * self.views

    @property
    def vs_float32(self) -> float:
        return self.per_sample_view / f32_bytes(self.dim, self.grid[0] * self.grid[1] if self.patch_codec else 0,
                                                self.summary_tokens)

    @property
    def upper_bound(self) -> bool:
        """True when a PCA keeps a variance fraction: its width is only known after calibration."""
        return any(c is not None and c.pca is not None and c.pca.keep < 1 for c in (self.codec, self.patch_codec))


def array_kind(path: str) -> str:
    """What an array is, for the planner's breakdown: features, statistics, codec, digest and progress, index, views."""
    parts = path.split("/")
    if parts[0] != "teachers":
        return parts[0]
    return {"stats": "statistics", "codec": "codec", "digest": "digest and progress",
            "progress": "digest and progress"}.get(parts[2], "features")


def plan_figures(sizes: list[TeacherSize], cache: list[ArrayPlan], throughput: float) -> dict:
    """The planner's figures as numbers: bytes (before compression) per teacher and array kind, the cache's own
    arrays, totals, files (objects on S3) and what stage 2 reads per epoch at ``throughput`` samples/s."""
    teachers, arrays = {}, list(cache)
    for t in sizes:
        kinds: dict[str, int] = {}
        for a in t.arrays():
            kinds[array_kind(a.path)] = kinds.get(array_kind(a.path), 0) + a.nbytes
            arrays.append(a)
        layout = t.layout
        teachers[t.name] = {"per_sample_view": t.per_sample_view, "bytes": kinds, "total": sum(kinds.values()),
                            "units": layout.units, "unit_rows": layout.unit_rows, "shard_rows": layout.shard_rows,
                            "upper_bound": t.upper_bound}
    own = {}
    for a in cache:
        own[array_kind(a.path)] = own.get(array_kind(a.path), 0) + a.nbytes
    per_sample = sum(t.per_sample_view for t in sizes)
    samples = sizes[0].samples
    return {"samples": samples, "views": sizes[0].views, "teachers": teachers, "cache": own,
            "total_bytes": sum(a.nbytes for a in arrays),
            "files": sum(a.files for a in arrays) + metadata_files(arrays),
            "stage2": {"bytes_per_sample": per_sample, "throughput": throughput,
                       "bytes_per_s": per_sample * throughput, "bytes_per_epoch": per_sample * samples,
                       "seconds_per_epoch": samples / throughput}}


def plan_lines(sizes: list[TeacherSize], cache: list[ArrayPlan], throughput: float) -> list[str]:
    """The planner's table: bytes per teacher (features, and the statistics, codec parameters, digest and progress
    beside them), the cache's index and view plan, the total and its files, and the read bandwidth of stage 2 at
    ``throughput`` student samples per second (each sample reads one view of every teacher)."""
    figures = plan_figures(sizes, cache, throughput)
    w = max(7, *(len(t.name) for t in sizes))
    lines = [f"{'teacher':<{w}} {'dim':>5} {'grid':>7} {'codec (summary / patch)':<34} {'per view':>10} {'vs f32':>7} "
             f"{'features':>11} {'statistics':>11} {'other':>10}"]
    for t in sizes:
        grid = f"{t.stored_grid[0]}x{t.stored_grid[1]}" if t.patch_codec else "-"
        codecs = f"{t.codec.spec} / {t.patch_codec.spec if t.patch_codec else 'no patch'}"
        mark = " *" if t.upper_bound else ""
        b = figures["teachers"][t.name]["bytes"]
        other = b.get("codec", 0) + b.get("digest and progress", 0)
        lines.append(f"{t.name:<{w}} {t.dim:>5} {grid:>7} {codecs:<34} {human(t.per_sample_view):>10} {t.vs_float32:>7.3f} "
                     f"{human(b['features']):>11} {human(b['statistics']):>11} {human(other):>10}{mark}")
    own = figures["cache"]
    lines.append(f"index {human(own.get('index', 0))}, view plan {human(own.get('views', 0))}")
    lines.append(f"total: {human(figures['total_bytes'])} in {figures['files']:,} files for {figures['samples']:,} samples x "
                 f"{figures['views']} views (before zstd)")
    s2 = figures["stage2"]
    lines.append(f"stage 2 reads {human(s2['bytes_per_sample'])} per sample: {human(s2['bytes_per_s'])}/s at {throughput:g} "
                 f"samples/s, {human(s2['bytes_per_epoch'])} per epoch ({s2['seconds_per_epoch'] / 60:.1f} min)")
    if any(t.upper_bound for t in sizes):
        lines.append("* pca-FRACTION: planned at the full width (an upper bound); its width is fitted at extract time")
    return lines


def _local_folder(url: str) -> Path | None:
    """The nearest existing folder of a local cache path (None for object stores)."""
    if "://" in url and not url.startswith("file://"):
        return None
    path = Path(url[len("file://"):] if url.startswith("file://") else url).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_free_space(url: str, need: float, force: bool, what: str, quiet: bool = False) -> None:
    """Say how many bytes ``what`` will write; refuse in one line when a local target has less free space."""
    if not quiet:
        print(f"{what}: about {human(need)} to write (before zstd)", file=sys.stderr)
    folder = _local_folder(url)
    if folder is None or force:
        return
    free = shutil.disk_usage(folder).free
    if need > free:
        raise UserError(f"{what} needs about {human(need)} but {folder} has {human(free)} free; free some space, "
                        "choose a smaller codec (see `unic-cache plan`), or pass --force")
