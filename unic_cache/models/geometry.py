"""The geometry of planned views, batched where the model runs: crop box, bicubic resize, flip.

Pixel pipeline 3 (``cache.pixels``) moves a view's geometry off the loader workers: a worker decodes each
image once and packs the decoded images of its batch into one flat uint8 buffer (``pack``); the device cuts,
resizes and flips every view of the batch from it (``cut_views``), and the photometric part follows
(``models.photometric``). The resize is PIL's antialiased bicubic resize with a box, computed exactly:
the same coefficients (float32 box, float64 filter, normalised in order), the same 22-bit fixed-point
weights, the same rounding after each pass, the same order of the passes. On a GPU each pass gathers every
output's taps and sums pixel x weight in integers, exact in any order, so the views are bit-identical to
``PixelPipeline.crop`` (PIL) image by image; on a CPU PIL's own resampler is the faster way to the same bits
and is called per view (where the installed Pillow is one whose arithmetic this is; with another, the exact
kernel runs on the CPU too). A pipeline-2 cache's views and a pipeline-3 cache's are the same pixels; what
moved is where they are made.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import PIL
import torch
from PIL import Image

_BITS = 22  # PIL's PRECISION_BITS for 8-bit images: 32 - 8 - 2
_SUPPORT = 2.0  # the bicubic filter's support
_CHUNK_BYTES = 1 << 30  # int32 work of one chunk of views on a GPU
PIL_IS_EXACT = PIL.__version__.split(".")[0] == "13"  # a Pillow whose resampler is this arithmetic (tests check it)


class SharedRing:
    """A DataLoader worker's shared-memory buffers for its packed windows, reused in turn: a fresh buffer costs a
    page fault per 4 KiB written (about as much as the decode, here), a reused one a plain copy. The main process
    copies every window out as it arrives (``settle``); ``slots`` must exceed the windows a worker can have in
    flight (DataLoader's ``prefetch_factor``) plus the one being copied. Each buffer starts with the number of
    its window, so a buffer overwritten before it was copied is an error, never other pixels."""

    def __init__(self, slots: int):
        self.buffers: list[torch.Tensor | None] = [None] * slots
        self.count = 0

    def take(self, nbytes: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(a buffer of ``nbytes``, its stamp, the window's number): the next slot, grown when too small."""
        slot = self.count % len(self.buffers)
        self.count += 1
        whole = self.buffers[slot]
        if whole is None or whole.numel() < 8 + nbytes:
            whole = self.buffers[slot] = _shared(8 + max(nbytes, 2 * (whole.numel() if whole is not None else 0)))
        whole[:8].view(torch.int64)[0] = self.count
        return whole[8:8 + nbytes], whole[:8], self.count


class Packed(NamedTuple):
    """Decoded images of a batch in one flat uint8 buffer (``pack``): what pipeline-3 workers send. ``stamp`` and
    ``window``: the slot's stamp and the window's number, when the buffer is a slot of a worker's ``SharedRing``."""

    data: torch.Tensor
    shapes: torch.Tensor
    stamp: torch.Tensor | None = None
    window: int = 0

    def items(self) -> dict[str, torch.Tensor | int]:
        """The entries of a stream's window that carry these images (``settle`` reads them back)."""
        ring = {"pixel_stamp": self.stamp, "pixel_window": self.window} if self.stamp is not None else {}
        return {"pixels": self.data, "pixel_shapes": self.shapes, **ring}

    def settle(self) -> "Packed":
        """These images out of a worker's ring, in memory of their own, checked unchanged while they were copied
        (as they arrive in the main process); images not in a ring are returned as they are."""
        if self.stamp is None:
            return self
        copied = join([self.data])
        if int(self.stamp.view(torch.int64)[0]) != self.window:
            raise RuntimeError("a loader worker reused a pixel buffer before it was copied (more windows in flight "
                               "than its ring holds); this is a bug: please report it")
        return Packed(copied, self.shapes)


def settle(window: dict) -> dict:
    """A window (a dict of a stream's samples) whose images came in a worker's ``SharedRing``, copied out of it."""
    stamp, number = window.pop("pixel_stamp", None), window.pop("pixel_window", 0)
    if stamp is not None:
        window["pixels"] = Packed(window["pixels"], window["pixel_shapes"], stamp, number).settle().data
    return window


def pack(images: Iterable[torch.Tensor | None], shapes: Sequence[tuple[int, int]] | None = None,
         ring: SharedRing | None = None) -> Packed:
    """Decoded images (H, W, 3) uint8 (None: none, e.g. a bad sample) as one flat uint8 buffer and their
    (H, W) int64 (n, 2), so that a batch crosses processes and devices in a few copies, not one per image.

    With ``shapes`` known beforehand (the index's image sizes), each image is copied into place as it comes
    from a generator, so its memory is reused for the next (no fresh pages per image); a decoded image of
    another size is an error. In a DataLoader worker the buffer is in shared memory, so that sending it to the
    main process copies nothing: a slot of ``ring`` (stamped, for ``Packed.settle``), or a fresh one, as
    ``default_collate`` makes its batches."""
    if shapes is None:
        images = list(images)
        shapes = [tuple(im.shape[:2]) if im is not None else (0, 0) for im in images]
    sizes = torch.tensor(shapes, dtype=torch.int64).reshape(len(shapes), 2)
    total = 3 * int((sizes[:, 0] * sizes[:, 1]).sum())
    stamp, number = None, 0
    if torch.utils.data.get_worker_info() is None:
        buffer = torch.from_numpy(np.empty(total, np.uint8))  # see ``join``
    elif ring is not None:
        buffer, stamp, number = ring.take(total)
    else:
        buffer = _shared(total)
    flat, at = buffer.numpy(), 0
    for (h, w), image in zip(shapes, images):
        if image is None:
            continue
        if tuple(image.shape) != (h, w, 3):
            raise ValueError(f"a decoded image is {tuple(image.shape)}, its index says ({h}, {w}, 3)")
        flat[at:at + 3 * h * w] = image.reshape(-1).numpy()  # numpy's copy: about twice torch.cat's speed here
        at += 3 * h * w
    return Packed(buffer, sizes, stamp, number)


def _shared(nbytes: int) -> torch.Tensor:
    """A uint8 tensor in shared memory (what ``default_collate`` makes in a worker)."""
    storage = torch.empty(0, dtype=torch.uint8)._typed_storage()._new_shared(nbytes, device="cpu")
    return torch.empty(0, dtype=torch.uint8).new(storage).resize_(nbytes)


def join(buffers: list[torch.Tensor]) -> torch.Tensor:
    """Packed buffers end to end in one (numpy's allocation: transparent huge pages where the kernel offers them,
    several times faster to fill here than torch's fresh 4 KiB pages)."""
    return torch.from_numpy(np.concatenate([b.numpy() for b in buffers]))


def offsets(shapes: torch.Tensor) -> np.ndarray:
    """Where each packed image starts in the buffer (n + 1 values, the last the buffer's length)."""
    sizes = 3 * shapes[:, 0].numpy().astype(np.int64) * shapes[:, 1].numpy().astype(np.int64)
    return np.concatenate([[0], np.cumsum(sizes)])


def cut_views(data: torch.Tensor, shapes: torch.Tensor, image_of_view: np.ndarray, params: np.ndarray,
              resolution: int) -> torch.Tensor:
    """uint8 views (V, 3, R, R) on ``data``'s device: view v cut from packed image ``image_of_view[v]`` by its
    params (crop box 0-3 as fractions of the image, flip 4), resized to ``resolution`` as PIL's bicubic resize."""
    params = np.asarray(params, np.float32).reshape(len(image_of_view), -1)
    image_of_view = np.asarray(image_of_view, np.int64)
    if not len(image_of_view):
        return torch.zeros((0, 3, resolution, resolution), dtype=torch.uint8, device=data.device)
    if data.device.type == "cpu" and PIL_IS_EXACT:
        return _cut_with_pil(data, shapes, image_of_view, params, resolution)
    return cut_exact(data, shapes, image_of_view, params, resolution)


def pil_box(params: np.ndarray, width: np.ndarray, height: np.ndarray) -> np.ndarray:
    """The crop boxes (V, 4) PIL resizes from, in float32 as its C code receives them: x0 = x·w, y0 = y·h,
    x1 = (x + cw)·w, y1 = (y + ch)·h, each product in float64 from the stored float32 fractions."""
    p = params[:, :4].astype(np.float64)
    w, h = np.asarray(width, np.float64), np.asarray(height, np.float64)
    return np.stack([p[:, 0] * w, p[:, 1] * h, (p[:, 0] + p[:, 2]) * w, (p[:, 1] + p[:, 3]) * h], 1).astype(np.float32)


def _cut_with_pil(data, shapes, image_of_view, params, resolution) -> torch.Tensor:
    """The CPU kernel: PIL's resampler per view on the packed images (the reference ``cut_views`` matches)."""
    at, hw = offsets(shapes), shapes.numpy()
    out = np.empty((len(image_of_view), resolution, resolution, 3), np.uint8)
    boxes = pil_box(params, hw[image_of_view, 1], hw[image_of_view, 0])
    opened: dict[int, Image.Image] = {}
    flat = data.numpy()
    for v, i in enumerate(image_of_view):
        if i not in opened:
            h, w = (int(s) for s in hw[i])
            opened = {i: Image.fromarray(flat[at[i]:at[i + 1]].reshape(h, w, 3))}
        view = opened[i].resize((resolution, resolution), Image.BICUBIC, box=tuple(float(b) for b in boxes[v]))
        out[v] = np.asarray(view.transpose(Image.FLIP_LEFT_RIGHT) if params[v, 4] >= 0.5 else view)
    return torch.from_numpy(out).movedim(-1, -3).contiguous()


def resize_weights(in_size: torch.Tensor, start: torch.Tensor, stop: torch.Tensor, out_size: int):
    """PIL's bicubic coefficients along one axis, for V resizes at once: (first source index (V, out), its
    number of taps (V, out), fixed-point weights (V, out, K) as float64 integers), K the widest kernel.

    ``in_size`` (V,) int64; ``start``, ``stop`` (V,) the box edges as float32 (PIL's ``precompute_coeffs``
    and ``normalize_coeffs_8bpc``, operation for operation, so that every weight is PIL's integer)."""
    f64 = torch.float64
    scale = (stop - start).to(f64) / out_size  # float32 subtraction, then float64, as in C
    filterscale = scale.clamp_min(1.0)
    support = _SUPPORT * filterscale
    ksize = int(torch.ceil(support).max()) * 2 + 1
    centre = start.to(f64)[:, None] + (torch.arange(out_size, dtype=f64, device=start.device) + 0.5)[None] * scale[:, None]
    lo = torch.trunc(centre - support[:, None] + 0.5).clamp_min(0)
    hi = torch.minimum(torch.trunc(centre + support[:, None] + 0.5), in_size.to(f64)[:, None])
    taps = (hi - lo).clamp_min(0)
    j = torch.arange(ksize, dtype=f64, device=start.device)
    x = ((j[None, None] + lo[..., None]) - centre[..., None] + 0.5) * (1.0 / filterscale)[:, None, None]
    w = torch.where(j[None, None] < taps[..., None], _bicubic(x), torch.zeros((), dtype=f64, device=start.device))
    total = w[..., 0].clone()
    for k in range(1, ksize):  # summed in C's order, so that the normalised weights are the same doubles
        total = total + w[..., k]
    w = torch.where(total[..., None] != 0, w / torch.where(total == 0, 1.0, total)[..., None], w)
    fixed = torch.where(w < 0, torch.trunc(-0.5 + w * (1 << _BITS)), torch.trunc(0.5 + w * (1 << _BITS)))
    return lo.long(), taps.long(), fixed


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    """PIL's bicubic filter (a = -0.5), with its operations in its order."""
    x = x.abs()
    near = ((1.5 * x - 2.5) * x) * x + 1
    far = (((x - 5) * x + 8) * x - 4) * -0.5
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros((), dtype=x.dtype, device=x.device)))


