"""A cache's pixel pipeline: how a planned view's parameters become pixels, and its CPU part.

The pixels of a view are made in two parts. Here, per image on the CPU (in loader workers), the image is
decoded and the view's geometry applied: the crop box (params 0-3, fractions of the image), a bicubic
resize to the model's resolution (PIL's, antialiased) and the flip (param 4), giving uint8 (R, R, 3).
Then ``models.photometric`` applies the colour policy (params 5-15) to whole batches where the model runs.

What the CPU part does is recorded in the cache's root attrs (``pixels``), so that stage 2 and eval replay
a view as the teachers saw it, and a later version of this tool replays an old cache as it was made:

- version 1: PIL's decode of the stored bytes, as they are (the EXIF orientation is not applied, as in
  PIL's and webdataset's defaults). Every cache made before pipelines were recorded is version 1.
- version 2 (current): the same, with the EXIF orientation applied first (``ImageOps.exif_transpose``), so
  a phone photo stored sideways is seen upright, as a viewer shows it; its image size in the index is the
  upright one.

A version this tool does not know is a one-line error naming it (a newer tool made the cache).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps

from ..errors import UserError


@dataclass(frozen=True)
class PixelPipeline:
    """One version of the pixel pipeline (see the module's docstring)."""

    version: int
    exif_transpose: bool

    def to_dict(self) -> dict:
        """The record kept in a cache's root attrs."""
        return {**asdict(self), "decode": "PIL", "geometry": "crop box, PIL bicubic resize (antialiased), flip",
                "photometric": "torchvision's uint8 definitions, batched (unic_cache.models.photometric)"}

    def decode(self, data: bytes) -> Image.Image:
        """The RGB image a sample's bytes hold under this pipeline (odd modes converted, see ``decode_image``)."""
        return decode_image(data, self.exif_transpose)

    def crop(self, image: Image.Image, params: np.ndarray, resolution: int) -> np.ndarray:
        """The view's geometry: uint8 (resolution, resolution, 3); the photometric part is not applied here."""
        return np.asarray(_geometry(image, params, resolution, Image.BICUBIC))


PIPELINES = {1: PixelPipeline(1, exif_transpose=False), 2: PixelPipeline(2, exif_transpose=True)}
CURRENT = PIPELINES[2]


def pixel_pipeline(record: dict | None) -> PixelPipeline:
    """The pipeline of a cache from its ``pixels`` attr (absent: version 1, every cache made before it)."""
    if record is None:
        return PIPELINES[1]
    version = record.get("version")
    if version not in PIPELINES:
        raise UserError(f"this cache was made with pixel pipeline {version}, which this version of unic-cache does "
                        f"not know (it replays {', '.join(map(str, PIPELINES))}); upgrade unic-cache to use it")
    return PIPELINES[version]


def decode_image(data: bytes, exif_transpose: bool = False) -> Image.Image:
    """Decode bytes to an RGB image; odd modes (CMYK, palette, RGBA, 16-bit, float) are converted; with
    ``exif_transpose`` the EXIF orientation is applied first."""
    if not data:
        raise ValueError("empty file")
    image = Image.open(io.BytesIO(data))
    image.load()
    if exif_transpose and image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" else max(float(arr.max()), 1.0)
        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return image if image.mode == "RGB" else image.convert("RGB")


def _geometry(image: Image.Image, params: np.ndarray, resolution: int, resample: int) -> Image.Image:
    """The crop (params 0-3, fractions of the image), resized to ``resolution``, and the flip (param 4)."""
    w, h = image.size
    x0, y0, cw, ch = (float(v) for v in params[:4])
    box = (x0 * w, y0 * h, (x0 + cw) * w, (y0 + ch) * h)
    image = image.resize((resolution, resolution), resample, box=box)
    return image.transpose(Image.FLIP_LEFT_RIGHT) if params[4] >= 0.5 else image


def crop_labels(labels: Image.Image, params: np.ndarray, resolution: int) -> np.ndarray:
    """The view ``params`` of a label map (mode L, class per pixel): uint8 (resolution, resolution), nearest
    neighbour; the photometric parameters do not apply to labels."""
    return np.asarray(_geometry(labels, params, resolution, Image.NEAREST))
