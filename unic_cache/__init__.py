"""unic-cache: run each teacher once into a sharded zarr cache, then distil students from the cache alone.

Layout: ``cache/`` (the format and its checks; no torch), ``extraction/`` (stage 1), ``distillation/``
(stage 2), ``evaluation/``, ``models/`` (teachers, student, pixels, codecs on the device) and ``runtime`` (devices, ranks);
the CLI and pipelines sit on top. This module exports the public API (``__all__``); everything else is imported
from its module. Names are imported on first use (PEP 562), so ``unic-cache --help`` and reading a cache never
load torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.4.2"

_EXPORTS = {  # the public API: what README's Python section and a user's own training loop need
    "cache.store": ["Cache"],
    "cache.teacher": ["TeacherStore"],
    "cache.layout": ["TeacherInfo"],
    "cache.views": ["ViewPlan", "ViewPolicy"],
    "cache.sources": ["open_source"],
    "extraction.options": ["ExtractOptions"],
    "extraction.runner": ["ExtractReport", "extract"],
    "distillation.options": ["DistillOptions"],
    "distillation.recipe": ["distill"],
    "distillation.exported": ["load_student"],
    "evaluation.options": ["EvalOptions", "TeacherTrainOptions"],
    "evaluation.evaluate": ["Evaluator", "Features", "evaluate"],
    "evaluation.results": ["Results"],
    "evaluation.train_teacher": ["train_teacher"],
    "models.teachers": ["build_teacher"],
    "models.registry": ["FAMILIES"],
    "pipeline": ["PipelineRun", "load_config", "run_pipeline"],
    "plan": ["PlanOptions", "plan", "plan_report"],
    "shapes": ["make_shapes"],
    "demo": ["run_demo"],
    "errors": ["RunInterrupted", "UserError"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = ["__version__", *_WHERE]
RENAMED = {"DistillConfig": "DistillOptions", "TeacherTrainConfig": "TeacherTrainOptions", "PlanConfig": "ViewPlan"}  # 0.2
MOVED = {  # 0.4: internals exported at the top until 0.3, importable from their module
    "cache.pixels": ["PixelPipeline", "decode_image", "crop_labels"], "cache.sources": ["DatasetIndex"],
    "cache.views": ["PARAM_NAMES", "plan_views"], "cache.codecs": ["Codec", "FittedCodec", "parse_codec"],
    "cache.sizing": ["TeacherSize"], "models.teachers": ["Teacher", "resolve"], "models.geometry": ["cut_views"],
    "models.device_pixels": ["replay", "device_views"], "models.photometric": ["photometric"],
    "evaluation.dense": ["dense_probe", "miou", "pool_majority"], "shapes": ["TASKS"],
    "evaluation.labels": ["Labels", "SplitRule", "Task", "read_labels", "read_split"],
}
_MOVED = {name: module for module, names in MOVED.items() for name in names}


def __getattr__(name: str):
    import warnings

    if name in RENAMED:  # the names before one suffix for every command's options: code written for them runs
        warnings.warn(f"unic_cache.{name} is unic_cache.{RENAMED[name]} since 0.2", DeprecationWarning, stacklevel=2)
        return __getattr__(RENAMED[name])
    if name in _MOVED:  # an internal: still found, with where it lives
        warnings.warn(f"unic_cache.{name} is unic_cache.{_MOVED[name]}.{name} since 0.4", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(f".{_MOVED[name]}", __name__), name)
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
