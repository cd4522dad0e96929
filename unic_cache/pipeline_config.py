"""A pipeline's YAML read into its checked configuration: ``base`` files merged in, ``--set`` overrides applied,
every section's keys checked by the options class of the command it feeds (``distill`` and each arm by
DistillOptions, a teacher's ``extract`` and ``train`` by ExtractOptions and TeacherTrainOptions, ``eval`` by
EvalOptions, ``data.shapes`` by ShapesOptions, ``cache`` by the view plan's keys) before anything runs.

YAML keys (paths are relative to the working directory)::

    name: demo                          # results go to <out>/<name>.{md,json,png} (default: results)
    out: runs/demo                      # every artefact goes below this folder; pipelines may share one
    data: {shapes: {n: 1200, size: 32, seed: 0, split_seed: 0}}   # generated into <out>/data; or {path: DATA SPEC}
    cache: {views: 4, seed: 0, crop_scale: [0.35, 1]}   # optional; path defaults to <out>/cache.zarr
    teachers:                           # name in the cache -> how to get it
      shape-texture:
        teacher: timm:vit_tiny_patch16_224   # or an alias (dinov2, ...) with size
        resolution: 32
        model_args: {depth: 4}
        train: {tasks: [shape, texture], epochs: 20}   # train-teacher first; or weights: FILE | random
        extract: {batch_size: 64}       # any other extract option (codec: int8, ...)
      shape-texture-int8:               # the same teacher (trained once) stored with another codec; not
        same_as: shape-texture          # evaluated as a teacher of its own
        extract: {codec: int8}
    distill: {student: vit_tiny_patch16_224, img_size: 32, epochs: 10}   # shared by every arm
    arms: {unic: {}, no-drop: {teacher_drop: 0.0}}   # name -> distill options that differ
    seeds: [0, 1, 2]
    eval: {k: 20}                       # any eval option

A file may start from another: ``base: shapes.yaml`` takes every section of that file except its arms and
seeds, and this file's sections are merged over it (this is how ``ablations.yaml`` shares the benchmark's
world, teachers and cache); ``replace: [teachers]`` takes the sections named there from this file whole
instead (how ``shapes-world1.yaml`` keeps the benchmark's recipe with other teachers).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import UserError
from .options import check_options, set_value

_KEYS = {"name", "out", "data", "cache", "teachers", "distill", "arms", "seeds", "eval"}
_TEACHER_KEYS = {"teacher", "size", "resolution", "model_args", "weights", "train", "extract", "same_as"}
_DATA_KEYS = {"path", "shapes", "distill_on"}
_CACHE_KEYS = {"path", "views", "seed", "crop_scale", "unit_rows"}


def merged(base: dict, override: dict) -> dict:
    """``override`` laid over ``base``, section by section (nested dicts merge, other values replace)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A pipeline file; ``base: other.yaml`` (relative to this file) is read first and overridden by this one."""
    if path.resolve() in seen:
        raise UserError(f"pipeline {path} includes itself through 'base'")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read pipeline {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(config, dict):
        raise UserError(f"pipeline {path} must be a YAML mapping")
    replace = config.pop("replace", [])
    if not isinstance(replace, list) or not set(replace) <= _KEYS:
        raise UserError(f"pipeline {path}: 'replace' lists sections to take whole, from {', '.join(sorted(_KEYS))}")
    if "base" in config:
        base = _read_yaml(path.parent / config.pop("base"), (*seen, path.resolve()))
        for key in ("arms", "seeds", *replace):  # arms and seeds are what a derived pipeline is about: never inherited
            base.pop(key, None)
        config = merged(base, config)
    return config


def load_config(path: str | Path, overrides: list[str] = ()) -> dict:
    """A pipeline YAML as a dict, with its ``base`` merged in, ``--set`` overrides applied and its keys checked."""
    from .distillation.options import DistillOptions
    from .evaluation.options import EvalOptions, TeacherTrainOptions
    from .extraction.options import ExtractOptions
    from .shapes import ShapesOptions

    config = _read_yaml(Path(path))
    for assignment in overrides:
        set_value(config, assignment)
    unknown = sorted(set(config) - _KEYS)
    if unknown:
        raise UserError(f"unknown pipeline key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KEYS))}")
    for key in ("out", "data", "teachers", "distill"):
        if key not in config:
            raise UserError(f"pipeline {path} needs a {key!r} section")
    _check_section(config["data"], _DATA_KEYS, "data", "{path: DATA SPEC} or {shapes: {n: ..., size: ...}}")
    if not config["data"]:
        raise UserError("pipeline 'data' needs path (a dataset spec) or shapes (a world to generate; path wins)")
    shapes = config["data"].get("shapes") or {}
    check_options(ShapesOptions, shapes, "make-shapes")
    for key in ("shapes", "distill_on"):
        if "out" in (config["data"].get(key) or {}):
            raise UserError(f"pipeline 'data.{key}' takes no out: the world is generated into the pipeline's folder")
    check_options(ShapesOptions, config["data"].get("distill_on") or {}, "make-shapes")
    _check_section(config.get("cache") or {}, _CACHE_KEYS, "cache", "views, seed, crop_scale, unit_rows, path")
    for name, spec in config["teachers"].items():
        spec = config["teachers"][name] = _teacher_spec(config["teachers"], name, spec)
        bad = sorted(set(spec) - _TEACHER_KEYS)
        if bad or "teacher" not in spec:
            raise UserError(f"teacher {name}: needs 'teacher' and takes only {', '.join(sorted(_TEACHER_KEYS))} (got {', '.join(bad)})")
        check_options(ExtractOptions, spec.get("extract", {}), "extract")
        check_options(TeacherTrainOptions, spec.get("train", {}), "train-teacher")
    for overrides in [config["distill"], *(config.get("arms") or {}).values()]:
        check_options(DistillOptions, overrides or {}, "distill")
    check_options(EvalOptions, config.get("eval", {}), "eval")  # every key is checked before anything runs
    return config


def _teacher_spec(teachers: dict, name: str, spec: dict) -> dict:
    """A teacher's spec with ``same_as: OTHER`` resolved: the other teacher's model, weights and training
    (trained once, under the other's name), with this entry's own keys (its ``extract`` options) on top."""
    if not isinstance(spec, dict):
        raise UserError(f"teacher {name}: expected a mapping of options, got {spec!r}")
    if "same_as" not in spec:
        return spec
    other = teachers.get(spec["same_as"])
    if not isinstance(other, dict) or "same_as" in other:
        raise UserError(f"teacher {name}: same_as must name another teacher of this pipeline that has no same_as itself")
    return {**{k: v for k, v in other.items() if k != "extract"}, **spec}


def _check_section(values, allowed: set[str], section: str, takes: str) -> None:
    """Refuse a section that is not a mapping of the keys it takes."""
    if not isinstance(values, dict) or set(values) - allowed:
        extra = sorted(set(values) - allowed) if isinstance(values, dict) else [repr(values)]
        raise UserError(f"pipeline '{section}' takes {takes} (got {', '.join(map(str, extra))})")