def _taps(lo: torch.Tensor, fixed: torch.Tensor, first: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each output's K source positions (c, out, K) counted from ``first``, kept inside ``width``, and their
    weights as int32 (0 past a kernel's taps)."""
    pos = lo[..., None] - first[:, None, None] + torch.arange(fixed.shape[-1], device=lo.device)
    keep = pos < width
    return torch.where(keep, pos, 0), torch.where(keep, fixed, 0.0).to(torch.int32)


def _pass(x: torch.Tensor, pos: torch.Tensor, weight: torch.Tensor, dim: int) -> torch.Tensor:
    """One pass of PIL's 8-bit resampling along ``dim`` (2: rows, 3: columns) of x (c, 3, H, W) int32: every output
    is (sum of its taps' pixel x weight + 2**21) >> 22, clamped to 0..255 (PIL's ``clip8``), in exact integers."""
    c, out, k = pos.shape
    if dim == 3:
        picked = torch.gather(x, 3, pos.reshape(c, 1, 1, out * k).expand(c, 3, x.shape[2], out * k))
        total = (picked.view(c, 3, x.shape[2], out, k) * weight[:, None, None]).sum(-1)
    else:
        picked = torch.gather(x, 2, pos.reshape(c, 1, out * k, 1).expand(c, 3, out * k, x.shape[3]))
        total = (picked.view(c, 3, out, k, x.shape[3]) * weight[:, None, :, :, None]).sum(3)
    return ((total + (1 << (_BITS - 1))) >> _BITS).clamp_(0, 255).to(torch.int32)


def horizontal_first(height: np.ndarray, width: np.ndarray, resolution: int) -> np.ndarray:
    """Pillow 13's pass order (the vertical pass first when the height shrinks by more than twice as many
    pixels as the width); the two orders round differently, so pipeline 3 fixes this one."""
    shrink_y, shrink_x = height - resolution, width - resolution
    return ~((shrink_y > 0) & (shrink_y > 2 * shrink_x))


def cut_exact(data, shapes, image_of_view, params, resolution) -> torch.Tensor:
    """The device kernel: both passes in integers, PIL's order, views in chunks."""
    dev, r = data.device, resolution
    at, hw = offsets(shapes), shapes.numpy()
    boxes = torch.from_numpy(pil_box(params, hw[image_of_view, 1], hw[image_of_view, 0])).to(dev)
    view_hw = torch.from_numpy(hw[image_of_view]).to(dev)
    x_lo, x_taps, x_w = resize_weights(view_hw[:, 1], boxes[:, 0], boxes[:, 2], r)
    y_lo, y_taps, y_w = resize_weights(view_hw[:, 0], boxes[:, 1], boxes[:, 3], r)
    starts = torch.stack([y_lo[:, 0], x_lo[:, 0]], 1)
    spans = (torch.stack([(y_lo + y_taps).amax(1), (x_lo + x_taps).amax(1)], 1) - starts).cpu().numpy()
    view_at = torch.from_numpy(at[image_of_view]).to(dev)
    order = horizontal_first(hw[image_of_view, 0], hw[image_of_view, 1], r)
    out = torch.empty((len(image_of_view), 3, r, r), dtype=torch.uint8, device=dev)
    flat = data.reshape(-1)
    taps = torch.maximum(x_taps.amax(1), y_taps.amax(1)).cpu().numpy()
    for across_first in (True, False):
        for part in _chunks(np.flatnonzero(order == across_first), spans, taps, r):
            rows, cols = (int(s) for s in spans[part].max(0))
            at_dev = torch.from_numpy(part).to(dev)
            region = flat[_region_index(view_at[at_dev], view_hw[at_dev], starts[at_dev], rows, cols)].to(torch.int32)
            x_pos, x_wt = _taps(x_lo[at_dev], x_w[at_dev], starts[at_dev, 1], cols)
            y_pos, y_wt = _taps(y_lo[at_dev], y_w[at_dev], starts[at_dev, 0], rows)
            if across_first:
                views = _pass(_pass(region, x_pos, x_wt, 3), y_pos, y_wt, 2)
            else:
                views = _pass(_pass(region, y_pos, y_wt, 2), x_pos, x_wt, 3)
            flip = torch.from_numpy(params[part, 4] >= 0.5).to(dev)[:, None, None, None]
            out[at_dev] = torch.where(flip, views.flip(-1), views).to(torch.uint8)
    return out


def _chunks(views: np.ndarray, spans: np.ndarray, taps: np.ndarray, resolution: int):
    """``views`` in consecutive groups whose padded work (about: the region's indices and pixels, one pass's
    gathered taps and their products) fits the budget."""
    start = 0
    while start < len(views):
        rows, cols, k, end = 0, 0, 0, start
        while end < len(views):
            v = views[end]
            rows2, cols2, k2 = max(rows, spans[v, 0]), max(cols, spans[v, 1]), max(k, taps[v])
            if end > start and (end + 1 - start) * 12 * (rows2 * cols2 + 2 * resolution * k2 * max(rows2, cols2)) > _CHUNK_BYTES:
                break
            rows, cols, k, end = rows2, cols2, k2, end + 1
        yield views[start:end]
        start = end


def _region_index(at: torch.Tensor, hw: torch.Tensor, starts: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Flat buffer indices (c, 3, rows, cols) of each view's source region (its images' offsets ``at``, sizes
    ``hw`` and region corners ``starts``, all (c, ...) on the device; images stored (H, W, 3)), clamped inside its
    image: the padding beyond a view's own region meets zero weights."""
    dev = at.device
    h, w = hw[:, 0, None, None, None], hw[:, 1, None, None, None]
    y = torch.minimum(starts[:, 0, None, None, None] + torch.arange(rows, device=dev)[None, None, :, None], h - 1)
    x = torch.minimum(starts[:, 1, None, None, None] + torch.arange(cols, device=dev)[None, None, None, :], w - 1)
    c = torch.arange(3, device=dev)[None, :, None, None]
    return at[:, None, None, None] + (y * w + x) * 3 + c
