"""``unic-cache plan``: the bytes a cache will take and the read bandwidth stage 2 will need, before any
extraction (aliases are sized from the registry, other timm models built on the meta device: no weights, no data
read unless DATA is given)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .cache.codecs import codec_problem, kind_codecs, parse_codec
from .cache.views import REPLAY_EVIDENCE, REPLAY_LIMIT, ViewPlan, views_for
from .cache.sizing import KEY_BYTES, ArrayPlan, TeacherSize, cache_arrays, plan_figures, plan_lines
from .errors import UserError
from .options import Options, at_least, comma_list, key_values, option, storage_option


@dataclass
class PlanOptions(Options):
    """Everything ``plan`` can be told."""

    command = "plan"

    data: str | None = option(None, "The dataset, to count its samples (indexes it: reads every image once, as "
                                    "extract's first step does); or --samples.", positional=True)
    samples: int | None = option(None, "Number of samples (ImageNet-1K train: 1281167).", checks=(at_least(1),))
    teachers: list[str] = option(help="Comma-separated teachers: aliases (see `unic-cache teachers`) or timm:<name>; "
                                      "ALIAS:SIZE picks a size, e.g. dino:base,deit3:base.", factory=list, parse=comma_list)
    resolution: int | None = option(None, "Input resolution of every teacher (default: 224 for aliases, as extract).",
                                    checks=(at_least(1),))
    model_args: dict = option(help="KEY=VALUE passed to timm.create_model for every teacher, or TEACHER:KEY=VALUE for "
                                   "one of --teachers (timm:vit_tiny_patch16_224:depth=2); repeatable.", factory=dict,
                              flag="--model-arg", parse=key_values)
    views: int | None = option(None, "Augmented views per sample (default: enough for --epochs, else 8).",
                               checks=(at_least(1),))
    epochs: float | None = option(None, "The stage-2 schedule the cache is for: plans the views that keep each view's "
                                        "replays (epochs / views) within what the reuse curve measured as safe.",
                                  checks=(lambda v: None if v > 0 else f"must be > 0, got {v}",))
    patch: bool = option(True, "Store patch tokens as well as the summary.")
    codec: str = option("f16", "Feature codec, as extract's --codec.", checks=(codec_problem,))
    patch_codec: str | None = option(None, "Patch-token codec when it differs, as extract's --patch-codec.",
                                     checks=(codec_problem,))
    throughput: float = option(2000.0, "Student samples per second (all GPUs) for the read bandwidth.",
                               checks=(lambda v: None if v > 0 else f"must be > 0, got {v}",))
    shard_mb: float = option(256.0, "Extract's --shard-mb: the shards (files) its units of work are made of.",
                             checks=(lambda v: None if v > 0 else f"must be > 0, got {v}",))
    unit_rows: int | None = option(None, "Extract's --unit-rows, when given there.", checks=(at_least(1),))
    json: bool = option(False, "Print the figures as one JSON object (bytes per array kind, totals, files).")
    storage_options: dict = storage_option()

    @property
    def planned_views(self) -> int:
        """--views, or the views --epochs needs, or UNIC's 8."""
        return self.views or (views_for(self.epochs) if self.epochs is not None else ViewPlan.views)

    def check_together(self) -> None:
        if not self.teachers:
            raise UserError("plan needs --teachers, e.g. --teachers dino:base,deit3:base")
        if (self.data is None) == (self.samples is None):
            raise UserError("plan needs either DATA or --samples N (not both)")
        named = {key.rsplit(":", 1)[0] for key in self.model_args if ":" in key}
        if named - set(self.teachers):
            raise UserError(f"--model-arg names teacher(s) {', '.join(sorted(named - set(self.teachers)))} that --teachers "
                            f"does not list ({', '.join(self.teachers)}); write TEACHER:KEY=VALUE with TEACHER as in --teachers")

    def teacher_args(self, spec: str) -> dict:
        """The timm arguments of teacher ``spec``: those for every teacher, then its own (``spec:KEY=VALUE``)."""
        return {**{k: v for k, v in self.model_args.items() if ":" not in k},
                **{k.rsplit(":", 1)[1]: v for k, v in self.model_args.items() if k.rsplit(":", 1)[0] == spec}}


def plan(opts: PlanOptions) -> tuple[list[TeacherSize], list[ArrayPlan]]:
    """One ``TeacherSize`` per teacher of ``opts``, and the cache's own arrays (index, view plan)."""
    from .models.registry import MODEL_PREFIXES, alias_shape, default_resolution, split_alias

    opts.check()
    codecs = kind_codecs(opts.codec, opts.patch_codec, opts.patch)
    infos = []  # every teacher's shape before the dataset is indexed: a bad name or argument fails at once
    for spec in opts.teachers:
        teacher, size = split_alias(spec, None)
        args = opts.teacher_args(spec)
        if teacher.startswith(MODEL_PREFIXES) or args:  # a named model: built on the meta device
            from .models.teachers import teacher_shape

            infos.append(teacher_shape(teacher, size, opts.resolution, args))
        else:  # an alias: known without torch
            infos.append(alias_shape(teacher, size, default_resolution(teacher, opts.resolution)))
    samples, key_bytes = opts.samples, KEY_BYTES * (opts.samples or 0)
    if samples is None:
        from .cache.sources import open_source

        index = open_source(opts.data).index(progress=True)
        samples, key_bytes = index.n, sum(len(str(k).encode()) for k in index.keys)
    sizes = [TeacherSize(spec, info.dim, info.grid, codecs["summary"], codecs.get("patch"), samples, opts.planned_views,
                         opts.shard_mb, opts.unit_rows, info.summary_tokens) for spec, info in zip(opts.teachers, infos)]
    return sizes, cache_arrays(samples, opts.planned_views, key_bytes)


# the remedy the reuse curve measured for long schedules (RESULTS.md): more views, in a cheaper patch codec
CHEAPER_VIEWS = ("so many views cost less with --patch-codec pca-K+int8 (K a quarter of the teacher's width; 0.13 to "
                 "0.16 of float16's bytes per view): 16 and 32 such views kept students within 2 points of online ones "
                 "in both worlds of the reuse curve")


def schedule_line(opts: PlanOptions) -> str | None:
    """What --epochs means for the views: how often each is replayed, against the measured limit."""
    if opts.epochs is None:
        return None
    views, replays = opts.planned_views, opts.epochs / opts.planned_views
    line = (f"schedule: {opts.epochs:g} epochs over {views} views replay each view {replays:.1f} times "
            f"(measured safe: up to {REPLAY_LIMIT:g}; {REPLAY_EVIDENCE}")
    if replays > REPLAY_LIMIT:
        line = f"{line}); warning: plan --views {views_for(opts.epochs)} for this schedule"
    else:
        line += ")"
    if views_for(opts.epochs) > ViewPlan.views and parse_codec(opts.patch_codec or opts.codec).pca is None:
        line += f"; {CHEAPER_VIEWS}"
    return line


def plan_report(opts: PlanOptions) -> list[str]:
    """The planner's lines for ``opts`` (one JSON line with --json)."""
    sizes, cache = plan(opts)
    if opts.json:
        figures = plan_figures(sizes, cache, opts.throughput)
        if opts.epochs is not None:
            figures["schedule"] = {"epochs": opts.epochs, "replays_per_view": opts.epochs / opts.planned_views,
                                   "replay_limit": REPLAY_LIMIT, "views_needed": views_for(opts.epochs)}
        return [json.dumps(figures)]
    schedule = schedule_line(opts)
    return plan_lines(sizes, cache, opts.throughput) + ([schedule] if schedule else [])
