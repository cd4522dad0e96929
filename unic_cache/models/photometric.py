"""The photometric part of a planned view, batched on the device: UNIC's colour policy with per-sample parameters.

A view's pixels are its image decoded (in the loader workers, ``cache.pixels``), its geometry (``models.geometry``
on the device under pixel pipeline 3; PIL in the workers under 1 and 2) and its photometric part. This is
the last: colour jitter (brightness, contrast, saturation, hue, in each sample's stored order),
grayscale, Gaussian blur and solarize, applied to a whole uint8 batch (B, 3, R, R) wherever it lives (the
GPU in production, the CPU in tests and for CPU users). The definitions are torchvision's
(``transforms.functional`` on uint8 tensors, which the per-image replay of pixel pipeline 1 called), computed
again for a batch: each sample runs only the operations its parameters call for (the samples of an
operation are gathered, processed together, and put back), and every intermediate is rounded to uint8
where torchvision rounds. Brightness, contrast, saturation, grayscale and solarize are the same float32
arithmetic, so bit-identical up to the order of contrast's mean; hue is the same RGB -> HSV arithmetic
with the HSV -> RGB step written in its closed form, v - v·s·clamp(min(k, 4 - k), 0, 1) per channel
(one pass instead of torchvision's six-way stack and einsum); the blur is torchvision's Gaussian kernel
applied as two 1-D passes of shifted sums instead of a 9x9 convolution. Those two change a value by one
level where a float lands within rounding of a level boundary: the tests hold at least 99.9% of values
identical to torchvision's and none more than one level apart, per operation and for the whole policy.

Which samples run what is decided on the host from the parameters (a CPU array the loader delivers with
the batch), so nothing here waits for the device. On a CPU the samples are processed a few at a time, so
that the intermediates stay in cache (about 4 times faster per image than a whole batch at once).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # the jitter operations, numbered as the plan's order params
IDENTITY = {BRIGHTNESS: 1.0, CONTRAST: 1.0, SATURATION: 1.0, HUE: 0.0}  # a factor that leaves a sample unchanged
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's (and TensorFlow's) luma weights
_TO_UINT8 = 255 + 1.0 - 1e-3  # torchvision's float -> uint8 scale (convert_image_dtype)
_SECTOR_OFFSETS = (5.0, 3.0, 1.0)  # HSV -> RGB in closed form: k = (offset + 6 h) mod 6 for r, g, b
_CPU_CHUNK = 1 << 18  # values per chunk on a CPU: one 224-px image (its float intermediates fit in cache)


def _factors(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """Per-sample float32 factors (b, 1, 1, 1) on ``device``, rounded from float64 as a Python scalar is by
    torchvision's kernels."""
    return torch.as_tensor(np.asarray(values, np.float64).astype(np.float32)).view(-1, 1, 1, 1).to(device, non_blocking=True)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """uint8 (b, 3, H, W) -> uint8 (b, 1, H, W): torchvision's rgb_to_grayscale."""
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).to(torch.uint8).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: np.ndarray) -> torch.Tensor:
    """ratio * x + (1 - ratio) * other, clamped and truncated to uint8 (torchvision's ``_blend``)."""
    ratio = np.asarray(ratio, np.float64)
    y = x.float().mul_(_factors(ratio, x.device)).add_(_factors(1.0 - ratio, x.device) * other)
    return y.clamp_(0, 255).to(torch.uint8)


def brightness(x: torch.Tensor, factor: np.ndarray) -> torch.Tensor:
    return x.float().mul_(_factors(factor, x.device)).clamp_(0, 255).to(torch.uint8)


def contrast(x: torch.Tensor, factor: np.ndarray) -> torch.Tensor:
    return _blend(x, _luma(x).float().mean(dim=(1, 2, 3), keepdim=True), factor)


def saturation(x: torch.Tensor, factor: np.ndarray) -> torch.Tensor:
    return _blend(x, _luma(x), factor)


def hue(x: torch.Tensor, factor: np.ndarray) -> torch.Tensor:
    """Rotate the hue by ``factor`` (a fraction of the circle), in float32 HSV as torchvision does."""
    img = x.float() / 255.0
    maxc, first = img.max(1, keepdim=True)  # the first channel holding the max: r, then g, then b (torchvision's order)
    cr = maxc - img.amin(1, keepdim=True)
    c = (maxc - img) / cr.clamp_min(1e-30)  # rc, gc, bc; 0 for a gray pixel (then cr = 0 and h = 0)
    rc, gc, bc = c.unbind(1)
    h = torch.stack((bc - gc, 2.0 + rc - bc, 4.0 + gc - rc), 1).gather(1, first)
    h = h / 6.0 + 1.0
    h = h - torch.floor(h)  # fmod(h, 1) for h in [0, 2): exact
    h = h + _factors(factor, x.device)
    h = h - torch.floor(h)  # remainder(h, 1): exact as torch.remainder
    k = torch.tensor(_SECTOR_OFFSETS, device=x.device).view(1, 3, 1, 1) + h * 6.0
    k = k - 6.0 * torch.floor(k / 6.0)
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (maxc - cr * weight).mul_(_TO_UINT8).to(torch.uint8)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    return _luma(x).expand_as(x).contiguous()


