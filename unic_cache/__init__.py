"""unic-cache: run each teacher once into a sharded zarr cache, then distil students from the cache alone.

Names are imported on first use (PEP 562), so ``unic-cache --help`` and option errors never load torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "demo": ["run_demo"],
    "distill": ["DistillConfig", "distill"],
    "errors": ["UserError"],
    "evaluate": ["EvalOptions", "evaluate"],
    "extract": ["ExtractOptions", "ExtractReport", "extract"],
    "labels": ["Labels", "Task", "read_labels", "split_rows"],
    "pipeline": ["PipelineRun", "load_config", "run_pipeline"],
    "results": ["Results"],
    "shapes": ["TASKS", "make_shapes"],
    "sources": ["DatasetIndex", "decode_image", "open_source"],
    "store": ["Cache", "TeacherStore"],
    "teachers": ["FAMILIES", "Teacher", "TeacherInfo", "build_teacher", "resolve"],
    "train_teacher": ["TeacherTrainConfig", "train_teacher"],
    "views": ["PARAM_NAMES", "PlanConfig", "ViewPolicy", "plan_views", "replay"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = ["__version__", *_WHERE]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
