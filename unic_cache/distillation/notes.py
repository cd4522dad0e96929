"""What distill tells its user before the first step: how big and how frequent its checkpoints are, how often each
cached view will be replayed, and a warning, with its fix, where that is past what the reuse curve measured as safe."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..cache.views import REPLAY_LIMIT, views_for

if TYPE_CHECKING:
    from .recipe import Distiller


UNIC_WIDTH = 768  # the projectors' hidden width in UNIC's code: a ViT-B's


def checkpoint_plan(run: Distiller) -> str:
    """One line: how big a checkpoint is, how often one is written and how many are kept."""
    from ..cache.sizing import human

    def size(params) -> int:
        return sum(p.numel() * p.element_size() for p in params)

    encoder, heads = size(run.student.encoder.parameters()), size(run.student.heads.parameters())
    moments = 2 * size(run.trainable)  # AdamW's two moments per trained parameter
    every = "every step" if run.checkpoint_interval == 1 else f"every {run.checkpoint_interval} steps"
    line = (f"checkpoints: {human(encoder + heads + moments)} each (encoder {human(encoder)}, projector heads "
            f"{human(heads)}, optimizer {human(moments)}), {every} (--checkpoint-every), the last "
            f"{run.cfg.keep_checkpoints} kept (--keep-checkpoints)")
    width = getattr(run.student.encoder, "num_features", UNIC_WIDTH)
    if width < UNIC_WIDTH and heads > encoder and run.cfg.lop_hidden != "student":
        line += (f"; the projector heads are {heads / max(encoder, 1):.1f}x this {width}-wide student: --lop-hidden "
                 f"student sizes them to its width (UNIC's 768 and 3072 are for a ViT-B)")
    return line


def run_epochs(run: Distiller) -> float:
    """The run's length in passes over the usable samples (its steps, rounded up from --epochs, times the batch)."""
    return run.total * run.cfg.batch_size * run.world / max(1, int((~run.cache.bad).sum()))


def replays(run: Distiller) -> float:
    """How often each cached view is replayed: the schedule asked for (--epochs; not the fraction of an epoch that
    rounding its steps up adds) over the views read."""
    return (run.cfg.epochs or run_epochs(run)) / run.geometry["views"]


def replay_plan(run: Distiller) -> str:
    """One line: how often the run sees each cached view of a sample (Beyer et al. 2022 found students trained on
    precomputed teacher outputs overfit; UNIC's 200 epochs on 8 views see each 25 times)."""
    epochs = run_epochs(run)
    length = f"{epochs:.2f} epochs ({run.total} steps of {run.cfg.batch_size * run.world})"
    if run.online:
        return f"views: {length}, a fresh view of every sample in each (--online: nothing is replayed)"
    views = run.geometry["views"]
    return (f"views: {length} over {views} cached view{'s' if views > 1 else ''} of each sample: each "
            f"view is replayed {replays(run):.2f} times")


def replay_warning(run: Distiller) -> str | None:
    """One line when each cached view is replayed more often than the reuse curve measured as safe
    (``views.REPLAY_LIMIT``), naming the extract that adds the views the schedule needs; else None."""
    epochs, times = run.cfg.epochs or run_epochs(run), replays(run)
    if run.online or times <= REPLAY_LIMIT:
        return None
    need, held = views_for(epochs), min(run.cache.teacher(t).views for t in run.teachers)
    fix = (f"`--views {need}` (the cache holds {held})" if held >= need else
           f"`unic-cache extract {run.cfg.data} --cache {run.cfg.cache} --views {need}` (it adds views to every teacher, "
           "each with its recorded options)")
    return (f"warning: each cached view will be replayed {times:.1f} times, more than the {REPLAY_LIMIT:g} at which "
            f"students distilled from a cache matched online ones (RESULTS.md, the reuse curve); {fix} brings it to "
            f"{epochs / need:.1f}, or use fewer --epochs")