def blur_kernel_size(resolution: int) -> int:
    """The blur's kernel at ``resolution``: 9 at 224 px (UNIC), scaled with the resolution, odd, at least 3."""
    return 2 * max(1, round(4 * resolution / 224)) + 1


def blur(x: torch.Tensor, sigma: np.ndarray) -> torch.Tensor:
    """Gaussian blur with a per-sample sigma (pixels at this resolution): torchvision's kernel (float32) and
    reflect padding, as a horizontal then a vertical pass of shifted sums, rounded to uint8."""
    height, width = x.shape[-2:]
    k = blur_kernel_size(height)
    grid = torch.linspace(-(k - 1) * 0.5, (k - 1) * 0.5, k, device=x.device)
    pdf = torch.exp(-0.5 * (grid / _factors(sigma, x.device)).pow(2))  # (b, 1, 1, k)
    kernel = pdf / pdf.sum(-1, keepdim=True)
    weights = [kernel[..., j, None] for j in range(k)]  # k of (b, 1, 1, 1)
    padded = F.pad(x.float(), [k // 2] * 4, mode="reflect")
    rows = padded[..., 0:width] * weights[0]
    for j in range(1, k):
        rows.addcmul_(padded[..., j:j + width], weights[j])
    out = rows[..., 0:height, :] * weights[0]
    for j in range(1, k):
        out.addcmul_(rows[..., j:j + height, :], weights[j])
    return torch.round(out).clamp_(0, 255).to(torch.uint8)


def solarize(x: torch.Tensor) -> torch.Tensor:
    """255 - x where x >= 128 (torchvision's solarize at 128): for uint8, x xor 0xFF where its top bit is set."""
    return x ^ (x.view(torch.int8) >> 7).view(torch.uint8)


_JITTER = {BRIGHTNESS: brightness, CONTRAST: contrast, SATURATION: saturation, HUE: hue}


def photometric(images: torch.Tensor, params: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Apply each sample's photometric parameters (``cache.views.PARAM_NAMES`` 5-15) to uint8 images
    (B, 3, R, R) on any device; ``params`` (B, P) on the host. Returns a new uint8 batch on the same device."""
    params = params.numpy() if isinstance(params, torch.Tensor) else np.asarray(params)
    params = params.astype(np.float64)  # the stored float32 values, exactly, as the per-image replay read them
    x = images.contiguous().clone()
    for slot in range(4):
        for op, fn in _JITTER.items():
            rows = np.flatnonzero((params[:, 9 + slot] == op) & (params[:, 5 + op] != IDENTITY[op]))
            _apply(x, rows, lambda y, r, op=op, fn=fn: fn(y, params[r, 5 + op]))
    _apply(x, np.flatnonzero(params[:, 13] >= 0.5), lambda y, r: grayscale(y))
    _apply(x, np.flatnonzero(params[:, 14] > 0), lambda y, r: blur(y, params[r, 14] * x.shape[-1] / 224))
    _apply(x, np.flatnonzero(params[:, 15] >= 0.5), lambda y, r: solarize(y))
    return x


def _apply(x: torch.Tensor, rows: np.ndarray, fn) -> None:
    """x[rows] = fn(x[rows], rows), in place; on a CPU a few rows at a time (see the module's docstring)."""
    if not len(rows):
        return
    step = len(rows) if x.device.type != "cpu" else max(1, _CPU_CHUNK // x[0].numel())
    for a in range(0, len(rows), step):
        part = rows[a:a + step]
        if len(part) == x.shape[0]:
            x.copy_(fn(x, part))
        elif x.device.type == "cpu" and len(part) == 1:
            x[int(part[0])] = fn(x[int(part[0])][None], part)[0]
        else:
            index = torch.as_tensor(part).to(x.device, non_blocking=True)
            x.index_copy_(0, index, fn(x.index_select(0, index), part))


def reference(image: torch.Tensor, params: np.ndarray) -> torch.Tensor:
    """The photometric part of one view as pixel pipeline 1 defined it: torchvision's uint8 operations applied
    image by image (uint8 (3, R, R) -> uint8 (3, R, R)). The reference of the tests and benchmarks, not used
    by the stages."""
    from torchvision.transforms import functional as TF

    res = image.shape[-1]
    factor = {op: float(params[5 + op]) for op in _JITTER}
    ops = {BRIGHTNESS: TF.adjust_brightness, CONTRAST: TF.adjust_contrast, SATURATION: TF.adjust_saturation, HUE: TF.adjust_hue}
    x = image
    for op in params[9:13].astype(int):
        if factor[op] != IDENTITY[op]:
            x = ops[op](x, factor[op])
    if params[13] >= 0.5:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if params[14] > 0:
        k = blur_kernel_size(res)
        x = TF.gaussian_blur(x, [k, k], [float(params[14]) * res / 224] * 2)
    if params[15] >= 0.5:
        x = TF.solarize(x, 128)
    return x
