"""Train a small specialised teacher: a timm ViT supervised on a chosen subset of a dataset's tasks.

Teachers trained on disjoint task subsets of the shapes world have complementary strengths (one knows
shapes and textures, another colours and counts), as DINO and DeiT-III do in UNIC. It trains on the
dataset's train rows and scores on its val rows (``labels.read_split``: the split eval uses, so its test
rows are never seen), images are the eval view (centre crop), and the saved encoder loads with ``extract --teacher timm:<arch> --weights FILE``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..cache.sources import open_source
from ..distillation.run_files import save_tensors
from ..errors import UserError
from ..models.device_pixels import PixelNorm
from ..models.student import pooled
from ..runtime import pick_device, share_cores
from .images import EvalViews
from .labels import Labels, read_labels, read_split
from .options import TeacherTrainOptions
from .probes import r2_score


class _Heads(nn.Module):
    """One linear head per task on the encoder's pooled embedding."""

    def __init__(self, dim: int, labels: Labels, tasks: list[str]):
        super().__init__()
        self.heads = nn.ModuleDict({t: nn.Linear(dim, max(1, labels.task(t).classes)) for t in tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t: head(x) for t, head in self.heads.items()}


def _task_loss(pred: torch.Tensor, target: torch.Tensor, classification: bool) -> torch.Tensor:
    known = target >= 0 if classification else ~torch.isnan(target)
    if not known.any():
        return pred.sum() * 0
    if classification:
        return nn.functional.cross_entropy(pred[known], target[known])
    return nn.functional.mse_loss(pred[known, 0], target[known])


def _score(pred: torch.Tensor, target: torch.Tensor, classification: bool) -> float:
    """Accuracy (%) or R² (x100) on rows that carry a label."""
    known = target >= 0 if classification else ~torch.isnan(target)
    pred, target = pred[known], target[known]
    if classification:
        return float((pred.argmax(1) == target).float().mean() * 100)
    return r2_score(pred[:, 0], target)


def train_teacher(cfg: TeacherTrainOptions) -> dict:
    """Train, write ``cfg.out`` (encoder safetensors) and ``<out>.json`` (how it was made); return that record."""
    import timm
    from tqdm import tqdm

    cfg.check()
    source = open_source(cfg.data)
    index = source.index(progress=cfg.progress)
    labels = read_labels(source, index.keys)
    for t in cfg.tasks:  # unknown task names fail here, before any training
        if labels.task(t).dense:
            raise UserError(f"train-teacher trains on image-level tasks; {t!r} is a dense (per-pixel) task")
    rule = read_split(source)
    split = rule.rows(index.keys)
    good = np.ones(index.n, bool)
    good[list(index.bad)] = False
    train_rows, val_rows = np.flatnonzero(good & (split == 0)), np.flatnonzero(good & (split == 1))
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise UserError(f"{index.n} samples are too few to train a teacher (need train and val rows)")
    torch.manual_seed(cfg.seed)
    try:
        encoder = timm.create_model(cfg.arch, pretrained=False, num_classes=0, img_size=cfg.img_size, **cfg.model_args)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"cannot build {cfg.arch!r} with {cfg.model_args}: {exc}") from None
    device = pick_device(cfg.device)
    share_cores(device)
    pixels = PixelNorm.of(encoder).to(device)

    def images_of(rows: np.ndarray, desc: str) -> torch.Tensor:
        views = EvalViews(cfg.data, index.keys, index.location, index.image_size, rows, cfg.img_size, digest=index.digest)
        return torch.cat(list(views.batches(256, cfg.workers, desc, cfg.progress)))

    x_train, x_val = images_of(train_rows, "load train"), images_of(val_rows, "load val")
    classification = {t: labels.task(t).is_classification for t in cfg.tasks}
    scale = {}
    for t in cfg.tasks:  # regression targets are standardised with train statistics
        v = labels.values[t][train_rows]
        scale[t] = (0.0, 1.0) if classification[t] else (float(np.nanmean(v)), float(np.nanstd(v)) or 1.0)

    def targets(rows: np.ndarray) -> dict[str, torch.Tensor]:
        return {t: torch.from_numpy(labels.values[t][rows]) if classification[t]
                else torch.from_numpy((labels.values[t][rows] - scale[t][0]) / scale[t][1]).float() for t in cfg.tasks}

    y_train, y_val = targets(train_rows), targets(val_rows)
    heads = _Heads(encoder.num_features, labels, cfg.tasks)
    model = nn.ModuleDict({"encoder": encoder, "heads": heads}).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps_per_epoch))
                                              * 0.5 * (1 + math.cos(math.pi * s / total)))

    def forward(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return heads(pooled(encoder, pixels(images.to(device))))

    gen = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(total=total, desc=f"train-teacher {Path(cfg.out).stem}", unit="step", disable=not cfg.progress)
    for _ in range(cfg.epochs):
        model.train()
        for idx in torch.randperm(len(train_rows), generator=gen).split(cfg.batch_size):
            preds = forward(x_train[idx])
            loss = sum(_task_loss(preds[t], y_train[t][idx].to(device), classification[t]) for t in cfg.tasks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    with torch.inference_mode():
        preds = [forward(chunk) for chunk in x_val.split(256)]
        val = {t: _score(torch.cat([p[t] for p in preds]).cpu(), y_val[t], classification[t]) for t in cfg.tasks}
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_tensors({k: v.cpu() for k, v in encoder.state_dict().items()}, out,
                 metadata={"arch": cfg.arch, "img_size": str(cfg.img_size), "model_args": json.dumps(cfg.model_args),
                           "tasks": ",".join(cfg.tasks)})
    record = {"config": asdict(cfg), "split": rule.to_dict(), "val_score": val, "train_rows": int(len(train_rows)), "val_rows": int(len(val_rows)),
              "extract": extract_command(cfg)}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    return record


def extract_command(cfg: TeacherTrainOptions) -> str:
    """The ``unic-cache extract`` arguments that load this teacher."""
    args = "".join(f" --model-arg {k}={json.dumps(v)}" for k, v in cfg.model_args.items())
    return (f"unic-cache extract {cfg.data} --cache CACHE --teacher timm:{cfg.arch} --weights {cfg.out} "
            f"--resolution {cfg.img_size} --name {Path(cfg.out).stem}{args}")
