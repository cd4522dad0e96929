"""unic-cache: run each teacher once into a sharded zarr cache, then distil students from the cache alone.

Layout: ``cache/`` (the format and its checks; no torch), ``extraction/`` (stage 1), ``distillation/``
(stage 2), ``evaluation/``, ``models/`` (teachers, student, pixels, codecs on the device) and ``runtime`` (devices, ranks);
the CLI and pipelines sit on top. Names are imported on first use (PEP 562), so ``unic-cache --help``
and reading a cache never load torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.3.0"

_EXPORTS = {
    "demo": ["run_demo"],
    "distillation.options": ["DistillOptions"],
    "distillation.recipe": ["distill"],
    "errors": ["UserError"],
    "evaluation.options": ["EvalOptions", "TeacherTrainOptions"],
    "evaluation.evaluate": ["Evaluator", "Features", "evaluate"],
    "evaluation.dense": ["dense_probe", "miou", "pool_majority"],
    "extraction.options": ["ExtractOptions"],
    "extraction.runner": ["ExtractReport", "extract"],
    "evaluation.labels": ["Labels", "SplitRule", "Task", "read_labels", "read_split"],
    "pipeline": ["PipelineRun", "load_config", "run_pipeline"],
    "evaluation.results": ["Results"],
    "shapes": ["TASKS", "make_shapes"],
    "cache.sources": ["DatasetIndex", "open_source"],
    "cache.pixels": ["PixelPipeline", "decode_image", "crop_labels"],
    "cache.store": ["Cache"],
    "cache.teacher": ["TeacherStore"],
    "cache.layout": ["TeacherInfo"],
    "models.teachers": ["Teacher", "build_teacher", "resolve"],
    "models.registry": ["FAMILIES"],
    "evaluation.train_teacher": ["train_teacher"],
    "cache.views": ["PARAM_NAMES", "ViewPlan", "ViewPolicy", "plan_views"],
    "models.pixels": ["replay", "device_views"],
    "models.geometry": ["cut_views"],
    "models.photometric": ["photometric"],
    "plan": ["PlanOptions", "plan", "plan_report"],
    "cache.codecs": ["Codec", "FittedCodec", "parse_codec"],
    "cache.sizing": ["TeacherSize"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = ["__version__", *_WHERE]
RENAMED = {"DistillConfig": "DistillOptions", "TeacherTrainConfig": "TeacherTrainOptions", "PlanConfig": "ViewPlan"}  # 0.2


def __getattr__(name: str):
    if name in RENAMED:  # the names before one suffix for every command's options: code written for them runs
        import warnings

        warnings.warn(f"unic_cache.{name} is unic_cache.{RENAMED[name]} since 0.2", DeprecationWarning, stacklevel=2)
        return __getattr__(RENAMED[name])
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
