"""``unic-cache demo``: the bundled offline pipeline (``configs/demo.yaml``), full size or reduced for smoke tests."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from .options import Options, option

if TYPE_CHECKING:
    from .pipeline import PipelineRun

QUICK = [  # a smoke test of every step in well under a minute; its numbers mean nothing
    "data.shapes.n=240",
    "cache.views=2",
    "teachers.shape-texture.train.epochs=1",
    "teachers.colour-geometry.train.epochs=1",
    "distill.epochs=4",
    "distill.workers=0",
]


def demo_config(out: str, quick: bool = False) -> dict:
    """The demo pipeline config writing into ``out``."""
    from .pipeline import load_config

    path = resources.files("unic_cache") / "configs" / "demo.yaml"
    return load_config(str(path), [f"out={out}", *(QUICK if quick else [])])


def demo_summary(config: dict) -> str:
    """One paragraph saying what the demo ran, read from its config (so that it stays true)."""
    data, cache, distill = config["data"]["shapes"], config["cache"], config["distill"]
    args = distill.get("model_args", {})
    hidden = ("projectors sized to the student (--lop-hidden student; UNIC's 768/3072 are sized for ViT-B)"
              if distill.get("lop_hidden") == "student" else "UNIC's projectors")
    return (f"demo: {data['n']:,} shapes images at {data['size']} px; {len(config['teachers'])} teachers trained on disjoint "
            f"tasks; one cache of {cache['views']} views per image; a {args.get('depth', '?')}-block, "
            f"{args.get('embed_dim', '?')}-wide student distilled from the cache alone for {distill['epochs']} epochs with "
            f"UNIC's loss and teacher dropping (p = {distill.get('teacher_drop', 0.5)}) and {hidden}; every model probed "
            "on every task (RESULTS.md, 'The demo', says what it scored)")


def run_demo(out: str = "demo", quick: bool = False, progress: bool = True) -> PipelineRun:
    """Run the demo end to end into ``out``; re-running reuses every finished step."""
    from .pipeline import run_pipeline

    return run_pipeline(demo_config(out, quick), progress=progress)


@dataclass
class DemoOptions(Options):
    """Options of ``unic-cache demo``."""

    command = "demo"

    out: str = option("demo", "Folder for the world, teachers, cache, runs and results.")
    quick: bool = option(False, "A much smaller, faster run (a smoke test, not a benchmark).", flag="--quick")
    progress: bool = option(True, "Show progress bars.")
