"""A distill run folder (``--out``): what it holds, whether a command may continue it (``RunFolder`` owns it all).

A run folder holds ``config.json`` (the run's resolved options, the tool's version, when it was started),
``metrics.jsonl``, ``checkpoints/step-N/`` (the last few), ``model/`` (the student encoder as a model folder
that timm and the Hugging Face Hub load as they are: ``config.json``, ``model.safetensors``, ``README.md``,
a model card), ``heads.safetensors`` (projectors and target norms), ``tb/`` and a pipeline's ``eval.json``.
The exported student and reading it back are ``exported``; the files below the folder (temp names, atomic
writes, the run record) are ``run_files``.

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
import socket
import weakref
from pathlib import Path

from ..errors import UserError
from ..records import differences, refuse, refuse_foreign
from .options import recorded_config
from .run_files import (LOCK, MODEL_FILES, RUN_FILES, RUNTIME_OPTIONS, dead_tmp, is_tmp, remove_ours, run_record, save_tensors,
                        tmp_name, write_atomic)
from .exported import export_model, is_finished

CHECKPOINT_FILE = re.compile(r"(model|optimizer|norms|rng-\d+)\.safetensors|state\.json")
CHECKPOINT_DIR = re.compile(r"step-\d{8}")
_RUN_FILE = RUN_FILES.__contains__
_MODEL_FILE = MODEL_FILES.__contains__
_CHECKPOINT_FILE = lambda name: bool(CHECKPOINT_FILE.fullmatch(name))  # noqa: E731
_CHECKPOINT_DIR = lambda name: bool(CHECKPOINT_DIR.fullmatch(name))  # noqa: E731


def _foreign(out: Path) -> list[str]:
    """Paths in a run folder that distill did not write: names of ours and temp names of ours (``tmp_name``) for
    them, looked into the model folder and each checkpoint (export and pruning replace them)."""
    foreign = [p.name for p in out.iterdir() if not (_RUN_FILE(p.name) or is_tmp(p.name, _RUN_FILE))]
    for folder in (p for p in out.iterdir() if p.name == "model" or is_tmp(p.name, "model".__eq__)):
        if folder.is_dir():
            foreign += [f"{folder.name}/{p.name}" for p in folder.iterdir() if not (_MODEL_FILE(p.name) or is_tmp(p.name, _MODEL_FILE))]
    if (out / "checkpoints").is_dir():
        for step in (out / "checkpoints").iterdir():
            if not (_CHECKPOINT_DIR(step.name) or is_tmp(step.name, _CHECKPOINT_DIR)) or not step.is_dir():
                foreign.append(f"checkpoints/{step.name}")
                continue
            foreign += [f"checkpoints/{step.name}/{p.name}" for p in step.iterdir()
                        if not (_CHECKPOINT_FILE(p.name) or is_tmp(p.name, _CHECKPOINT_FILE))]
    return sorted(foreign)


def remove_dead_tmp(out: Path) -> None:
    """Remove what killed writes of ours left in a run folder (temp names of processes of ours that are gone, on
    this host): at its top, in its model folder and among and inside its checkpoints. Nothing else."""
    places = [out, out / "model", out / "checkpoints",
              *((out / "checkpoints").iterdir() if (out / "checkpoints").is_dir() else ())]
    for place in places:
        if place.is_dir():
            for p in list(place.iterdir()):
                if dead_tmp(p.name):
                    remove_ours(p, lambda n: _MODEL_FILE(n) or _CHECKPOINT_FILE(n))


def check_run_folder(out: Path) -> None:
    """Refuse an ``--out`` that holds anything but a run of ours: distill never touches a user's file. A new or
    empty folder is fine, and so is one holding only our own leftovers (the lock, a temp file)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the run")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    leftovers = all(n == LOCK or is_tmp(n, "config.json".__eq__) for n in names)
    foreign = _foreign(out) if names else []
    if not names or leftovers or (run_record(out) is not None and not foreign):
        return
    refuse_foreign("--out", out, foreign or ["config.json" if "config.json" in names else names[0]], "distill")


def recorded(out: Path) -> dict | None:
    """The config a run folder of ours records (the options it predates filled in as they were), or None."""
    record = run_record(out)
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
    return differences(have, want, ignore=RUNTIME_OPTIONS, known_only=True)


