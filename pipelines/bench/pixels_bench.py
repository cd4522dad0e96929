"""Pixel-path benchmark on ImageNet-like JPEGs (``unic_cache.photos``): the CPU part and the device part of a
224-px view, beside the replay before the split (per image, torchvision's photometric ops), in one run.

Per view, one thread (one core):
- ``decode_ms``: a full PIL decode of an image (the corpus mean);
- ``cpu_ms_per_view``: what stays on the CPU in extract (an image decoded once for its K views, so the
  decode's K-th share, plus the crop-resize-flip of the view); ``cpu_ms_per_sample_stage2``: the same
  in stage 2, where a sample's one view pays the whole decode;
- ``device_ms_per_view_cpu``: the batched photometric part (``models.photometric``) run on this CPU;
- ``old_ms_per_view``: the replay before the split (decode share + geometry + torchvision per image);
  ``new_ms_per_view``: the CPU part plus the device part run on this CPU;
- fidelity of the new pixels against the old, on the same views: ``max_level_diff``, ``frac_within_1``;
- ``views_per_s_16_cores`` and ``stage2_samples_per_s_16_cores``: 16 cores' CPU part, projected;
- reduced-scale decoding (PIL's ``draft``, DCT scaling): the share of images whose every view keeps at least
  twice the target resolution at half scale (``draft_applicable_frac``: when a per-image scale would apply)
  and the decode time at half scale (``draft_half_decode_ms``);
- with ``--device cuda``: ``device_ms_per_view`` of the photometric part on that device (batches of 256), and
  GPU JPEG decoding (nvJPEG, batched): ms per image and its pixels' distance from PIL's decode;
- with ``--workers N``: ``cpu_views_per_s`` of the CPU part (decode once per image, K crops) in N processes.

    python pipelines/bench/pixels_bench.py --json              # a JSON line
    python pipelines/bench/pixels_bench.py --write             # a table appended to BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from report import heading, publish
from unic_cache.cache.pixels import CURRENT
from unic_cache.cache.views import PlanConfig, plan_views
from unic_cache.models.photometric import photometric, reference
from unic_cache.models.pixels import channels_first
from unic_cache.photos import make_photos


def timed(fn, repeat: int = 1) -> float:
    """Milliseconds per call of ``fn`` (best of ``repeat`` runs)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def corpus_images(n: int, seed: int) -> list[bytes]:
    """The image bytes of an ``n``-sample corpus."""
    with tempfile.TemporaryDirectory() as tmp:
        blobs = []
        for path in make_photos(tmp, n=n, seed=seed, shard_size=n):
            with tarfile.open(path) as tar:
                blobs += [tar.extractfile(m).read() for m in tar if m.name.endswith((".jpg", ".png"))]
    return blobs


def _cpu_part(task: tuple[bytes, np.ndarray, int]) -> int:
    """Decode one image and cut its views (a worker's share of extract)."""
    blob, params, res = task
    image = CURRENT.decode(blob)
    for p in params:
        CURRENT.crop(image, p, res)
    return len(params)


def parallel_views_per_s(blobs: list[bytes], params: np.ndarray, res: int, workers: int) -> float:
    """Views per second of the CPU part in ``workers`` processes."""
    from multiprocessing import get_context

    tasks = [(b, p, res) for b, p in zip(blobs, params)]
    with get_context("fork").Pool(workers) as pool:
        pool.map(_cpu_part, tasks[:workers])  # started
        start = time.perf_counter()
        done = sum(pool.map(_cpu_part, tasks, chunksize=1))
        return done / (time.perf_counter() - start)


