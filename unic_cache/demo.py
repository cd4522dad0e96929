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
