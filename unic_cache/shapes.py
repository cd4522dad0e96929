"""A procedural multi-task image world: drawn shapes on textured backgrounds, written as webdataset shards.

Every sample carries several labels (shape, colour, texture, object count as classes; object size and
position as regression targets), so one small dataset can show whether a student keeps what each
specialised teacher knows. Two dense tasks label every pixel: ``shape-seg`` (background, or the shape
of the object covering it) and ``colour-seg`` (background, or its colour), as ``<key>.<task>.png``.
Generation is deterministic for a seed; the world's split is recorded beside it (``split.json``).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .evaluation.labels import SplitRule, Task, write_split
from .options import Options, at_least, option

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 40),
    "magenta": (215, 40, 200),
    "cyan": (40, 210, 215),
    "orange": (240, 140, 30),
    "white": (245, 245, 245),
}
TEXTURES = ("plain", "hstripes", "vstripes", "checker", "dots", "noise")
MAX_COUNT = 3
WORLD_FORMAT = 2  # 2: label maps and split.json beside the shards


TASKS = (
    Task("shape", len(SHAPES)),
    Task("colour", len(COLOURS)),
    Task("texture", len(TEXTURES)),
    Task("count", MAX_COUNT),  # label is count - 1
    Task("size", 0),
    Task("x", 0),
    Task("y", 0),
    Task("shape-seg", 1 + len(SHAPES), dense=True),  # 0: background, 1 + shape
    Task("colour-seg", 1 + len(COLOURS), dense=True),  # 0: background, 1 + colour
)


_RADII = {"square": (1.0,) * 4, "triangle": (1.0,) * 3, "diamond": (1.0, 0.6) * 2, "star": (1.0, 0.45) * 5}
_CROSS = ((-0.35, -1), (0.35, -1), (0.35, -0.35), (1, -0.35), (1, 0.35), (0.35, 0.35),
          (0.35, 1), (-0.35, 1), (-0.35, 0.35), (-1, 0.35), (-1, -0.35), (-0.35, -0.35))


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape of circumradius ``r`` centred at (cx, cy), rotated by ``angle``."""
    if shape == "cross":
        unit = [(math.hypot(x, y), math.atan2(y, x)) for x, y in _CROSS]
    else:
        radii = _RADII[shape]
        unit = [(rad, 2 * math.pi * k / len(radii)) for k, rad in enumerate(radii)]
    return [(cx + r * rad * math.cos(angle + a), cy + r * rad * math.sin(angle + a)) for rad, a in unit]


