"""A distill run folder (``--out``): what it holds, whether a command may continue it, and the student it exports.

A run folder holds ``config.json`` (the run's resolved options, the tool's version, when it was started),
``metrics.jsonl``, ``checkpoints/step-N/`` (the last few), ``model/`` (the student encoder as a model folder
that timm and the Hugging Face Hub load as they are: ``config.json``, ``model.safetensors``, ``README.md``,
a model card), ``heads.safetensors`` (projectors and target norms), ``tb/`` and a pipeline's ``eval.json``.
Runs of 0.1 exported ``student.safetensors`` instead of ``model/``; they still load (``load_student``).

Re-running the command of a run continues it from its last checkpoint; a run folder made with other
options (``recipe_differences``) is refused in one line; a finished run is never trained again in place.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import UserError
from .options import recorded_config

RUN_FILES = {"config.json", "metrics.jsonl", "metrics.jsonl.tmp", "checkpoints", "model", "model.tmp",
             "student.safetensors", "heads.safetensors", "tb", "eval.json"}  # all a run folder holds
# never compared: options that change how a run executes, not what it computes; paths, which may move (the
# cache is compared by its fingerprint); the kinds (compared as the resolved targets); the record's own facts
RUNTIME_OPTIONS = {"data", "cache", "out", "progress", "resume", "workers", "log_every", "device", "storage_options",
                   "checkpoint_every", "keep_checkpoints", "compile", "fused_adamw", "channels_last", "kinds",
                   "version", "started"}


def check_run_folder(out: Path) -> None:
    """Refuse an ``--out`` that holds anything but a run of ours: distill never overwrites a user's file."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the run")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES) if out.is_dir() else []
    if foreign:
        raise UserError(f"--out {out} holds other files ({', '.join(foreign[:3])}); distill writes only into a new "
                        "folder or a run folder of its own: choose another --out")


def recorded(out: Path) -> dict | None:
    """The config a run folder records (the options it predates filled in as they were), or None."""
    path = Path(out) / "config.json"
    return recorded_config(json.loads(path.read_text())) if path.is_file() else None


def recipe_differences(have: dict, want: dict) -> list[str]:
    """``key: recorded vs now`` for every option that changes what a run computes and differs (options one
    of the two does not record are not compared)."""
    return [f"{k}: {have[k]} vs {want[k]}" for k in want
            if k not in RUNTIME_OPTIONS and k in have and json.loads(json.dumps(have[k])) != json.loads(json.dumps(want[k]))]


def checkpoints(out: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first (a ``.tmp`` one was cut short and does not count)."""
    folder = Path(out) / "checkpoints"
    return sorted(folder.glob("step-????????")) if folder.is_dir() else []


def prune_checkpoints(out: Path, keep: int) -> None:
    """Keep the last ``keep`` checkpoints (and nothing a crash left half-written)."""
    for old in checkpoints(out)[:-keep]:
        shutil.rmtree(old)


def student_weights(run: str | Path) -> Path:
    """The exported encoder's weights of a distill run: ``model/model.safetensors`` (0.1: ``student.safetensors``)."""
    run = Path(run)
    return run / "student.safetensors" if (run / "student.safetensors").is_file() else run / "model" / "model.safetensors"


def is_finished(run: str | Path) -> bool:
    """Whether a distill run exported its student (the last thing it does)."""
    return student_weights(run).is_file() and (Path(run) / "config.json").is_file()


def load_student(run: str | Path) -> tuple:
    """(encoder, input resolution) of a finished distill run: its ``model/`` folder through timm's ``local-dir:``,
    exactly as a user loads it (0.1 runs: ``student.safetensors`` with the run's config)."""
    import timm
    from safetensors.torch import load_file

    run = Path(run)
    if not is_finished(run):
        raise UserError(f"{run} is not a finished distill run (no model/ folder); finish it by running its distill "
                        "command again")
    config = json.loads((run / "config.json").read_text())
    if (run / "model").is_dir():
        encoder = timm.create_model(f"local-dir:{(run / 'model').resolve()}", pretrained=True)
    else:
        encoder = timm.create_model(config["student"], pretrained=False, num_classes=0, img_size=config["img_size"],
                                    **config.get("model_args", {}))
        encoder.load_state_dict(load_file(str(run / "student.safetensors")))
    return encoder.eval(), int(config["img_size"])


def export_model(encoder, folder: Path, img_size: int, model_args: dict, crop_pct: float, card: str) -> None:
    """Write ``folder`` (``RUN/model``) as a timm / Hugging Face model folder, atomically: ``config.json``
    (architecture, its creation arguments, ``pretrained_cfg`` with mean/std, input size and the eval
    crop), ``model.safetensors`` and the model card ``README.md``."""
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp / "model.safetensors"))
    save_config_for_hf(encoder, str(tmp / "config.json"), model_args={"img_size": img_size, "num_classes": 0, **model_args})
    config = json.loads((tmp / "config.json").read_text())
    for key in ("license", "hf_hub_id", "url"):  # the architecture's default weights' facts, not this student's
        config["pretrained_cfg"].pop(key, None)
    config["pretrained_cfg"].update(tag="unic-cache", input_size=[3, img_size, img_size], crop_pct=crop_pct)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / "README.md").write_text(card)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def model_card(config: dict, teachers: dict[str, dict], dataset: dict, crop_pct: float, scores: str | None = None) -> str:
    """The student's model card (``model/README.md``): how it was made (teachers and their weights digests,
    the dataset's fingerprint, the recipe) and, when an evaluation produced one, its scores."""
    rows = "\n".join(f"| {name} | `{t.get('model_id')}` | {t.get('resolution')} | {t.get('weights')} | "
                     f"`{t.get('weights_sha256', '')[:16]}` |" for name, t in teachers.items())
    recipe = {k: v for k, v in config.items() if k not in RUNTIME_OPTIONS - {"version", "started"}}
    return f"""---
library_name: timm
tags: [image-feature-extraction, timm, unic-cache, distillation]
---
# {config['student']}, distilled from {len(teachers)} teacher(s) by unic-cache

A `{config['student']}` encoder ({config['img_size']} px) trained by multi-teacher distillation (UNIC's recipe:
a ladder of projectors, teacher dropping) from teacher features cached by unic-cache {config.get('version', '')}
(run started {config.get('started', '?')}). Load it with timm:

```python
import timm
model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True)  # or "hf-hub:USER/REPO" once uploaded
```

It returns the pooled embedding (the CLS token after the final norm{', which distillation did not train: its affine is the identity, as in UNIC' if config.get('lop_head') == 'unic' else ''}).
Inputs are normalised with the mean/std in `config.json`; the eval view is a centre crop of {crop_pct}.

## Teachers

| name | timm id | resolution | weights | sha256 |
|---|---|---|---|---|
{rows}

## Data

{dataset.get('samples')} samples of `{dataset.get('source')}` (fingerprint `{str(dataset.get('fingerprint'))[:16]}`),
{dataset.get('views')} cached views per sample.

## Recipe

```json
{json.dumps(recipe, indent=1)}
```
{f'''
## Evaluation

{scores}
''' if scores else ''}"""


def add_scores_to_card(run: str | Path, scores: str) -> None:
    """Put an evaluation's table into a run's model card (replacing an earlier one)."""
    card = Path(run) / "model" / "README.md"
    if card.is_file():
        text = card.read_text().split("\n## Evaluation\n")[0].rstrip()
        card.write_text(f"{text}\n\n## Evaluation\n\n{scores.strip()}\n")
