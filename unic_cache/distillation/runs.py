"""A distill run folder (``--out``): what it holds, whether a command may continue it, and the student it exports.

A run folder holds ``config.json`` (the run's resolved options, the tool's version, when it was started),
``metrics.jsonl``, ``checkpoints/step-N/`` (the last few), ``model/`` (the student encoder as a model folder
that timm and the Hugging Face Hub load as they are: ``config.json``, ``model.safetensors``, ``README.md``,
a model card), ``heads.safetensors`` (projectors and target norms), ``tb/`` and a pipeline's ``eval.json``.
Runs of 0.1 exported ``student.safetensors`` instead of ``model/``; they still load (``load_student``).

Re-running the command of a run continues it from its last checkpoint; a run folder made with other
options (``recipe_differences``) is refused in one line; a finished run is never trained again in place.

A folder is a run of ours only if its ``config.json`` is our record (``RUN_FORMAT``, or the fields every
earlier version recorded); anything else non-empty is refused before anything is written. Every file is
written to a temp name and renamed into place, ``config.json`` first, so a kill leaves our marker or nothing;
one command at a time holds a run folder (``RunLock``).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import weakref
from pathlib import Path

from ..errors import UserError
from .options import recorded_config

RUN_FORMAT = "unic-cache distill run"  # config.json's "format": the marker of a run folder of ours
LOCK = "run.lock"
RUN_FILES = {"config.json", "metrics.jsonl", "checkpoints", "model", "student.safetensors", "heads.safetensors", "tb",
             "eval.json", LOCK}  # all a run folder holds, beside the temp names of files being written (``tmp_name``)
_BEFORE_MARKER = {"student", "cache", "world_size", "total_steps", "targets", "lr_scaled", "warmup_steps"}  # every run since 0.1
# never compared: options that change how a run executes, not what it computes; paths, which may move (the
# cache is compared by its fingerprint); the kinds (compared as the resolved targets); the record's own facts
RUNTIME_OPTIONS = {"format", "data", "cache", "out", "progress", "resume", "workers", "log_every", "device", "storage_options",
                   "checkpoint_every", "keep_checkpoints", "compile", "fused_adamw", "channels_last", "kinds",
                   "version", "started"}


def tmp_name(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place."""
    return path.with_name(path.name + ".tmp")


def write_atomic(path: Path, text: str) -> None:
    """Write a text file so that a kill leaves the old one or the new one, never a part."""
    tmp = tmp_name(path)
    tmp.write_text(text)
    tmp.replace(path)


