"""Options of ``unic-cache eval`` and ``unic-cache train-teacher`` (torch-free: checked before any model
or image is loaded)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..distillation.exported import unfinished_reason
from ..errors import UserError
from ..options import Options, at_least, comma_list, existing_path, key_values, option, storage_option

positive = at_least(1)


def students(items: list[str]) -> dict[str, str]:
    """``--student FOLDER`` or ``--student NAME=FOLDER`` (repeatable) -> {name: folder}."""
    out = {}
    for item in items:
        name, sep, folder = item.partition("=")
        out[name if sep else Path(item).name] = folder if sep else item
    return out


def teacher_list(items: list[str]) -> list[str]:
    """Comma-separated teachers; ``none`` for none."""
    return [] if items == ["none"] else comma_list(items)


def _finished_runs(runs: dict[str, str]) -> str | None:
    for name, folder in runs.items():
        if unfinished_reason(Path(folder)):
            return f"{name}={unfinished_reason(Path(folder))}"
    return None


def _trained_here(out: Path) -> bool:
    """Whether ``out`` is a teacher file train-teacher wrote (its record, with the recipe, lies beside it)."""
    import json

    try:
        return out.is_file() and "config" in json.loads(out.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return False


@dataclass
class EvalOptions(Options):
    """Options of ``unic-cache eval``; the CLI, --config YAML and --set are made from these fields."""

    command = "eval"

    data: str = option(help="The labelled dataset the cache was made from: labels from each sample's .json "
                            "(task -> value) or .cls member, an image folder's class folders, or a parquet shard's "
                            "integer columns (a ClassLabel's names give its classes).", positional=True,
                       checks=(existing_path,))
    cache: str = option(help="Cache path or URL: teacher features come from its view 0.")
    students: dict[str, str] = option(help="A distill run folder, or NAME=FOLDER (repeatable).", factory=dict,
                                      flag="--student", parse=students, checks=(_finished_runs,))
    teachers: list[str] | None = option(None, "Comma-separated cached teachers (default: all; 'none' for none).",
                                        parse=teacher_list)
    tasks: list[str] | None = option(None, "Comma-separated tasks (default: all of the dataset's).", parse=comma_list)
    k: int = option(20, "Neighbours of the kNN probe.", checks=(positive,))
    temperature: float = option(0.07, "Temperature of the kNN vote.", checks=(lambda v: None if v > 0 else "must be > 0",))
    batch_size: int = option(128, "Images per student forward.", checks=(positive,))
    workers: int = option(0, "DataLoader workers for decoding.", checks=(at_least(0),))
    device: str = option("auto", "auto, cpu, cuda.")
    progress: bool = option(True, "Show progress bars.")
    storage_options: dict = storage_option()


@dataclass
class TeacherTrainOptions(Options):
    """Options of ``unic-cache train-teacher``; the CLI, --config YAML and --set are made from these fields."""

    command = "train-teacher"

    data: str = option(help="A labelled dataset (e.g. a shapes world from make-shapes).", positional=True,
                       checks=(existing_path,))
    out: str = option(help="The .safetensors file to write (a .json beside it records the recipe).",
                      checks=(lambda v: None if v.endswith(".safetensors") else f"must be a .safetensors file, got {v}",))
    tasks: list[str] = option(help="A task to train on (repeatable), e.g. --task shape --task texture.", factory=list,
                              flag="--task", parse=comma_list)
    arch: str = option("vit_tiny_patch16_224", "timm ViT architecture.")
    img_size: int = option(32, "Input resolution.", checks=(positive,))
    model_args: dict = option(help="KEY=VALUE for timm.create_model, e.g. depth=4 (repeatable).", factory=dict,
                              flag="--model-arg", parse=key_values)
    epochs: int = option(10, "Training epochs.", checks=(positive,))
    batch_size: int = option(64, "Images per step.", checks=(positive,))
    lr: float = option(1e-3, "AdamW peak learning rate.", checks=(lambda v: None if v > 0 else "must be > 0",))
    weight_decay: float = option(0.05, "AdamW weight decay.", checks=(at_least(0),))
    seed: int = option(0, "Initialisation and order seed.")
    workers: int = option(0, "DataLoader workers for decoding.", checks=(at_least(0),))
    device: str = option("auto", "auto, cpu, cuda.")
    progress: bool = option(True, "Show progress bars.")
    storage_options: dict = storage_option()

    def check_together(self) -> None:
        if not self.tasks:
            raise UserError("train-teacher needs at least one --task")
        out = Path(self.out)
        if out.exists() and not _trained_here(out):  # a file train-teacher did not write is never overwritten
            raise UserError(f"--out {out} exists and is not a teacher this tool trained (no {out.with_suffix('.json').name} "
                            "record of ours beside it); choose another --out")
