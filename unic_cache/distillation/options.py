"""Every option of ``unic-cache distill`` (torch-free: checked before anything heavy is loaded)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..options import Options, at_least, comma_list, existing_path, in_range, key_values, one_of, option, storage_option

LOSSES = ("unic", "gauss")
NORMS = ("standard", "phis", "none")
KINDS = ("summary", "patch")
DROP_NORMS = ("batch", "sample")  # teacher-dropping normalisation: UNIC's (per batch), or per sample
LOP_HEADS = ("unic", "prenorm")  # the heads of models.student
NORM_STATS = ("exact", "running")
positive = at_least(1)
# Options added in 0.2 (UNIC's student and optimizer defaults), with the values every run before them had:
# a run folder or checkpoint whose recorded config lacks one of them was made with this value.
BEFORE_0_2 = {"lop_head": "prenorm", "lop_hidden": "student", "clip_grad": 3.0, "decay_tokens": False,
              "norm_stats": "exact"}


def recorded_config(record: dict) -> dict:
    """A run's recorded config (``config.json``, a checkpoint's resume record) with the options it predates
    filled in as they were then (``BEFORE_0_2``), so that an old run compares equal to the same run today."""
    return {**{k: v for k, v in BEFORE_0_2.items() if k not in record}, **record}


def _positive_float(v: float) -> str | None:
    return None if v > 0 else f"must be > 0, got {v}"


@dataclass
class DistillOptions(Options):
    """Every option of ``unic-cache distill``; the CLI, --config YAML and --set are made from these fields."""

    command = "distill"

    data: str = option("", "The dataset the cache was made from (same spec as for extract).", positional=True)
    cache: str = option("", "Cache path or URL.")
    out: str = option("runs/student", "Run folder: config.json, metrics.jsonl, checkpoints/, model/ (the student as a "
                                      "timm / Hugging Face model folder), heads.safetensors. The same command continues "
                                      "a run there; a run with other options is refused.")
    teachers: list[str] = option(help="Comma-separated subset of the cached teachers (default: all).", factory=list,
                                 parse=comma_list)
    kinds: list[str] = option(help="Comma-separated token kinds to distil: summary, patch (default: every kind "
                                   "cached; 'summary' trains no patch head, an ablation).", factory=list, parse=comma_list,
                              checks=(lambda v: None if set(v) <= set(KINDS) else f"kinds are {', '.join(KINDS)}; got {v}",))
    student: str = option("vit_small_patch16_224", "timm ViT name, e.g. vit_small_patch16_224.")
    img_size: int = option(224, "Student input resolution.", checks=(positive,))
    model_args: dict = option(help="KEY=VALUE for timm.create_model of the student (repeatable).", factory=dict,
                              flag="--model-arg", parse=key_values)
    init: str | None = option(None, "Initial encoder weights (.safetensors).", checks=(existing_path,))
    lop_blocks: str = option("all", "Blocks feeding the projector ladder: all, last or i,j,k (the last block is "
                                    "always included).")
    lop_head: str = option("unic", "Projector MLPs of the ladder: unic (UNIC's code: Linear-GELU-Linear, no norm, "
                                   "trunc-normal 0.02 init, raw block outputs; the encoder's final norm is not trained) "
                                   "or prenorm (a LayerNorm first, the last block read after the final norm, PyTorch's "
                                   "default init: this tool's head before 0.2).", checks=(one_of(*LOP_HEADS),))
    lop_hidden: str = option("768", "Hidden width of the projectors: 768 (UNIC: 768, the last block's 3072, for any "
                                    "student), student (the student's width, the last block's 4x; equal for ViT-B) "
                                    "or a width N (N, last 4N).",
                             checks=(lambda v: None if v == "student" or v.isdigit() and int(v) > 0
                                     else f"takes 768, student or a positive width; got {v!r}",))
    loss: str = option("unic", "unic (0.5 cos + 0.5 smooth-L1) or gauss (Gaussian NLL).", checks=(one_of(*LOSSES),))
    norm: str = option("standard", "Target standardisation: standard, phis or none.", checks=(one_of(*NORMS),))
    norm_stats: str = option("exact", "Statistics of --norm standard: exact (the cache's population statistics; "
                                      "an improvement a cache makes possible) or running (UNIC's rule: running "
                                      "mean/std per dimension, momentum 1.0 -> 0.001 on a cosine, each batch "
                                      "standardised with the statistics before it, gathered across processes).",
                             checks=(one_of(*NORM_STATS),))
    teacher_drop: float = option(0.5, "Probability of dropping each non-max-loss teacher.", checks=(in_range(0, 1),))
    drop_norm: str = option("batch", "How kept teachers are weighed: batch (UNIC: coefficient 1, divided by the pairs "
                                     "kept in the batch; per-teacher loss = mean over token kinds) or sample (weights "
                                     "normalised per sample; sum over token kinds).", checks=(one_of(*DROP_NORMS),))
    views: int | None = option(None, "Use only the first N cached views of each sample (default: all).",
                               checks=(positive,))
    flip_p: float = option(0.0, "Stage-2 flip: each sample's student view mirrored left-right with this probability "
                                "(summary target kept, patch targets left out). 0 in UNIC; measured as a remedy for "
                                "views replayed many times, it failed (RESULTS.md, the reuse curve).",
                           checks=(in_range(0, 1),))
    mix_p: float = option(0.0, "Stage-2 MixUp: each sample's student view and cached targets mixed with the next "
                               "sample's with this probability. 0 in UNIC; measured as a remedy for views replayed "
                               "many times, it failed in both worlds (RESULTS.md, the reuse curve).",
                          checks=(in_range(0, 1),))
    online: bool = option(False, "Reference mode: run the teachers on fresh views every step instead of reading "
                                 "the cache (slow; never the default).", flag="--online/--cached")
    epochs: float | None = option(None, "Training length in epochs (or --steps).", checks=(_positive_float,))
    steps: int | None = option(None, "Training length in optimizer steps (or --epochs).", checks=(positive,))
    batch_size: int = option(64, "Samples per step per process.", checks=(positive,))
    lr: float = option(3e-4, "Peak learning rate for a global batch of 256 (scaled linearly).", checks=(_positive_float,))
    min_lr: float = option(1e-6, "Final learning rate of the cosine schedule.", checks=(at_least(0),))
    weight_decay: float = option(0.03, "AdamW weight decay (not on biases and other 1-D parameters).",
                                 checks=(at_least(0),))
    decay_tokens: bool = option(True, "Weight decay on the position embedding and the CLS/register tokens too (UNIC: "
                                      "every parameter but biases and 1-D ones); --no-decay-tokens exempts them "
                                      "(this tool's rule before 0.2).")
    betas: tuple[float, float] = option((0.9, 0.99), "AdamW betas.")
    warmup: float = option(0.05, "Warm-up as a fraction of all steps (UNIC: 10 of 200 epochs).",
                           checks=(in_range(0, 1, high_open=True),))
    drop_path: float = option(0.1, "Stochastic depth rate of the student.", checks=(in_range(0, 1, high_open=True),))
    clip_grad: float = option(0.0, "Clip the gradients' global norm to this value; 0: no clipping (UNIC's default; "
                                   "this tool clipped at 3 before 0.2).", checks=(at_least(0),))
    workers: int = option(2, "DataLoader workers per process (the batches are the same for any number).",
                          checks=(at_least(0),))
    seed: int = option(0, "Seed of the student init, data order and teacher dropping.")
    checkpoint_every: int | None = option(None, "Checkpoint every N steps (default: every 5% of the run, at most "
                                                "1,000 steps apart); also on Ctrl-C or SIGTERM, and at the end.",
                                          checks=(positive,))
    keep_checkpoints: int = option(2, "Checkpoints kept (the newest ones): the one before the last is there if the last "
                                      "is damaged or removed; distill says how big each is when it starts (1 halves "
                                      "the disk: the older one goes only once the new one is complete).",
                                   checks=(positive,))
    log_every: int = option(20, "Bring the metrics to the host every N steps (one wait for the device per N steps; "
                                "metrics.jsonl still gets a line per step).", checks=(positive,))
    compile: bool = option(False, "Compile the student with torch.compile (GPU: faster once warm; the first steps "
                                  "wait for the compiler).")
    fused_adamw: bool = option(False, "Use the fused AdamW kernel (one kernel for all parameters).")
    channels_last: bool = option(False, "Feed channels-last images (helps convolutional layers on GPU; a ViT has "
                                        "one, its patch embedding).")
    resume: bool = option(False, "Insist on continuing from a checkpoint in --out (re-running a run's command "
                                 "continues it anyway; with --resume, a run folder without a checkpoint is an error).")
    device: str = option("auto", "auto, cpu, cuda.")
    progress: bool = option(True, "Show a progress bar.")
    storage_options: dict = storage_option()

    def check_together(self) -> None:
        if not self.data or not self.cache:
            raise UserError("distill needs DATA and --cache (as arguments or in --config)")
        if (self.epochs is None) == (self.steps is None):
            raise UserError("give exactly one of --epochs or --steps")
        if not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"--betas must be in [0, 1), got {self.betas}")
        if self.flip_p and self.mix_p:
            raise UserError("--flip-p and --mix-p cannot be combined (a flipped sample has no patch target to mix); "
                            "give one of them")
        if self.norm_stats == "running" and self.norm != "standard":
            raise UserError(f"--norm-stats running applies to --norm standard (UNIC's rule), not --norm {self.norm}")
        from ..cache.store import Cache  # here: --help and value errors need no zarr

        from ..cache.sources import open_source

        cache = Cache.open(self.cache)
        cache.check_source(open_source(self.data))
        if not cache.teacher_names():
            raise UserError(f"cache {self.cache} holds no teacher yet (an extract stopped before its first unit?); "
                            f"extract one first: unic-cache extract DATA --cache {self.cache} --teacher NAME")
        for name in self.teachers or cache.teacher_names():
            if not cache.teacher(name).complete:
                raise UserError(f"teacher {name} in {self.cache} is incomplete; finish it with unic-cache extract")