def device_ms(x: torch.Tensor, params: np.ndarray, device: str, batch: int = 256) -> float:
    """Milliseconds per view of the photometric part on ``device`` (a GPU: after a warm-up, synchronised)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    on_device = x.to(device)
    photometric(on_device[:batch], params[:batch])
    sync()
    start = time.perf_counter()
    for a in range(0, len(x), batch):
        photometric(on_device[a:a + batch], params[a:a + batch])
    sync()
    return (time.perf_counter() - start) * 1000 / len(x)


def gpu_decode(blobs: list[bytes], device: str) -> dict:
    """nvJPEG through ``torchvision.io.decode_jpeg(..., device=...)``, batched, on the corpus's JPEGs: ms per
    image (after a warm-up, synchronised) and how far its pixels are from PIL's (a new decoder would be a new
    pixel pipeline, so this decides whether one is worth adding)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    jpegs = [b for b in blobs if b[:2] == b"\xff\xd8" and CURRENT.decode(b).mode == "RGB"]
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    decode_jpeg(data[:8], mode=ImageReadMode.RGB, device=device)
    sync()
    start = time.perf_counter()
    images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    sync()
    ms = (time.perf_counter() - start) * 1000 / len(jpegs)
    diff = [(img.cpu().permute(1, 2, 0).int() - torch.from_numpy(np.array(CURRENT.decode(b))).int()).abs()
            for img, b in zip(images, jpegs)]
    return {"gpu_decode_ms": round(ms, 4), "gpu_decode_max_level_diff": int(max(int(d.max()) for d in diff)),
            "gpu_decode_mean_level_diff": round(float(np.mean([float(d.float().mean()) for d in diff])), 4)}


