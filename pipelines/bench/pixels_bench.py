"""Pixel-path benchmark on ImageNet-like JPEGs (``unic_cache.photos``): what each stage's CPU does per sample
and per view under pixel pipeline 3 (workers decode; the device cuts the geometry) against pipeline 2 (workers
also cut the geometry, PIL, per image), with the device part run on this CPU, in one run.

One thread (one core):
- ``decode_ms``: a plain decode, PIL's, to an array (the corpus mean); ``decode_v3_ms``: pipeline 3's decoder
  (JPEGs by libjpeg-turbo through torchvision, others by PIL) to an (H, W, 3) tensor, and the share of images
  whose pixels are PIL's (``decode_identical_frac``);
- ``worker_ms_per_image``: a pipeline-3 worker's work per image (decode and pack into the batch's buffer in shared
  memory, handed over), timed through a real DataLoader worker;
  ``host_ms_per_sample``: the main process copying every image once more (windows cut into batches);
- ``cpu_per_sample_over_decode`` (stage 2: a sample pays a whole decode) and ``cpu_per_view_over_decode``
  (extract: an image's decode is shared by its K views), pipeline 3, as ratios to the plain decode; the same
  under pipeline 2 (``..._v2``), where a view also costs PIL's crop-resize-flip (``geometry_ms_per_view``);
- the device part run on this CPU: ``geometry_cpu_ms_per_view`` (``models.geometry.cut_views``) and
  ``device_ms_per_view_cpu`` (the photometric part); their fidelity to pipeline 2's pixels, per operation:
  ``geometry_max_level_diff`` (0: the same bits) and, for the photometric part against torchvision's per-image
  definitions, ``max_level_diff``, ``frac_within_1``, ``frac_identical``;
- ``views_per_s_16_cores`` and ``stage2_samples_per_s_16_cores``: 16 cores' CPU work, projected;
- with ``--device cuda``: per view on that device, ``device_ms_per_view`` (photometric part, batches of 256) and
  ``geometry_device_ms_per_view`` (the exact kernel, batches of 256 views, its fidelity to PIL
  ``geometry_device_max_level_diff``), and GPU JPEG decoding (nvJPEG, batched): ms per image and its pixels'
  distance from PIL's; ``--device cpu`` runs the same code on this CPU (the GPU check's dry run);
- with ``--workers N``: ``cpu_views_per_s`` of pipeline 3's worker part (decode once per image) in N processes.

    python pipelines/bench/pixels_bench.py --json              # a JSON line
    python pipelines/bench/pixels_bench.py --write             # a table appended to BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
import torch

from report import heading, images, publish, timed
from unic_cache.cache.pixels import CURRENT, PIPELINES
from unic_cache.cache.views import ViewPlan, plan_views
from unic_cache.models import geometry
from unic_cache.models.photometric import photometric, reference
from unic_cache.models.geometry import Packed
from unic_cache.models.device_pixels import channels_first
from unic_cache.models.pixel_worker import PixelWorker
from unic_cache.photos import make_photos


def corpus_images(n: int, seed: int) -> list[bytes]:
    """The image bytes of an ``n``-sample corpus."""
    with tempfile.TemporaryDirectory() as tmp:
        make_photos(tmp, n=n, seed=seed, shard_size=n)
        return images(tmp)


def _worker_part(blob: bytes) -> int:
    """Decode one image as a pipeline-3 worker does (its views are cut on the device)."""
    CURRENT.decode_array(blob)
    return 1


def parallel_images_per_s(blobs: list[bytes], workers: int) -> float:
    """Images per second of pipeline 3's worker part in ``workers`` processes."""
    from multiprocessing import get_context

    with get_context("fork").Pool(workers) as pool:
        pool.map(_worker_part, blobs[:workers])  # started
        seconds, done = timed(lambda: sum(pool.map(_worker_part, blobs, chunksize=1)))
        return done / seconds


def device_ms(x: torch.Tensor, params: np.ndarray, device: str, batch: int = 256) -> float:
    """Milliseconds per view of the photometric part on ``device`` (a GPU: after a warm-up, synchronised)."""
    on_device = x.to(device)
    photometric(on_device[:batch], params[:batch])  # warm-up
    seconds, _ = timed(lambda: [photometric(on_device[a:a + batch], params[a:a + batch]) for a in range(0, len(x), batch)],
                       device=device)
    return seconds * 1000 / len(x)