def _background(texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A grey-level texture (H, W, 3) uint8 with a random tint, so colour labels stay with the objects."""
    base = rng.uniform(40, 140)
    amp = rng.uniform(35, 70)
    period = rng.uniform(size / 10, size / 5)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    phase = rng.uniform(0, 2 * math.pi)
    if texture == "plain":
        g = np.zeros_like(xx)
    elif texture == "hstripes":
        g = np.sign(np.sin(2 * math.pi * yy / period + phase))
    elif texture == "vstripes":
        g = np.sign(np.sin(2 * math.pi * xx / period + phase))
    elif texture == "checker":
        g = np.sign(np.sin(2 * math.pi * xx / period + phase) * np.sin(2 * math.pi * yy / period + phase))
    elif texture == "dots":
        g = (np.sin(2 * math.pi * xx / period + phase) * np.sin(2 * math.pi * yy / period + phase) > 0.6) * 2.0 - 1.0
    elif texture == "noise":
        coarse = rng.uniform(-1, 1, size=(max(2, size // 6), max(2, size // 6)))
        g = np.asarray(Image.fromarray(((coarse + 1) * 127.5).astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float64) / 127.5 - 1
    else:
        raise ValueError(f"unknown texture: {texture}")
    tint = rng.uniform(0.85, 1.15, size=3)
    img = (base + amp * 0.5 * g)[..., None] * tint
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_sample(rng: np.random.Generator, size: int) -> tuple[Image.Image, dict, dict[str, Image.Image]]:
    """Draw one image of the shapes world; return it with its labels and its label maps (dense task -> L image)."""
    shape_id = int(rng.integers(len(SHAPES)))
    colour_id = int(rng.integers(len(COLOURS)))
    texture_id = int(rng.integers(len(TEXTURES)))
    count = int(rng.integers(1, MAX_COUNT + 1))
    rel_size = float(rng.uniform(0.08, 0.2))  # circumradius relative to the image side
    scale = 4  # draw large, then downsample for anti-aliasing
    big = size * scale
    canvas = Image.fromarray(_background(TEXTURES[texture_id], big, rng))
    draw = ImageDraw.Draw(canvas)
    mask = Image.new("L", (big, big), 0)
    draw_mask = ImageDraw.Draw(mask)
    colour = np.array(list(COLOURS.values())[colour_id], np.float64)
    fill = tuple(int(c) for c in np.clip(colour * rng.uniform(0.85, 1.1), 0, 255))
    r = rel_size * big
    centres: list[tuple[float, float]] = []
    for _ in range(count):
        for _attempt in range(50):  # rejection sampling for non-overlapping objects
            cx, cy = rng.uniform(r, big - r, size=2)
            if all((cx - ox) ** 2 + (cy - oy) ** 2 > (2.1 * r) ** 2 for ox, oy in centres):
                break
        centres.append((float(cx), float(cy)))
        angle = float(rng.uniform(0, 2 * math.pi))
        for target, value in ((draw, fill), (draw_mask, 255)):
            if SHAPES[shape_id] == "circle":
                target.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value)
            else:
                target.polygon(_polygon(SHAPES[shape_id], cx, cy, r, angle), fill=value)
    image = canvas.resize((size, size), Image.LANCZOS)
    covered = np.asarray(mask.resize((size, size), Image.BOX)) >= 128  # the object covers most of the pixel
    maps = {name: Image.fromarray(np.where(covered, 1 + label, 0).astype(np.uint8))
            for name, label in (("shape-seg", shape_id), ("colour-seg", colour_id))}
    labels = {
        "shape": shape_id,
        "colour": colour_id,
        "texture": texture_id,
        "count": count - 1,
        "size": rel_size,
        "x": float(np.mean([c[0] for c in centres]) / big),
        "y": float(np.mean([c[1] for c in centres]) / big),
    }
    return image, labels, maps


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_shards(out: Path, prefix: str, n: int, shard_size: int, sample) -> list[Path]:
    """Write samples ``sample(0) .. sample(n - 1)`` (webdataset dicts) as shards ``out/<prefix>-000000.tar`` ...
    of ``shard_size`` samples; a crash never leaves a half-written shard under its final name."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for first in range(0, n, shard_size):
        path = out / f"{prefix}-{first // shard_size:06d}.tar"
        tmp = path.with_suffix(".tar.tmp")
        with wds.TarWriter(str(tmp), mtime=0.0) as sink:
            for i in range(first, min(n, first + shard_size)):
                sink.write(sample(i))
        tmp.replace(path)
        paths.append(path)
    return paths


def make_shapes(out: str | Path, n: int = 2000, size: int = 64, seed: int = 0, shard_size: int = 500,
                split_seed: int = 0) -> list[Path]:
    """Write ``n`` samples as webdataset shards ``out/shapes-000000.tar`` ...; return the shard paths.

    Sample ``i`` is drawn from its own generator keyed by (seed, i), so any prefix of a larger world
    equals the smaller world, and the bytes are identical for a seed. ``tasks.json`` and ``split.json``
    (the world's one train/val/test split, hashed from ``split_seed``) are written beside the shards.
    """
    from .errors import UserError

    if n <= 0 or size < 16 or shard_size <= 0:
        raise UserError("make-shapes needs --n > 0, --size >= 16 and --shard-size > 0")

    def sample(i: int) -> dict:
        image, labels, maps = draw_sample(np.random.default_rng([seed, i]), size)
        return {"__key__": f"sample{i:08d}", "png": _png(image), "json": json.dumps(labels).encode(),
                **{f"{task}.png": _png(m) for task, m in maps.items()}}

    out = Path(out)
    paths = write_shards(out, "shapes", n, shard_size, sample)
    (out / "tasks.json").write_text(json.dumps([t.__dict__ for t in TASKS], indent=1))
    write_split(out, SplitRule(split_seed))
    return paths


@dataclass
class ShapesOptions(Options):
    """Options of ``unic-cache make-shapes``."""

    command = "make-shapes"

    out: str = option(help="Folder to write shapes-000000.tar ... into.", positional=True)
    n: int = option(2000, "Number of samples.", checks=(at_least(1),))
    size: int = option(64, "Image side in pixels.", checks=(at_least(16),))
    seed: int = option(0, "World seed; the same seed gives the same bytes.")
    shard_size: int = option(500, "Samples per tar shard.", checks=(at_least(1),))
    split_seed: int = option(0, "Seed of the world's train/val/test split (60/20/20 by a hash of each key), "
                                "recorded in split.json for train-teacher, eval and the pipelines.")
