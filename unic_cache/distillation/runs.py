"""A distill run folder (``--out``): what it holds, whether a command may continue it (``RunFolder`` owns it all).

A run folder holds ``config.json`` (the run's resolved options, the tool's version, when it was started),
``metrics.jsonl``, ``checkpoints/step-N/`` (the last few), ``model/`` (the student encoder as a model folder
that timm and the Hugging Face Hub load as they are: ``config.json``, ``model.safetensors``, ``README.md``,
a model card), ``heads.safetensors`` (projectors and target norms), ``tb/`` and a pipeline's ``eval.json``.
The exported student and reading it back are ``exported``.

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
from ..records import differences, refuse, refuse_foreign
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
# safetensors (0.7 on) writes each file under a name like this beside it, then renames it: a kill mid-write leaves one
WRITER_TMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")


def _foreign(out: Path) -> list[str]:
    """Paths in a run folder that distill did not write (the model folder and checkpoints are looked into: export
    and pruning replace them whole)."""
    ours = RUN_FILES | {tmp_name(Path(n)).name for n in RUN_FILES}
    foreign = [p.name for p in out.iterdir() if p.name not in ours and not WRITER_TMP.fullmatch(p.name)]
    for folder in ("model", tmp_name(Path("model")).name):
        if (out / folder).is_dir():
            foreign += [f"{folder}/{p.name}" for p in (out / folder).iterdir() if not WRITER_TMP.fullmatch(p.name)
                        and p.name not in MODEL_FILES | {tmp_name(Path(n)).name for n in MODEL_FILES}]
    if (out / "checkpoints").is_dir():
        for step in (out / "checkpoints").iterdir():
            if not CHECKPOINT_DIR.fullmatch(step.name) or not step.is_dir():
                foreign.append(f"checkpoints/{step.name}")
                continue
            foreign += [f"checkpoints/{step.name}/{p.name}" for p in step.iterdir()
                        if not CHECKPOINT_FILES.fullmatch(p.name) and not WRITER_TMP.fullmatch(p.name)]
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
    refuse_foreign("--out", out, foreign or ["config.json" if "config.json" in names else names[0]], "distill")


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
    return differences(have, want, ignore=RUNTIME_OPTIONS, known_only=True)


def checkpoints(out: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first (a ``.tmp`` one was cut short and does not count)."""
    folder = Path(out) / "checkpoints"
    return sorted(folder.glob("step-????????")) if folder.is_dir() else []


def prune_checkpoints(out: Path, keep: int) -> None:
    """Keep the last ``keep`` checkpoints (and nothing a crash left half-written)."""
    for old in checkpoints(out)[:-keep]:
        shutil.rmtree(old)


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
        from .exported import is_finished

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
        for cut in self.out.iterdir():  # a file a killed run was writing (heads.safetensors): ours, and of no use
            if WRITER_TMP.fullmatch(cut.name) and cut.is_file():
                cut.unlink()

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
        tmp = tmp_name(final)
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for name, tensors in shared.items():
                save_tensors(tensors, tmp / f"{name}.safetensors")
            (tmp / "state.json").write_text(json.dumps(state))
        self._barrier()
        save_tensors(rng, tmp / f"rng-{self.rank}.safetensors")
        self._barrier()
        if self.rank == 0:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            prune_checkpoints(self.out, keep)
        self._barrier()

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
        from .exported import export_model

        if self.rank == 0:
            save_tensors(heads, self.out / "heads.safetensors")
            export_model(encoder, self.out / "model", img_size, model_args, crop_pct, card)