def gpu_decode(blobs: list[bytes], device: str) -> dict:
    """nvJPEG through ``torchvision.io.decode_jpeg(..., device=...)``, batched, on the corpus's JPEGs: ms per
    image (after a warm-up, synchronised) and how far its pixels are from PIL's (a new decoder would be a new
    pixel pipeline, so this decides whether one is worth adding)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    jpegs = [b for b in blobs if b[:2] == b"\xff\xd8" and CURRENT.decode(b).mode == "RGB"]
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
    decode_jpeg(data[:8], mode=ImageReadMode.RGB, device=device)  # warm-up
    seconds, images = timed(lambda: decode_jpeg(data, mode=ImageReadMode.RGB, device=device), device=device)
    ms = seconds * 1000 / len(jpegs)
    diff = [(img.cpu().permute(1, 2, 0).int() - torch.from_numpy(np.array(CURRENT.decode(b))).int()).abs()
            for img, b in zip(images, jpegs)]
    return {"gpu_decode_ms": round(ms, 4), "gpu_decode_max_level_diff": int(max(int(d.max()) for d in diff)),
            "gpu_decode_mean_level_diff": round(float(np.mean([float(d.float().mean()) for d in diff])), 4)}


class _Windows(torch.utils.data.Dataset):
    """Windows of ``batch`` images decoded and packed by a pipeline-3 loader worker's step (into shared memory)."""

    def __init__(self, blobs: list[bytes], shapes: list[tuple[int, int]], batch: int, windows: int):
        self.blobs, self.shapes, self.batch, self.windows = blobs, shapes, batch, windows
        self.worker = PixelWorker(CURRENT, 4)  # the library's worker step, as the stage-2 stream's: prefetch 2, + 2

    def __len__(self) -> int:
        return self.windows

    def __getitem__(self, i: int) -> int:
        a = (i * self.batch) % max(1, len(self.blobs) - self.batch + 1)
        return self.worker.packed(self.blobs[a:a + self.batch], self.shapes[a:a + self.batch]).items()


def worker_ms_per_image(blobs: list[bytes], shapes: list[tuple[int, int]], batch: int, windows: int = 16) -> float:
    """Milliseconds per image of a pipeline-3 worker, measured through a real DataLoader worker process (its decode,
    its packing into its reused shared buffers, the hand-over) and the main process copying each window out
    (``settle``), after the first windows."""
    batch = min(batch, len(blobs))
    loader = iter(torch.utils.data.DataLoader(_Windows(blobs, shapes, batch, windows + 4), batch_size=None,
                                              num_workers=1, prefetch_factor=2))
    for _ in range(4):  # every slot of the ring made once
        geometry.settle(next(loader))
    seconds, received = timed(lambda: sum(len(geometry.settle(window)["pixel_shapes"]) for window in loader))
    return seconds * 1000 / received


def geometry_device(packed: Packed, which: np.ndarray, params: np.ndarray, res: int, device: str,
                    expected: torch.Tensor, batch: int = 256) -> dict:
    """The exact geometry kernel on ``device`` (what a GPU runs; on a CPU this calls it directly): ms per view in
    batches of ``batch`` views (the images already there, after a warm-up, synchronised) and its largest
    difference from PIL's pixels."""
    data = packed.data.to(device)
    geometry.cut_exact(data, packed.shapes, which[:batch], params[:batch], res)  # warm-up
    seconds, out = timed(lambda: [geometry.cut_exact(data, packed.shapes, which[a:a + batch], params[a:a + batch], res)
                                  for a in range(0, len(which), batch)], device=device)
    ms = seconds * 1000 / len(which)
    diff = (torch.cat(out).cpu().int() - expected.int()).abs()
    return {"geometry_device_ms_per_view": round(ms, 4), "geometry_device_max_level_diff": int(diff.max())}


