"""The student a distill run exports, and reading it back: ``model/`` (the encoder as a timm / Hugging Face model
folder: ``config.json``, ``model.safetensors``, the model card ``README.md``), whether a run has finished, and
the encoder loaded exactly as a user loads it. Runs of 0.1 exported ``student.safetensors`` instead of
``model/``; they still load (``load_student``).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .run_files import MODEL_FILES, RUNTIME_OPTIONS, remove_ours, run_record, save_tensors, tmp_name, write_atomic


def student_weights(run: str | Path) -> Path:
    """The exported encoder's weights of a distill run: ``model/model.safetensors`` (0.1: ``student.safetensors``)."""
    run = Path(run)
    return run / "student.safetensors" if (run / "student.safetensors").is_file() else run / "model" / "model.safetensors"


def is_finished(run: str | Path) -> bool:
    """Whether a distill run exported its heads and then its student (the last thing it does)."""
    run = Path(run)
    return student_weights(run).is_file() and (run / "heads.safetensors").is_file() and (run / "config.json").is_file()


def unfinished_reason(run: Path) -> str | None:
    """Why ``run`` is not a finished distill run, saying what was given and what is expected; None if it is one."""
    run = Path(run)
    if is_finished(run):
        return None
    if not run.exists():
        return f"{run} is not a finished distill run: it does not exist; give the folder that distill --out wrote"
    if run.name == "model" and (run / "model.safetensors").is_file() and run_record(run.parent) is not None:
        return f"{run} is not a finished distill run: it is the model folder of one; give the run folder: {run.parent}"
    if run_record(run) is None:
        return (f"{run} is not a finished distill run: it has no run config.json; give the folder that distill --out "
                "wrote (config.json, heads.safetensors, model/)")
    return f"{run} is not a finished distill run: it has no model/ yet; finish it by running its distill command again"


def load_student(run: str | Path) -> tuple:
    """(encoder, input resolution) of a finished distill run: its ``model/`` folder through timm's ``local-dir:``,
    exactly as a user loads it (0.1 runs: ``student.safetensors`` with the run's config)."""
    import timm
    from safetensors.torch import load_file

    run = Path(run)
    reason = unfinished_reason(run)
    if reason:
        raise UserError(reason)
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
    from timm.models._hub import save_config_for_hf

    tmp = tmp_name(folder)
    tmp.mkdir(parents=True)
    save_tensors(encoder.state_dict(), tmp / "model.safetensors")
    save_config_for_hf(encoder, str(tmp / "config.json"), model_args={"img_size": img_size, "num_classes": 0, **model_args})
    config = json.loads((tmp / "config.json").read_text())
    for key in ("license", "hf_hub_id", "url"):  # the architecture's default weights' facts, not this student's
        config["pretrained_cfg"].pop(key, None)
    config["pretrained_cfg"].update(tag="unic-cache", input_size=[3, img_size, img_size], crop_pct=crop_pct)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / "README.md").write_text(card)
    if not remove_ours(folder, MODEL_FILES.__contains__):
        raise UserError(f"{folder} holds files distill did not write; move them out and run the same command again")
    tmp.rename(folder)


def _args(model_args: dict | None) -> str:
    """A teacher's extra timm arguments as the model card shows them (a 2-block ViT is not the named model)."""
    return f" ({', '.join(f'{k}={v}' for k, v in model_args.items())})" if model_args else ""


def model_card(config: dict, teachers: dict[str, dict], dataset: dict, crop_pct: float, scores: str | None = None) -> str:
    """The student's model card (``model/README.md``): how it was made (teachers and their weights digests,
    the dataset's fingerprint, the recipe) and, when an evaluation produced one, its scores."""
    rows = "\n".join(f"| {name} | `{t.get('model_id')}`{_args(t.get('model_args'))} | {t.get('resolution')} | {t.get('weights')} | "
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
        write_atomic(card, f"{text}\n\n## Evaluation\n\n{scores.strip()}\n")
