"""An ImageNet-like corpus for benchmarks and tests: real photographs as JPEGs at ImageNet sizes.

The shapes world (``shapes.py``) is made for questions about what a student learns; its small PNGs say
nothing about the cost of the pixel path. This corpus does: each sample is a crop of one of
scikit-image's bundled photographs (``skimage.data``: coffee, astronaut, a cat, a rocket, the Hubble deep
field, a retina, a tissue stain; a few grayscale ones), resized to sides of 300-800 px (aspect 3:4 to 4:3),
randomly flipped, and re-encoded as a JPEG of quality 75-95 with 4:2:0 chroma, as ImageNet's files
are. A few are PNG, CMYK JPEG or grayscale JPEG, the odd files a real dataset holds. The class of a
sample (``.cls``) is its source photograph. Deterministic for a seed; written as webdataset shards.

Needs scikit-image (the ``dev`` extra).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError
from .shapes import write_shards

COLOUR = ("coffee", "astronaut", "chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")
GRAY = ("camera", "moon", "coins", "clock")
ODD = {"png": 0.03, "cmyk": 0.02, "gray": 0.02}  # share of the samples stored in each odd way


def _sources() -> list[np.ndarray]:
    try:
        import skimage.data as data
    except ImportError:
        raise UserError("the photo corpus needs scikit-image: pip install 'unic-cache[dev]' (or scikit-image)") from None
    return [getattr(data, name)() for name in COLOUR + GRAY]


def draw_photo(rng: np.random.Generator, sources: list[np.ndarray]) -> tuple[Image.Image, str, int]:
    """(image, format, class) of one sample: a crop of a source photo at an ImageNet size, and how it is stored."""
    odd = rng.random()
    kind = next((k for k, share in zip(ODD, np.cumsum(list(ODD.values()))) if odd < share), "jpeg")
    cls = int(rng.integers(len(COLOUR), len(sources))) if kind == "gray" else int(rng.integers(len(COLOUR)))
    photo = sources[cls]
    width = int(rng.triangular(300, 400, 800))  # both sides in 300-800 px (about 500 on average), aspect 3:4 to 4:3
    height = int(rng.integers(max(300, round(0.75 * width)), min(800, round(width / 0.75)) + 1))
    h, w = photo.shape[:2]
    fit = min(w / width, h / height)  # the largest crop of the photo with the sample's aspect ratio, then 50-100% of it
    cw, ch = (max(1, int(side * fit * rng.uniform(0.5, 1.0))) for side in (width, height))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    image = Image.fromarray(photo[y:y + ch, x:x + cw]).resize((width, height), Image.LANCZOS)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    if kind == "cmyk":
        image = image.convert("RGB").convert("CMYK")
    return image, kind, cls


def encode(image: Image.Image, kind: str, quality: int) -> tuple[str, bytes]:
    """(extension, bytes) of a sample as it is stored."""
    buf = io.BytesIO()
    if kind == "png":
        image.save(buf, format="PNG")
        return "png", buf.getvalue()
    image.save(buf, format="JPEG", quality=quality, subsampling="4:2:0")
    return "jpg", buf.getvalue()


def make_photos(out: str | Path, n: int = 256, seed: int = 0, shard_size: int = 64) -> list[Path]:
    """Write ``n`` samples as webdataset shards ``out/photos-000000.tar`` ...; return the shard paths.
    Sample ``i`` comes from its own generator keyed by (seed, i), so the bytes are identical for a seed."""
    if n <= 0 or shard_size <= 0:
        raise UserError("the photo corpus needs n > 0 and shard_size > 0")
    sources = _sources()

    def sample(i: int) -> dict:
        rng = np.random.default_rng([seed, i])
        image, kind, cls = draw_photo(rng, sources)
        ext, data = encode(image, kind, int(rng.integers(75, 96)))
        return {"__key__": f"photo{i:08d}", ext: data, "cls": str(cls).encode()}

    return write_shards(Path(out), "photos", n, shard_size, sample)