def measure(n: int = 96, views: int = 8, res: int = 224, seed: int = 0, batch: int = 64, device: str | None = None,
            workers: int = 0) -> dict:
    """Every figure of the pixel path; ``device`` (cuda, or cpu for the GPU check's dry run) adds the device run's:
    the geometry and photometric parts there and batched JPEG decoding there."""
    torch.set_num_threads(1)
    blobs = corpus_images(n, seed)
    old = PIPELINES[2]  # geometry in the workers
    images = [old.decode(b) for b in blobs]
    decode_ms = timed(lambda: [np.asarray(old.decode(b)) for b in blobs], 3, pick=min)[0] * 1000 / n
    decode_v3_ms = timed(lambda: [CURRENT.decode_array(b) for b in blobs], 3, pick=min)[0] * 1000 / n
    decoded = [CURRENT.decode_array(b) for b in blobs]
    same_decode = [np.array_equal(p.numpy(), np.asarray(im)) for p, im in zip(decoded, images)]
    sizes = np.array([im.size for im in images])
    params = plan_views(ViewPlan(views=views), np.arange(n), sizes)  # (n, K, P): UNIC's policy
    flat = params.reshape(-1, params.shape[-1])
    which = np.repeat(np.arange(n), views)
    crops = np.empty((len(flat), res, res, 3), np.uint8)

    def geometry_v2():
        for i, (row, p) in enumerate(zip(which, flat)):
            crops[i] = old.crop(images[row], p, res)

    geometry_ms = timed(geometry_v2, 2, pick=min)[0] * 1000 / len(flat)
    expected = channels_first(crops)  # pipeline 2's pixels
    shapes = [(h, w) for w, h in sizes.tolist()]
    worker_ms = worker_ms_per_image(blobs, shapes, batch)
    packed = geometry.pack(decoded)
    host_ms = timed(lambda: geometry.join([packed.data[:len(packed.data) // 2], packed.data[len(packed.data) // 2:]]), 3, pick=min)[0] * 1000 / n
    geometry_cpu_ms = timed(lambda: geometry.cut_views(packed.data, packed.shapes, which, flat, res), 2, pick=min)[0] * 1000 / len(flat)
    x = geometry.cut_views(packed.data, packed.shapes, which, flat, res)
    geometry_diff = int((x.int() - expected.int()).abs().max())
    new = torch.empty_like(x)

    def device_part():
        for a in range(0, len(x), batch):
            new[a:a + batch] = photometric(x[a:a + batch], flat[a:a + batch])

    photometric_ms = timed(device_part, 2, pick=min)[0] * 1000 / len(flat)
    old_views = torch.stack([reference(x[i], p) for i, p in enumerate(flat)])  # torchvision's definitions, per image
    diff = (new.int() - old_views.int()).abs()
    cpu_sample, cpu_view = worker_ms + host_ms, (worker_ms + host_ms) / views
    cpu_sample_v2, cpu_view_v2 = decode_ms + geometry_ms, decode_ms / views + geometry_ms
    return {"images": n, "views": views, "resolution": res, "threads": 1,
            "decode_ms": round(decode_ms, 3), "decode_v3_ms": round(decode_v3_ms, 3),
            "decode_identical_frac": round(float(np.mean(same_decode)), 4),
            "worker_ms_per_image": round(worker_ms, 3), "host_ms_per_sample": round(host_ms, 4),
            "geometry_ms_per_view": round(geometry_ms, 3),
            "cpu_ms_per_view": round(cpu_view, 3), "cpu_ms_per_sample_stage2": round(cpu_sample, 3),
            "cpu_per_sample_over_decode": round(cpu_sample / decode_ms, 3),
            "cpu_per_view_over_decode": round(cpu_view / decode_ms, 3),
            "cpu_per_sample_over_decode_v2": round(cpu_sample_v2 / decode_ms, 3),
            "cpu_per_view_over_decode_v2": round(cpu_view_v2 / decode_ms, 3),
            "geometry_cpu_ms_per_view": round(geometry_cpu_ms, 3), "geometry_max_level_diff": geometry_diff,
            "device_ms_per_view_cpu": round(photometric_ms, 3),
            "max_level_diff": int(diff.max()), "frac_within_1": float((diff <= 1).float().mean()),
            "frac_identical": float((diff == 0).float().mean()),
            "views_per_s_16_cores": round(16 * 1000 / cpu_view), "stage2_samples_per_s_16_cores": round(16 * 1000 / cpu_sample),
            "views_per_s_16_cores_v2": round(16 * 1000 / cpu_view_v2),
            "stage2_samples_per_s_16_cores_v2": round(16 * 1000 / cpu_sample_v2),
            **({"device": device, "device_ms_per_view": round(device_ms(x, flat, device), 4),
                **geometry_device(packed, which, flat, res, device, expected), **gpu_decode(blobs, device)}
               if device is not None else {}),
            **({"workers": workers, "cpu_views_per_s": round(views * parallel_images_per_s(blobs, workers))}
               if workers else {})}


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
    lines = heading("Pixel path: what the CPU does per sample and per view", "cpu") + [
        f"{r['images']} ImageNet-like images of `unic_cache.photos` (JPEG quality 75-95, sides 300-800 px, a few PNG, "
        f"CMYK and grayscale), {r['views']} views each under UNIC's policy, {r['resolution']} px, one thread. A plain "
        f"decode (PIL, to an array): {r['decode_ms']:.2f} ms per image.",
        "",
        "| CPU work, ÷ a plain decode | pipeline 2 (geometry in the workers) | pipeline 3 (geometry on the device) |",
        "|---|---|---|",
        f"| stage 2, per sample (one view, a whole decode) | {r['cpu_per_sample_over_decode_v2']:.2f} | "
        f"{r['cpu_per_sample_over_decode']:.2f} |",
        f"| extract, per view ({r['views']} views share a decode) | {r['cpu_per_view_over_decode_v2']:.2f} | "
        f"{r['cpu_per_view_over_decode']:.2f} |",
        f"| projected on 16 cores: stage-2 samples/s | {r['stage2_samples_per_s_16_cores_v2']:,} | "
        f"{r['stage2_samples_per_s_16_cores']:,} |",
        f"| projected on 16 cores: extract views/s | {r['views_per_s_16_cores_v2']:,} | {r['views_per_s_16_cores']:,} |",
        "",
        f"Pipeline 3's worker decodes with libjpeg-turbo through torchvision ({r['decode_v3_ms']:.2f} ms per image, "
        f"{100 * r['decode_identical_frac']:.0f}% of images PIL's pixels exactly); {r['worker_ms_per_image']:.2f} "
        f"ms per image through a real DataLoader worker (decode, copy into its reused shared buffer, hand-over, the main "
        f"process's copy out); cutting windows into batches may copy an image once more ({r['host_ms_per_sample']:.3f} "
        f"ms). Pipeline 2's geometry: {r['geometry_ms_per_view']:.2f} ms per view (PIL); its figures are timed in one "
        f"process, its crops' hand-over not counted, which favours it. "
        f"The device part run on this CPU: geometry {r['geometry_cpu_ms_per_view']:.2f} ms per view (PIL's resampler "
        f"per view), photometric part {r['device_ms_per_view_cpu']:.2f} ms per view (batched). Fidelity to pipeline "
        f"2's pixels: decode {'identical' if r['decode_identical_frac'] == 1 else 'not identical'}, geometry at most "
        f"{r['geometry_max_level_diff']} level(s) apart; photometric part against torchvision's per-image definitions: "
        f"largest difference {r['max_level_diff']} level(s), {100 * r['frac_within_1']:.4f}% within one level, "
        f"{100 * r['frac_identical']:.4f}% identical.",
        *([f"On {r['device']}: geometry (the exact kernel, batches of 256 views) {r['geometry_device_ms_per_view']:.4f} "
           f"ms per view, at most {r['geometry_device_max_level_diff']} level(s) from PIL; the photometric part "
           f"{r['device_ms_per_view']:.4f} ms per view (batches of 256); nvJPEG decodes an image in "
           f"{r['gpu_decode_ms']:.4f} ms (batched), its pixels {r['gpu_decode_mean_level_diff']:.3f} levels from "
           f"PIL's on average (at most {r['gpu_decode_max_level_diff']})."] if "device" in r else []),
        *([f"Pipeline 3's worker part in {r['workers']} processes: {r['cpu_views_per_s']:,} views/s."]
          if "workers" in r else []),
        "",
    ]
    publish(lines, args.write)


if __name__ == "__main__":
    main()
