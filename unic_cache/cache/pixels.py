"""A cache's pixel pipeline: how a planned view's parameters become pixels, and the part loader workers run.

The pixels of a view are the image decoded, the view's geometry (the crop box, params 0-3 as fractions
of the image, a bicubic resize to the model's resolution, PIL's antialiased one, and the flip, param 4)
and its photometric part (params 5-15, ``models.photometric``, on whole batches where the model runs).
Versions 1 and 2 cut the geometry in the workers, per image (``crop``); version 3 only decodes there
(``decode_array``) and the device cuts every view of a batch (``models.geometry``), with PIL's arithmetic
exactly, so its views are the same pixels as version 2's, image by image.

What the CPU part does is recorded in the cache's root attrs (``pixels``), so that stage 2 and eval replay
a view as the teachers saw it, and a later version of this tool replays an old cache as it was made:

- version 1: PIL's decode of the stored bytes, as they are (the EXIF orientation is not applied, as in
  PIL's and webdataset's defaults). Every cache made before pipelines were recorded is version 1.
- version 2: the same, with the EXIF orientation applied first (``ImageOps.exif_transpose``), so
  a phone photo stored sideways is seen upright, as a viewer shows it; its image size in the index is the
  upright one.
- version 3 (current): version 2's pixels, made elsewhere: JPEGs are decoded by libjpeg-turbo through
  ``torchvision.io.decode_jpeg`` (the same pixels as PIL's decode, about 1.5 times faster; other formats, and
  a JPEG it refuses, by PIL as before) and the geometry runs on the device, batched, with the resampling
  arithmetic fixed by this tool (Pillow's 22-bit bicubic with Pillow 13's pass order), so the pixels
  no longer depend on the installed Pillow.

A version this tool does not know is a one-line error naming it (a newer tool made the cache).
"""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps

from ..errors import UserError


@dataclass(frozen=True)
class PixelPipeline:
    """One version of the pixel pipeline (see the module's docstring)."""

    version: int
    exif_transpose: bool
    device_geometry: bool = False  # version 3: workers decode, the device cuts the views

    def to_dict(self) -> dict:
        """The record kept in a cache's root attrs."""
        if not self.device_geometry:
            return {"version": self.version, "exif_transpose": self.exif_transpose, "decode": "PIL",
                    "geometry": "crop box, PIL bicubic resize (antialiased), flip",
                    "photometric": "torchvision's uint8 definitions, batched (unic_cache.models.photometric)"}
        return {**asdict(self), "decode": "JPEG: libjpeg-turbo (torchvision.io.decode_jpeg), others: PIL",
                "geometry": "on the device: crop box, PIL's bicubic arithmetic exactly (22-bit weights, Pillow 13's "
                            "pass order), flip (unic_cache.models.geometry)",
                "photometric": "torchvision's uint8 definitions, batched (unic_cache.models.photometric)"}

    @property
    def where(self) -> str:
        """Where this pipeline cuts a view's geometry, in words (``info`` says it of a cache)."""
        return "on the device, batched" if self.device_geometry else "in the loader workers, per image (PIL)"

    def note(self) -> str | None:
        """One line for a cache made with an earlier pipeline: which path replays it (None for the current one)."""
        if self.version == CURRENT.version:
            return None
        return (f"this cache was made with pixel pipeline {self.version}: its views are cut {self.where}, as when it "
                f"was made (a cache made now cuts them on the device)")

    def decode(self, data: bytes) -> Image.Image:
        """The RGB image a sample's bytes hold under this pipeline (odd modes converted, see ``decode_image``)."""
        if self.device_geometry:
            return Image.fromarray(self.decode_array(data).numpy())
        return decode_image(data, self.exif_transpose)

    def decode_array(self, data: bytes):
        """The decoded image as a contiguous uint8 tensor (H, W, 3), what version 3's workers hand the device."""
        import torch

        if self.device_geometry and data[:2] == b"\xff\xd8" and (jpeg := _jpeg_decoder()) is not None:
            try:
                decoded = jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), apply_exif_orientation=self.exif_transpose)
                return decoded.permute(1, 2, 0).contiguous()  # torchvision's (3, H, W) is a view of (H, W, 3) rows
            except RuntimeError:  # a JPEG libjpeg-turbo refuses here: PIL decides, as for every other format
                pass
        return torch.from_numpy(np.array(decode_image(data, self.exif_transpose)))

    def crop(self, image: Image.Image, params: np.ndarray, resolution: int) -> np.ndarray:
        """The view's geometry: uint8 (resolution, resolution, 3); the photometric part is not applied here."""
        return np.asarray(_geometry(image, params, resolution, Image.BICUBIC))


PIPELINES = {1: PixelPipeline(1, exif_transpose=False), 2: PixelPipeline(2, exif_transpose=True),
             3: PixelPipeline(3, exif_transpose=True, device_geometry=True)}
CURRENT = PIPELINES[3]


@functools.cache
def _jpeg_decoder():
    """torchvision's JPEG decoder as RGB, its deprecation warning silenced (torchvision 0.29 deprecates its image
    decoding for TorchCodec's); None where torchvision no longer has it: PIL decodes, to the same pixels, slower."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None

    def decode(data, apply_exif_orientation: bool):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The image decoding and encoding capabilities", DeprecationWarning)
            return decode_jpeg(data, mode=ImageReadMode.RGB, apply_exif_orientation=apply_exif_orientation)

    return decode


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
