"""Every option of ``unic-cache extract`` (torch-free: checked before any model is loaded)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from ..cache.codecs import EXAMPLES, codec_problem, value_kinds
from ..cache.views import ViewPlan, ViewPolicy
from ..errors import UnknownTeacher, UserError
from ..records import differences
from ..models.registry import MODEL_PREFIXES, alias_model, model_spec, release_problem, split_alias, weights_problem
from ..options import Options, at_least, key_values, option, storage_option

if TYPE_CHECKING:
    from ..cache.sources import Source
    from ..cache.store import Cache
    from ..cache.teacher import TeacherStore


@dataclass
class ExtractOptions(Options):
    """Everything ``extract`` can be told; the CLI, --config YAML and --set are made from these fields."""

    command = "extract"

    teacher: str | None = option(None, "Teacher alias (see `unic-cache teachers`), ALIAS:SIZE (deit3:base), timm:<model "
                                       "name>, local-dir:FOLDER (a timm / Hugging Face model folder, e.g. a student's "
                                       "model/) or hf-hub:REPO; on a made cache, the name of one of its teachers alone (its recorded "
                                       "options), or none: every teacher of the cache, with its recorded options.")
    size: str | None = option(None, "Alias size: small, base, large, ...")
    name: str | None = option(None, "Name in the cache (default: the alias, with -SIZE when given).")
    resolution: int | None = option(None, "Input resolution (default: the model's).", checks=(at_least(1),))
    weights: str | None = option(None, "Weights: a .safetensors/.pth file (must fit the encoder exactly), 'random' or "
                                       "'random:SEED', or the hub when omitted.")
    model_args: dict = option(help="KEY=VALUE passed to timm.create_model, e.g. depth=2 (repeatable).", factory=dict,
                              flag="--model-arg", parse=key_values)
    # the view plan: what is not given is the cache's when it exists (a second teacher needs none of them again)
    views: int | None = option(None, "Augmented views per sample (view 0 is the eval view; default: the cache's, or "
                                     f"{ViewPlan.views} for a new cache). More than a made cache's adds the views "
                                     "K1..K-1 to this teacher, exactly those a K-view cache holds.", checks=(at_least(1),))
    seed: int | None = option(None, f"View-plan seed (default: the cache's, or {ViewPlan.seed}).")
    crop_scale: tuple[float, float] | None = option(None, "Area range of the random resized crops (views 1..K-1), e.g. "
                                                          "0.35 1 for small images (default: the cache's, or UNIC's "
                                                          f"{' '.join(f'{v:g}' for v in ViewPolicy.scale)}).")
    patch: bool = option(True, "Store patch tokens as well as the summary.")
    codec: str = option("f16", f"Feature codec, [pool-F+][pca-K|pca-0.FF+]VALUES with VALUES one of {value_kinds()} "
                               f"(e.g. {EXAMPLES}); pool applies to patch tokens only.", checks=(codec_problem,))
    patch_codec: str | None = option(None, "Codec of the patch tokens when it differs from --codec (e.g. keep the "
                                           "summary f16 and store patch tokens as pca-0.9+int8).", checks=(codec_problem,))
    calibration: int = option(256, "Sample-views run in float32 before extraction to fit the codec (PCA basis, int8c "
                                   "ranges) and measure its fidelity.", checks=(at_least(1),))
    force: bool = option(False, "Extract even when the estimated bytes exceed the free space of a local cache.")
    batch_size: int = option(64, "Images (sample-views) per teacher forward.", checks=(at_least(1),))
    workers: int | None = option(None, "DataLoader worker processes for decode + replay (default: 0 on CPU, "
                                       "min(8, cores-1) on GPU).", checks=(at_least(0),))
    shard_mb: float = option(256.0, "Uncompressed size of one zarr shard (one file per feature array), in MiB; a "
                                   "unit of work is one or more whole shards (--unit-rows).",
                             checks=(lambda v: None if v > 0 else f"must be > 0, got {v}",))
    unit_rows: int | None = option(None, "Rows per unit of work (claimed, flagged done and given statistics as a whole; "
                                   "default: whole shards of --shard-mb, enough that their statistics stay under 1/200 "
                                   "of their features); its shards hold at most this many rows.", checks=(at_least(1),))
    rank: int | None = option(None, "This process's rank (default: $RANK or 0).", checks=(at_least(0),))
    world_size: int | None = option(None, "Number of processes (default: $WORLD_SIZE or 1).", checks=(at_least(1),))
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...")
    compile: bool = option(False, "Compile the teacher with torch.compile (GPU: faster once warm; the first "
                                  "batches wait for the compiler).")
    channels_last: bool = option(False, "Run the teacher on channels-last images (helps convolutional "
                                        "teachers on GPU; little for a ViT).")
    progress: bool = option(True, "Show progress bars.")
    storage_options: dict = storage_option()

    def __post_init__(self) -> None:
        if self.teacher is not None:
            self.teacher, self.size = split_alias(self.teacher, self.size)  # ALIAS:SIZE, as plan takes it

    def check_together(self) -> None:
        if self.teacher is None:
            return  # every teacher of the cache (``for_teachers``); checked there
        if not self.teacher.startswith(MODEL_PREFIXES):
            alias_model(self.teacher, self.size)  # a typo is named here, before torch is loaded
        problem = weights_problem(self.weights) or release_problem(self.teacher, self.weights)
        if problem:  # so is a missing weight file, or one a family not on the hub needs
            raise UserError(problem)
        low, high = self.crop_scale or ViewPolicy.scale
        if not 0 < low <= high <= 1:
            raise UserError(f"--crop-scale takes MIN MAX with 0 < MIN <= MAX <= 1, got {low} {high}")
        name = self.default_name()
        if not name or any(c in name for c in "/."):
            raise UserError(f"teacher name {name!r} must be non-empty and contain no '/' or '.' (pass --name)")
        if self.patch_codec and not self.patch:
            raise UserError("--patch-codec needs patch tokens; drop --no-patch or --patch-codec")
        if self.rank is not None and self.world_size is not None and self.rank >= self.world_size:
            raise UserError(f"--rank must be in [0, --world-size); got rank {self.rank} of {self.world_size}")

    def view_plan(self, cache_plan: ViewPlan | None) -> ViewPlan:
        """The view plan: --views, --seed and --crop-scale where given, else the cache's (``cache_plan``), else the
        defaults of a new cache."""
        base = cache_plan or ViewPlan()
        policy = base.policy if self.crop_scale is None else replace(base.policy, scale=tuple(self.crop_scale))
        return ViewPlan(views=base.views if self.views is None else self.views,
                          seed=base.seed if self.seed is None else self.seed, policy=policy)

    def complete_in(self, cache: "Cache | None") -> "TeacherStore | None":
        """The teacher these options would extract, when it is already complete in ``cache`` (opened, checked to be
        this dataset's; None: no cache yet) with the same model, weights, resolution, arguments, codecs and plan
        (judged from the records, torch-free); else None (extract then builds the teacher and compares in full,
        refusing other settings in one line)."""
        from ..cache.codecs import kind_codecs
        from ..cache.layout import codec_record
        from ..models.registry import default_resolution, family_model_args, file_sha256

        named = self.teacher.startswith(MODEL_PREFIXES)
        if cache is None or (named and self.resolution is None):
            return None  # a named model's own resolution is only known once it is built
        name = self.default_name()
        if name not in cache.teacher_names() or cache.unfinished(name):
            return None
        store = cache.teacher(name)
        model_id = self.teacher.removeprefix("timm:") if named else alias_model(self.teacher, self.size)
        file = self.weights and not self.weights.startswith("random")  # compared by its bytes, not its path
        want = {"model_id": model_id, **({} if file else {"weights": self.weights or "hub"}),
                "resolution": default_resolution(self.teacher, self.resolution),
                "model_args": family_model_args(self.teacher, self.model_args),
                **codec_record(kind_codecs(self.codec, self.patch_codec, self.patch))}
        plan = self.view_plan(cache.plan)
        if (not store.complete or differences({k: store.attrs.get(k) for k in want}, want)
                or differences({**cache.attrs["plan"], "views": plan.views}, plan.to_dict())
                or not cache.views <= plan.views <= store.views or not store.done().all()):
            return None
        # the file read last, and only when all else holds
        return store if not file or file_sha256(self.weights) == store.attrs.get("weights_sha256") else None

    def recorded(self, store: "TeacherStore") -> "ExtractOptions":
        """These options for teacher ``store`` of a made cache as it was extracted (model, weights, resolution, model
        arguments, codecs, name); the view plan and how to run stay these options'."""
        info, codecs = store.info, store.codec_specs()
        summary, patch = codecs["summary"].spec, codecs["patch"].spec if "patch" in codecs else None
        return replace(self, teacher=model_spec(info.model_id), size=None, name=store.name, resolution=info.resolution,
                       weights=None if info.weights == "hub" else info.weights, model_args=dict(info.model_args),
                       codec=summary, patch_codec=patch if patch != summary else None, patch=patch is not None)

    def for_teachers(self, cache: "Cache | None") -> list["ExtractOptions"]:
        """What one extract command extracts: these options, or on a made cache every teacher's recorded options (no
        --teacher), or one teacher's (--teacher naming one of the cache's teachers, and no model option given)."""
        names = [n for n in cache.teacher_names() if not cache.unfinished(n)] if cache is not None else []
        model_options = ("size", "name", "resolution", "weights", "model_args", "patch", "codec", "patch_codec")
        bare = all(getattr(self, f) == self.__dataclass_fields__[f].default or f == "model_args" and not self.model_args
                   for f in model_options)
        if self.teacher is None:
            if not names:
                raise UserError("extract needs --teacher (an alias from `unic-cache teachers`, or timm:<model name>); "
                                "without it, it grows the teachers of a made --cache, and there are none here")
            return [self.recorded(cache.teacher(n)) for n in names]
        if self.teacher in names and bare:
            return [self.recorded(cache.teacher(self.teacher))]
        return [self]

    def default_name(self) -> str:
        """The teacher's name in the cache: --name, or the alias (with -SIZE), or the timm name."""
        if self.name:
            return self.name
        if self.teacher.startswith(("local-dir:", "hf-hub:")):  # the folder's (a run's, for its model/) or repo's name
            path = PurePosixPath(self.teacher.partition(":")[2].rstrip("/"))
            return (path.parent.name if path.name == "model" and path.parent.name else path.name).replace(".", "-")
        base = self.teacher[5:].split(".")[0] if self.teacher.startswith("timm:") else self.teacher
        return f"{base}-{self.size}" if self.size else base


@dataclass
class Prepared:
    """What extract checks before any model is loaded, done once per command: the dataset, the cache there (opened,
    this dataset's; None: none yet) and the teacher when it is already complete there (None: work to do)."""

    source: "Source"
    existing: "Cache | None"
    finished: "TeacherStore | None"


def prepare(data: str, cache_url: str, opts: ExtractOptions) -> list[tuple[ExtractOptions, Prepared]]:
    """Check the options, open the dataset and check the cache target, once; then for each teacher the command extracts
    (``ExtractOptions.for_teachers``) whether it is already complete, clearing the claims a killed run of it left
    (torch-free: ``unic-cache extract`` says "nothing to do" without loading torch)."""
    from ..cache.claims import clear_stale
    from ..cache.sources import open_source
    from ..cache.store import check_cache_target

    try:
        opts.check()
        unknown = None
    except UnknownTeacher as exc:  # no alias: the name of a teacher of the cache?
        unknown = exc
    source = open_source(data)
    existing = check_cache_target(cache_url, source, mode="a")
    if unknown is not None and (existing is None or opts.teacher not in existing.teacher_names()):
        raise unknown
    out = []
    for one in opts.for_teachers(existing):
        one.check_together()
        out.append((one, Prepared(source, existing, one.complete_in(existing))))
    if any(prepared.finished is not None for _, prepared in out):
        clear_stale(cache_url)  # once for the command, not once per teacher found complete
    return out