def measure(n: int = 96, views: int = 8, res: int = 224, seed: int = 0, batch: int = 64, device: str | None = None,
            workers: int = 0) -> dict:
    """Every figure of the pixel path; ``device`` (cuda, or cpu for the GPU check's dry run) adds the device run's:
    the photometric part there and batched JPEG decoding there."""
    torch.set_num_threads(1)
    blobs = corpus_images(n, seed)
    images = [CURRENT.decode(b) for b in blobs]
    decode_ms = timed(lambda: [CURRENT.decode(b) for b in blobs], 3) / n
    sizes = np.array([im.size for im in images])
    params = plan_views(PlanConfig(views=views), np.arange(n), sizes)  # (n, K, P): UNIC's policy
    flat = params.reshape(-1, params.shape[-1])
    per_view = [(images[i // views], flat[i]) for i in range(len(flat))]
    crops = np.empty((len(flat), res, res, 3), np.uint8)

    def geometry():
        for i, (image, p) in enumerate(per_view):
            crops[i] = CURRENT.crop(image, p, res)

    geometry_ms = timed(geometry, 2) / len(flat)
    x = channels_first(crops)
    new = torch.empty_like(x)

    def device_part():
        for a in range(0, len(x), batch):
            new[a:a + batch] = photometric(x[a:a + batch], flat[a:a + batch])

    photometric_ms = timed(device_part, 2) / len(flat)
    old = torch.empty_like(x)

    def old_replay():  # the replay before the split: geometry and torchvision's ops, image by image
        for i, (image, p) in enumerate(per_view):
            crop = torch.from_numpy(np.asarray(CURRENT.crop(image, p, res)).copy()).permute(2, 0, 1)
            old[i] = reference(crop, p)

    old_ms = timed(old_replay, 2) / len(flat) + decode_ms / views
    diff = (new.int() - old.int()).abs()
    draft_ok = [_draft_ok(im.size, params[i], res) for i, im in enumerate(images)]

    def draft_decode():
        for b in blobs:
            im = Image.open(io.BytesIO(b))
            im.draft("RGB", (im.size[0] // 2, im.size[1] // 2))
            im.load()

    cpu_view = decode_ms / views + geometry_ms
    cpu_sample = decode_ms + geometry_ms
    return {"images": n, "views": views, "resolution": res, "threads": 1,
            "decode_ms": round(decode_ms, 3), "geometry_ms_per_view": round(geometry_ms, 3),
            "cpu_ms_per_view": round(cpu_view, 3), "cpu_ms_per_sample_stage2": round(cpu_sample, 3),
            "device_ms_per_view_cpu": round(photometric_ms, 3), "old_ms_per_view": round(old_ms, 3),
            "new_ms_per_view": round(cpu_view + photometric_ms, 3), "speed_up": round(old_ms / (cpu_view + photometric_ms), 2),
            "max_level_diff": int(diff.max()), "frac_within_1": float((diff <= 1).float().mean()),
            "frac_identical": float((diff == 0).float().mean()),
            "views_per_s_16_cores": round(16 * 1000 / cpu_view), "stage2_samples_per_s_16_cores": round(16 * 1000 / cpu_sample),
            "old_views_per_s_16_cores": round(16 * 1000 / old_ms),
            "draft_applicable_frac": round(float(np.mean(draft_ok)), 3), "draft_half_decode_ms": round(timed(draft_decode, 3) / n, 3),
            **({"device": device, "device_ms_per_view": round(device_ms(x, flat, device), 4), **gpu_decode(blobs, device)}
               if device is not None else {}),
            **({"workers": workers, "cpu_views_per_s": round(parallel_views_per_s(blobs, params, res, workers))}
               if workers else {})}


def _draft_ok(size: tuple[int, int], views: np.ndarray, res: int) -> bool:
    """Whether every view's crop keeps at least twice ``res`` pixels on each side at half scale."""
    w, h = size
    return bool(np.all(np.minimum(views[:, 2] * w, views[:, 3] * h) / 2 >= 2 * res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96, help="images of the corpus")
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--device", default=None, help="also time the photometric part and batched JPEG decoding on this "
                                                   "device (cuda; cpu runs the same code for the GPU check's dry run)")
    ap.add_argument("--workers", type=int, default=0, help="also time the CPU part in this many processes")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--write", action="store_true", help="append the results to BENCHMARKS.md")
    args = ap.parse_args()
    r = measure(args.n, args.views, args.res, device=args.device, workers=args.workers)
    if args.json:
        print(json.dumps(r))
        return
    lines = heading("Pixel path: CPU part and device part of a view", "cpu") + [
        f"{r['images']} ImageNet-like images of `unic_cache.photos` (JPEG quality 75-95, sides 300-800 px, a few PNG, "
        f"CMYK and grayscale), {r['views']} views each under UNIC's policy, {r['resolution']} px, one thread.",
        "",
        "| per view (ms, one core) | before the split | now |",
        "|---|---|---|",
        f"| CPU: decode share + geometry | {r['old_ms_per_view']:.2f} (everything on the CPU) | {r['cpu_ms_per_view']:.2f} |",
        f"| photometric part, batched, run on this CPU | | {r['device_ms_per_view_cpu']:.2f} |",
        f"| whole path on a CPU | {r['old_ms_per_view']:.2f} | {r['new_ms_per_view']:.2f} ({r['speed_up']:.1f}x) |",
        "",
        f"Decode (full PIL): {r['decode_ms']:.2f} ms per image; geometry {r['geometry_ms_per_view']:.2f} ms per view; "
        f"stage 2's CPU part per sample (a whole decode and one view): {r['cpu_ms_per_sample_stage2']:.2f} ms. "
        f"Projected on 16 cores (CPU part only): {r['views_per_s_16_cores']:,} views/s in extract (before: "
        f"{r['old_views_per_s_16_cores']:,}), {r['stage2_samples_per_s_16_cores']:,} samples/s in stage 2. "
        f"Fidelity to the per-image replay: largest difference {r['max_level_diff']} level(s), "
        f"{100 * r['frac_within_1']:.4f}% within one level, {100 * r['frac_identical']:.4f}% identical. "
        f"Reduced-scale decoding: {100 * r['draft_applicable_frac']:.0f}% of images keep twice the resolution in every "
        f"view at half scale; a half-scale decode takes {r['draft_half_decode_ms']:.2f} ms.",
        *([f"On {r['device']}: the photometric part takes {r['device_ms_per_view']:.4f} ms per view (batches of 256); "
           f"nvJPEG decodes an image in {r['gpu_decode_ms']:.4f} ms (batched), its pixels {r['gpu_decode_mean_level_diff']:.3f} "
           f"levels from PIL's on average (at most {r['gpu_decode_max_level_diff']})."] if "device" in r else []),
        *([f"The CPU part in {r['workers']} processes: {r['cpu_views_per_s']:,} views/s."] if "workers" in r else []),
        "",
    ]
    publish(lines, args.write)


if __name__ == "__main__":
    main()
