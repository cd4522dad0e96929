"""Codec fidelity on real pretrained features: EfficientNet-Lite0 (ImageNet weights from the `lite0` extra)
over scikit-image's photos, each codec against a float32 extract of the same views, written into BENCHMARKS.md.

For every codec: bytes per sample-view (encoded, and on disk after zstd) as a ratio to float32, for the
patch tokens alone and with the summary; cosine to the float32 forward (mean, 1st percentile); and the
relative error after the per-dimension standardisation the distillation loss sees (with the float32
teacher's dataset statistics). The codec is fitted on ``--calibration`` sample-views; the figures are over
every sample-view (most of them held out from the fit).

    python pipelines/bench/codec_bench.py --write
    python pipelines/bench/codec_bench.py --cache runs/shapes/cache.zarr --write   # after pipelines/codecs.yaml

With ``--cache``, no extraction: every teacher ``<name>-<codec>`` of that cache (``same_as`` copies of the
codecs pipeline) is measured against teacher ``<name>`` (float16) on every row, the float16 standing in for
float32 (its own standardised error is 0.0002 above).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from report import heading, publish
from unic_cache import Cache, ExtractOptions, extract
from unic_cache.cache.codecs import f32_bytes, fidelity
from unic_cache.models.device_codecs import unpool_tokens

CODECS = ("f16", "bitround-7", "bitround-4", "int8", "int8c", "pca-0.9", "pca-0.95+int8", "pca-128+int8", "pca-160",
          "pool-2+f16", "pool-2+int8")
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "rocket", "text", "cell",
          "microaneurysms")


def write_photos(folder: Path) -> int:
    """scikit-image's photos as RGB PNG files (grayscale ones repeated over three channels)."""
    import skimage.data

    folder.mkdir(parents=True)
    for name in PHOTOS:
        image = np.asarray(getattr(skimage.data, name)())
        image = (image * 255).astype(np.uint8) if image.dtype != np.uint8 else image
        Image.fromarray(image).convert("RGB").save(folder / f"{name}.png")
    return len(PHOTOS)


def measure(store, ref, truth: dict, norm: dict, n: int, views: int) -> tuple:
    """(patch ×smaller encoded, patch ×smaller on disk, all ×smaller on disk, fidelity per kind, fitted patch
    codec) of ``store`` against the features ``truth`` of ``ref``'s teacher."""
    info = ref.info
    figures = {}
    for kind in store.kinds:
        x = store.read(kind, slice(0, n), slice(None))
        if kind == "patch":  # pooled cells spread back over the tokens they cover
            pool = store.codecs["patch"].codec.pool
            x = unpool_tokens(torch.from_numpy(x.reshape(n * views, -1, info.dim)), info.grid, pool).numpy()
        figures[kind] = fidelity(truth[kind], x.reshape(-1, info.dim), *norm[kind])
    patch_f32 = 4 * info.dim * info.tokens * n * views
    total_f32 = f32_bytes(info.dim, info.tokens) * n * views
    return (patch_f32 / store.nbytes_encoded(("patch",)), patch_f32 / store.nbytes_stored(("patch",)),
            total_f32 / store.nbytes_stored(), figures, store.codecs["patch"])


def reference(ref, n: int) -> tuple[dict, dict]:
    """Every feature of the reference teacher, and its per-dimension mean and std (the loss's standardisation)."""
    truth = {kind: ref.read(kind, slice(0, n), slice(None)).reshape(-1, ref.info.dim) for kind in ref.kinds}
    norm = {kind: (ref.stats(kind)["mean"], np.sqrt(ref.stats(kind)["var"]) + 1e-6) for kind in ref.kinds}
    return truth, norm


def table(rows: list[tuple]) -> list[str]:
    """Markdown rows of (codec, ``measure(...)`` figures)."""
    lines = [
        "| codec | patch ×smaller (encoded) | patch ×smaller (disk) | all ×smaller (disk) | patch cos mean | patch cos p1 "
        "| patch standardised rel. err | summary cos mean | summary standardised rel. err | fitted |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for spec, enc, disk, total, fig, fitted in rows:
        p, s = fig["patch"], fig["summary"]
        fit = f"k={fitted.stored_dim}, kept {fitted.kept_variance:.3f}" if fitted.kept_variance is not None else ""
        lines.append(f"| {spec} | {enc:.1f} | {disk:.1f} | {total:.1f} | {p['cos_mean']:.5f} | {p['cos_p1']:.5f} | "
                     f"{p['std_rel_err']:.4f} | {s['cos_mean']:.5f} | {s['std_rel_err']:.4f} | {fit} |")
    return lines


def from_cache(url: str) -> list[str]:
    """The fidelity of the codec copies of a pipeline's cache against their float16 originals."""
    cache = Cache.open(url)
    names = cache.teacher_names()
    lines = []
    for name in names:
        copies = [c for c in names if c.startswith(f"{name}-")]
        if not copies:
            continue
        ref = cache.teacher(name)
        truth, norm = reference(ref, cache.n)
        rows = [(" / ".join(c.spec for c in cache.teacher(copy).codec_specs().values()),
                 *measure(cache.teacher(copy), ref, truth, norm, cache.n, cache.views)) for copy in copies]
        info = ref.info
        lines += [f"Teacher `{name}` of `{url}` ({info.dim} wide, {info.grid[0]}x{info.grid[1]} tokens, trained on the "
                  f"shapes world; {cache.n} samples x {cache.views} views, every row measured against the float16 "
                  "original). Codec given as summary / patch.", "", *table(rows), ""]
    return lines


def from_photos(views: int, calibration: int, codecs: list[str]) -> list[str]:
    """Extract EfficientNet-Lite0 over scikit-image's photos in float32 and under every codec; compare."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data, url = Path(tmp) / "photos", str(Path(tmp) / "cache.zarr")
        n = write_photos(data)
        base = dict(teacher="efficientnet-lite", views=views, batch_size=32, calibration=calibration, progress=False)
        extract(str(data), url, ExtractOptions(**base, name="f32", codec="f32"))
        ref = Cache.open(url).teacher("f32")
        info = ref.info
        truth, norm = reference(ref, n)
        for spec in codecs:
            name = spec.replace(".", "_").replace("+", "_")
            extract(str(data), url, ExtractOptions(**base, name=name, codec=spec))
            rows.append((spec, *measure(Cache.open(url).teacher(name), ref, truth, norm, n, views)))
    return [
        f"EfficientNet-Lite0 with its ImageNet weights (`lite0` extra, converted to timm's `efficientnet_lite0`) at "
        f"{info.resolution} px: {info.dim}-wide summary and {info.grid[0]}x{info.grid[1]} feature-map tokens; {n} "
        f"photos of scikit-image x {views} views = {n * views} sample-views. Each codec is fitted on "
        f"{calibration} sample-views and measured on all of them against a float32 extract of the same views "
        "(`--codec f32`). Smaller-than-f32 factors: patch tokens encoded / on disk (zstd), and everything on disk.",
        "", *table(rows), ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=16)
    ap.add_argument("--calibration", type=int, default=64, help="sample-views the codecs are fitted on")
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--cache", help="measure the codec copies of this cache instead (see above)")
    ap.add_argument("--write", action="store_true", help="append the results to BENCHMARKS.md")
    args = ap.parse_args()
    if args.cache:
        lines = heading("Codec fidelity on the shapes teachers' features") + from_cache(args.cache)
    else:
        lines = heading("Codec fidelity on EfficientNet-Lite0 features") + from_photos(
            args.views, args.calibration, args.codecs.split(","))
    publish(lines, args.write)


if __name__ == "__main__":
    main()
