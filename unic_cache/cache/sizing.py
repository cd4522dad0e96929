"""How big a cache gets, before anything is extracted: the arithmetic of ``unic-cache plan`` and the
free-space check of ``extract``. Figures are the encoded bytes before zstd (zstd saves a few percent
on float16 and int8 values, more on bit-rounded ones), so they bound what lands on disk."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .codecs import Codec, f32_bytes


def human(nbytes: float) -> str:
    """Bytes in binary units: 1.2 KiB, 3.4 TiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


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

    @property
    def stored_grid(self) -> tuple[int, int]:
        return self.patch_codec.stored_grid(self.grid) if self.patch_codec else (0, 0)

    @property
    def per_sample_view(self) -> int:
        """Encoded bytes of one sample-view: the summary and the (possibly pooled) patch tokens."""
        summary = self.codec.bytes_per_vector(self.codec.planned_dim(self.dim))
        if self.patch_codec is None:
            return summary
        tokens = self.stored_grid[0] * self.stored_grid[1]
        return summary + tokens * self.patch_codec.bytes_per_vector(self.patch_codec.planned_dim(self.dim))

    @property
    def total(self) -> int:
        return self.per_sample_view * self.samples * self.views

    @property
    def vs_float32(self) -> float:
        return self.per_sample_view / f32_bytes(self.dim, self.grid[0] * self.grid[1] if self.patch_codec else 0)

    @property
    def upper_bound(self) -> bool:
        """True when a PCA keeps a variance fraction: its width is only known after calibration."""
        return any(c is not None and c.pca is not None and c.pca < 1 for c in (self.codec, self.patch_codec))


def plan_lines(sizes: list[TeacherSize], throughput: float) -> list[str]:
    """The planner's table: bytes per teacher and in total, and the read bandwidth of stage 2 at
    ``throughput`` student samples per second (each sample reads one view of every teacher)."""
    w = max(7, *(len(t.name) for t in sizes))
    lines = [f"{'teacher':<{w}} {'dim':>5} {'grid':>7} {'codec (summary / patch)':<34} {'per view':>10} {'vs f32':>7} {'total':>11}"]
    for t in sizes:
        grid = f"{t.stored_grid[0]}x{t.stored_grid[1]}" if t.patch_codec else "-"
        codecs = f"{t.codec.spec} / {t.patch_codec.spec if t.patch_codec else 'no patch'}"
        mark = " *" if t.upper_bound else ""
        lines.append(f"{t.name:<{w}} {t.dim:>5} {grid:>7} {codecs:<34} {human(t.per_sample_view):>10} {t.vs_float32:>7.3f} "
                     f"{human(t.total):>11}{mark}")
    total = sum(t.total for t in sizes)
    per_sample = sum(t.per_sample_view for t in sizes)
    lines.append(f"total: {human(total)} for {sizes[0].samples:,} samples x {sizes[0].views} views (before zstd)")
    lines.append(f"stage 2 reads {human(per_sample)} per sample: {human(per_sample * throughput)}/s at {throughput:g} samples/s")
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