def checkpoints(out: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first (a ``.tmp`` one was cut short and does not count)."""
    folder = Path(out) / "checkpoints"
    return sorted(folder.glob("step-????????")) if folder.is_dir() else []


def prune_checkpoints(out: Path, keep: int) -> None:
    """Keep the last ``keep`` checkpoints (and nothing a crash left half-written)."""
    for old in checkpoints(out)[:-keep]:
        remove_ours(old, _CHECKPOINT_FILE)  # a user's file put inside keeps the folder and itself


class RunFolder:
    """One run folder (``--out``) and everything in it, for one process of a run (``rank`` of ``world``): checked to
    be ours when opened, its record (``config.json``) compared with the run's, its lock, metrics, checkpoints
    (saved atomically, the last few kept, the last one loaded) and the exported student. The trainer hands it
    tensors and records; what files they become is decided here."""

    def __init__(self, out: str | Path, rank: int = 0, world: int = 1):
        self.out, self.rank, self.world, self.lock = Path(out), rank, world, None
        check_run_folder(self.out)
        self.seen = self.checkpoints()  # a command that wrote checkpoints while this one started is caught by ``hold``

    def recorded(self) -> dict | None:
        return recorded(self.out)

    def check_continues(self, want: dict) -> None:
        """Refuse a run folder whose recorded options differ from ``want`` (a config record) in what they compute."""
        have = self.recorded()
        refuse(recipe_differences(have, want) if have is not None else [], f"--out {self.out} holds a run made with "
               "other options", "run it with the same options to continue it, or give a new --out to start another run",
               limit=4)

    def checkpoints(self) -> list[Path]:
        return checkpoints(self.out)

    def finished(self) -> bool:

        return is_finished(self.out)

    def hold(self) -> None:
        """Rank 0 takes the folder's lock before writing anything; a command that started while another one wrote
        checkpoints here is refused rather than trained over them."""
        if self.rank != 0 or self.lock is not None:
            return
        self.lock = RunLock(self.out)
        if self.checkpoints() != self.seen:
            self.release()
            raise UserError(f"--out {self.out} was written by another distill while this one started; run the same "
                            "command again to continue from its last checkpoint")
        remove_dead_tmp(self.out)  # what a killed run was writing: provably ours, and of no use

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def write_config(self, record: dict) -> None:
        """``config.json`` (rank 0, atomically): written first, it is the marker that makes the folder ours."""
        if self.rank == 0:
            write_atomic(self.out / "config.json", json.dumps(record, indent=1))

    def metrics_file(self, step: int):
        """``metrics.jsonl`` on rank 0, open for appending: continued after ``step`` when resumed (later lines, from a
        run that went on past its last checkpoint, are dropped), or started anew."""
        if self.rank != 0:
            return None
        path = self.out / "metrics.jsonl"
        kept = []
        if step > 0 and path.exists():  # continued from a checkpoint
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= step:
                        kept.append(line + "\n")
                except ValueError:  # a line cut by a kill
                    continue
        write_atomic(path, "".join(kept))
        return open(path, "a")

    def tensorboard(self):
        """A TensorBoard writer into ``tb/`` on rank 0, if TensorBoard is installed."""
        if self.rank != 0:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional
            return None
        return SummaryWriter(str(self.out / "tb"))

    def _barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def save_checkpoint(self, step: int, shared: dict[str, dict], state: dict, rng: dict, keep: int) -> None:
        """``checkpoints/step-N/``: ``<name>.safetensors`` for each of ``shared`` and ``state.json`` (rank 0's: other
        ranks pass them empty), this rank's ``rng-<rank>.safetensors``; written under a temp name, renamed into
        place once every rank wrote, then the last ``keep`` kept."""
        final = self.out / "checkpoints" / f"step-{step:08d}"
        tmp = self._shared(tmp_name(final))
        if self.rank == 0:
            tmp.mkdir(parents=True)
            for name, tensors in shared.items():
                save_tensors(tensors, tmp / f"{name}.safetensors")
            (tmp / "state.json").write_text(json.dumps(state))
        self._barrier()
        save_tensors(rng, tmp / f"rng-{self.rank}.safetensors")
        self._barrier()
        if self.rank == 0:
            if final.exists() and not remove_ours(final, _CHECKPOINT_FILE):
                raise UserError(f"{final} holds files distill did not write; move them out and run the same command again")
            tmp.rename(final)
            prune_checkpoints(self.out, keep)
        self._barrier()

    def _shared(self, path: Path) -> Path:
        """Rank 0's ``path`` on every rank (a temp name carries its writer's pid)."""
        if self.world == 1:
            return path
        import torch.distributed as dist

        box = [path]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def last_checkpoint(self) -> tuple[Path, dict]:
        """The last checkpoint and its ``state.json``, refused when another number of processes wrote it."""
        ckpt = self.checkpoints()[-1]
        state = json.loads((ckpt / "state.json").read_text())
        if state["world_size"] != self.world:
            raise UserError(f"checkpoint {ckpt} was written by {state['world_size']} processes; resume with the same number")
        return ckpt, state

    def export(self, heads: dict, encoder, img_size: int, model_args: dict, crop_pct: float, card: str) -> None:
        """``heads.safetensors``, then ``model/`` (``exported.export_model``), on rank 0; each renamed into place, the
        model last (a run is finished once it is there)."""

        if self.rank == 0:
            save_tensors(heads, self.out / "heads.safetensors")
            export_model(encoder, self.out / "model", img_size, model_args, crop_pct, card)
