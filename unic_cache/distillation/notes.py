"""What distill tells its user before the first step: how big and how frequent its checkpoints are, how often each
cached view will be replayed, and a warning, with its fix, where that is past what the reuse curve measured as safe.
Each note is made from plain facts about the run (``Schedule``, ``Checkpoints``), which the trainer gathers."""

from __future__ import annotations

from dataclasses import dataclass

from ..cache.views import REPLAY_EVIDENCE, REPLAY_LIMIT, views_for

UNIC_WIDTH = 768  # the projectors' hidden width in UNIC's code: a ViT-B's


@dataclass(frozen=True)
class Schedule:
    """How long a run is and what it reads: its steps of ``batch`` samples (all processes together) over ``samples``
    usable ones, the epochs asked for (None: --steps), the cached views read and the fewest a teacher holds."""

    steps: int
    batch: int
    samples: int
    epochs: float | None
    views: int
    held: int
    online: bool
    data: str
    cache: str


@dataclass(frozen=True)
class Checkpoints:
    """What a checkpoint holds (bytes of the encoder, the projector heads and the trained parameters), how often one
    is written and kept, and the student's width with the projectors' hidden width option."""

    encoder: int
    heads: int
    trained: int
    interval: int
    keep: int
    width: int
    lop_hidden: str


def checkpoint_plan(c: Checkpoints) -> str:
    """One line: how big a checkpoint is, how often one is written and how many are kept."""
    from ..cache.sizing import human

    moments = 2 * c.trained  # AdamW's two moments per trained parameter
    every = "every step" if c.interval == 1 else f"every {c.interval} steps"
    line = (f"checkpoints: {human(c.encoder + c.heads + moments)} each (encoder {human(c.encoder)}, projector heads "
            f"{human(c.heads)}, optimizer {human(moments)}), {every} (--checkpoint-every), the last "
            f"{c.keep} kept (--keep-checkpoints)")
    if c.width < UNIC_WIDTH and c.heads > c.encoder and c.lop_hidden != "student":
        line += (f"; the projector heads are {c.heads / max(c.encoder, 1):.1f}x this {c.width}-wide student: --lop-hidden "
                 f"student sizes them to its width (UNIC's 768 and 3072 are for a ViT-B)")
    return line


def run_epochs(s: Schedule) -> float:
    """The run's length in passes over the usable samples (its steps, rounded up from --epochs, times the batch)."""
    return s.steps * s.batch / max(1, s.samples)


def replays(s: Schedule) -> float:
    """How often each cached view is replayed: the schedule asked for (--epochs; not the fraction of an epoch that
    rounding its steps up adds) over the views read."""
    return (s.epochs or run_epochs(s)) / s.views


def replay_plan(s: Schedule) -> str:
    """One line: how often the run sees each cached view of a sample (Beyer et al. 2022 found students trained on
    precomputed teacher outputs overfit; UNIC's 200 epochs on 8 views see each 25 times)."""
    length = f"{run_epochs(s):.2f} epochs ({s.steps} steps of {s.batch})"
    if s.online:
        return f"views: {length}, a fresh view of every sample in each (--online: nothing is replayed)"
    return (f"views: {length} over {s.views} cached view{'s' if s.views > 1 else ''} of each sample: each "
            f"view is replayed {replays(s):.2f} times")


def replay_warning(s: Schedule) -> str | None:
    """One line when each cached view is replayed more often than the reuse curve measured as safe
    (``views.REPLAY_LIMIT``), naming the extract that adds the views the schedule needs; else None."""
    epochs, times = s.epochs or run_epochs(s), replays(s)
    if s.online or times <= REPLAY_LIMIT:
        return None
    need = views_for(epochs)
    fix = (f"`--views {need}` (the cache holds {s.held})" if s.held >= need else
           f"`unic-cache extract {s.data} --cache {s.cache} --views {need}` (it adds views to every teacher, "
           "each with its recorded options)")
    return (f"warning: each cached view will be replayed {times:.1f} times, more than the {REPLAY_LIMIT:g} at which "
            f"students distilled from a cache stayed within 2 points of online ones ({REPLAY_EVIDENCE}; RESULTS.md, the "
            f"powered reuse curve); {fix} brings it to "
            f"{epochs / need:.1f}, or use fewer --epochs")


def before_training(s: Schedule, c: Checkpoints, pixels: str | None, progress: bool) -> list[str]:
    """What distill prints before its first step: beside a progress bar, the checkpoint and replay plans and the
    pixel pipeline's note; always (even without progress bars), the replay warning."""
    warning = replay_warning(s)
    return [*([checkpoint_plan(c), replay_plan(s)] if progress else []), *([warning] if warning else []),
            *([pixels] if progress and pixels else [])]