def save_tensors(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """Write a safetensors file atomically (temp name, then rename), with the permissions of any file the user
    creates (safetensors itself makes them 600: colleagues on a shared cluster could not load the student)."""
    from safetensors.torch import save_file

    tmp = tmp_name(Path(path))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp.replace(path)


def _run_record(out: Path) -> dict | None:
    """``config.json`` of ``out`` if it is one of our run records (this version's marker or an earlier run's
    fields), else None: a user's file, another tool's config, or not JSON at all."""
    try:
        record = json.loads((Path(out) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    return record if record.get("format") == RUN_FORMAT or _BEFORE_MARKER <= set(record) else None


MODEL_FILES = {"config.json", "model.safetensors", "README.md"}
CHECKPOINT_FILES = re.compile(r"((model|optimizer|norms|rng-\d+)\.safetensors|state\.json)(\.tmp)?")  # .tmp: cut mid-write
CHECKPOINT_DIR = re.compile(r"step-\d{8}(\.tmp)?")


def _foreign(out: Path) -> list[str]:
    """Paths in a run folder that distill did not write (the model folder and checkpoints are looked into: export
    and pruning replace them whole)."""
    ours = RUN_FILES | {tmp_name(Path(n)).name for n in RUN_FILES}
    foreign = [p.name for p in out.iterdir() if p.name not in ours]
    for folder in ("model", tmp_name(Path("model")).name):
        if (out / folder).is_dir():
            foreign += [f"{folder}/{p.name}" for p in (out / folder).iterdir()
                        if p.name not in MODEL_FILES | {tmp_name(Path(n)).name for n in MODEL_FILES}]
    if (out / "checkpoints").is_dir():
        for step in (out / "checkpoints").iterdir():
            if not CHECKPOINT_DIR.fullmatch(step.name) or not step.is_dir():
                foreign.append(f"checkpoints/{step.name}")
                continue
            foreign += [f"checkpoints/{step.name}/{p.name}" for p in step.iterdir() if not CHECKPOINT_FILES.fullmatch(p.name)]
    return sorted(foreign)


def check_run_folder(out: Path) -> None:
    """Refuse an ``--out`` that holds anything but a run of ours: distill never touches a user's file. A new or
    empty folder is fine, and so is one holding only our own leftovers (the lock, a temp file)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the run")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    leftovers = {LOCK, tmp_name(Path("config.json")).name}
    foreign = _foreign(out) if names else []
    if not names or set(names) <= leftovers or (_run_record(out) is not None and not foreign):
        return
    foreign = foreign or ["config.json" if "config.json" in names else names[0]]
    raise UserError(f"--out {out} holds other files ({', '.join(foreign[:3])}), not a unic-cache run; distill writes "
                    "only into a new folder or a run folder of its own: choose another --out")


def recorded(out: Path) -> dict | None:
    """The config a run folder of ours records (the options it predates filled in as they were), or None."""
    record = _run_record(out)
    return recorded_config(record) if record is not None else None


class RunLock:
    """One command at a time in a run folder: an exclusive ``flock`` on ``run.lock`` (released when the holder
    exits, however it exits); a second command is refused in one line naming the holder. A forked child (a
    DataLoader worker) closes its copy at once: it must not keep the lock when its parent is killed."""

    held: "weakref.WeakSet[RunLock]" = weakref.WeakSet()

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.file = open(out / LOCK, "a+")
        RunLock.held.add(self)
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise UserError(f"--out {out} is in use by another distill ({holder}); wait for it to finish, or give "
                            "another --out") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


def _close_in_child() -> None:
    """After a fork, in the child: close the inherited lock files (the parent's lock stays: it has its own)."""
    for lock in list(RunLock.held):
        lock.file.close()


os.register_at_fork(after_in_child=_close_in_child)


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
    if run.name == "model" and (run / "model.safetensors").is_file() and _run_record(run.parent) is not None:
        return f"{run} is not a finished distill run: it is the model folder of one; give the run folder: {run.parent}"
    if _run_record(run) is None:
        return (f"{run} is not a finished distill run: it has no run config.json; give the folder that distill --out "
                "wrote (config.json, heads.safetensors, model/)")
    return f"{run} is not a finished distill run: it has no model/ yet; finish it by running its distill command again"


def load_student(run: str | Path) -> tuple:
    """(encoder, input resolution) of a finished distill run: its ``model/`` folder through timm's ``local-dir:``,
    exactly as a user loads it (0.1 runs: ``student.safetensors`` with the run's config)."""
    import timm
    from safetensors.torch import load_file

    run = Path(run)
    if unfinished_reason(run):
        raise UserError(unfinished_reason(run))
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
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_tensors(encoder.state_dict(), tmp / "model.safetensors")
    save_config_for_hf(encoder, str(tmp / "config.json"), model_args={"img_size": img_size, "num_classes": 0, **model_args})
    config = json.loads((tmp / "config.json").read_text())
    for key in ("license", "hf_hub_id", "url"):  # the architecture's default weights' facts, not this student's
        config["pretrained_cfg"].pop(key, None)
    config["pretrained_cfg"].update(tag="unic-cache", input_size=[3, img_size, img_size], crop_pct=crop_pct)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / "README.md").write_text(card)
    shutil.rmtree(folder, ignore_errors=True)
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
