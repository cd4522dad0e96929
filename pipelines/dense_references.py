"""Reference points for the dense probes: what they score on features that know nothing about the teachers.

Scores two references on a pipeline's dense tasks with the very probes of `unic-cache eval`: the raw
pixels of each token's patch (the eval view, as the student sees it) and an untrained student (the
distill recipe's architecture, randomly initialised). A dense task on which these come close to the
teachers and students measures what the pixels show, not what was distilled.

    python pipelines/dense_references.py pipelines/shapes.yaml     # prints a markdown table
    python pipelines/dense_references.py pipelines/reuse.yaml --all-tasks --out runs/reuse/references

With ``--all-tasks`` the global tasks are scored too, on each reference's summary (the mean pixel patch; the
untrained student's CLS token): a task a teacher does not clearly beat these on measures nothing distilled.
``--seeds 0-4`` scores the untrained student at several initialisations, so that its own spread is known
(``reuse_curve.py`` asks a teacher to beat it by more than that spread).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from unic_cache import Evaluator, Features, load_config
from unic_cache.evaluation.images import EvalViews
from unic_cache.evaluation.options import EvalOptions
from unic_cache.models.device_pixels import PixelNorm

from train_rows_only import seed_list


def pixel_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """uint8 (b, 3, H, W) -> float (b, tokens, 3 * patch * patch), tokens in row-major order."""
    cols = torch.nn.functional.unfold(images.float() / 255, patch, stride=patch)
    return cols.transpose(1, 2)


def main() -> None:
    import timm

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pipeline", help="a pipeline YAML whose world and cache were made (unic-cache run)")
    parser.add_argument("--seeds", default="0", help="seeds of the untrained student, e.g. 0-4 or 0,1 (default 0)")
    parser.add_argument("--all-tasks", action="store_true", help="score the global tasks too (not only the dense ones)")
    parser.add_argument("--out", help="also write the table as references.{json,md,png} into this folder")
    args = parser.parse_args()
    config = load_config(args.pipeline)
    out = config["out"]
    cache = (config.get("cache") or {}).get("path") or f"{out}/cache.zarr"
    data = config["data"].get("path") or f"{out}/data"
    probe = Evaluator(EvalOptions(data=data, cache=cache, teachers=[], progress=False))
    if not args.all_tasks:
        probe.tasks = probe.dense  # the dense tasks only
    distill, results = config["distill"], probe.results()
    for i, seed in enumerate(seed_list(args.seeds)):
        torch.manual_seed(seed)
        student = timm.create_model(distill["student"], pretrained=False, num_classes=0, img_size=distill["img_size"],
                                    **distill.get("model_args", {})).eval()
        patch, resolution = student.patch_embed.patch_size[0], distill["img_size"]
        views = EvalViews(data, probe.cache.keys, probe.cache.location, probe.cache.image_size, probe.rows, resolution,
                          probe.cache.plan.policy, probe.cache.digest)
        pixels, untrained, summaries = [], [], []
        with torch.inference_mode():
            for images in views.batches(256, 0, progress=False):
                pixels.append(pixel_patches(images, patch))
                features = student.forward_features(PixelNorm.of(student)(images))
                untrained.append(features[:, student.num_prefix_tokens:])
                summaries.append(features[:, 0] if student.num_prefix_tokens else features.mean(1))
        grid = tuple(student.patch_embed.grid_size)
        pixels = torch.cat(pixels)
        references = [("untrained student", torch.cat(untrained), torch.cat(summaries))]
        for name, tokens, summary in ([("pixels", pixels, pixels.mean(1))] if i == 0 else []) + references:
            results.add(name, "reference", probe.scores(Features(summary, tokens, grid, resolution), seed=seed))
    print("\n".join(results.table("test") + ["", "Validation:", ""] + results.table("val")))
    if args.out:
        results.save(args.out, "references")
    print(f"\nrows: {len(probe.rows)}; grid {grid[0]}x{grid[1]} at {resolution} px; "
          f"foreground tokens: {np.mean([(probe.token_labels(t, resolution, grid) > 0).float().mean().item() for t in probe.dense]):.3f}")


if __name__ == "__main__":
    main()
