"""The files of a distill run folder, below the folder itself (``runs``) and its exported student (``exported``):
which names a run holds, temp names that say which process of ours wrote them (so a leftover one is provably
ours), atomic writes, removing only what is ours, and the run record (``config.json``) that marks a folder ours.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import zlib
from pathlib import Path
from typing import Callable

from ..cache.claims import pid_alive

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
MODEL_FILES = {"config.json", "model.safetensors", "README.md"}


_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"
# a temp name of ours: the final name, our marker, the writer's host (hashed), pid and a random token
TMP_NAME = re.compile(r"(?P<final>.+)\.unic-tmp\.(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)\.[0-9a-f]{8}")


def tmp_name(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: a name that says which process wrote it, so a
    leftover one is provably ours (``dead_tmp``) and no user's file is ever taken for one."""
    return path.with_name(f"{path.name}.unic-tmp.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}")


def dead_tmp(name: str) -> bool:
    """Whether ``name`` is a temp name of a process of ours on this host that is gone (a kill cut its write)."""
    m = TMP_NAME.fullmatch(name)
    return bool(m) and m["host"] == _HOST and not pid_alive(int(m["pid"]))


def is_tmp(name: str, final: Callable[[str], bool] = lambda _: True) -> bool:
    """Whether ``name`` is a temp name of ours (any process) for a final name ``final`` accepts."""
    m = TMP_NAME.fullmatch(name)
    return bool(m) and final(m["final"])


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file so that a kill leaves the old one or the new one, never a part (made with the permissions of
    any file the user creates)."""
    tmp = tmp_name(path)
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.replace(path)


def save_tensors(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """Write a safetensors file atomically under a temp name of ours (safetensors' own writer would leave a
    ``.tmpXXXXXX`` of its own beside it when killed, which nobody could prove to be ours)."""
    from safetensors.torch import save

    write_atomic(Path(path), save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


def remove_ours(path: Path, ours: Callable[[str], bool]) -> bool:
    """Remove the file ``path``, or the folder ``path`` when every file in it is one ``ours`` accepts (or a temp name
    of ours); a folder holding anything else is left whole. Whether it was removed."""
    if path.is_dir():
        inside = list(path.iterdir())
        if not all(p.is_file() and (ours(p.name) or is_tmp(p.name)) for p in inside):
            return False
        for p in inside:
            p.unlink()
        path.rmdir()
    elif path.exists():
        path.unlink()
    return True


def run_record(out: Path) -> dict | None:
    """``config.json`` of ``out`` if it is one of our run records (this version's marker or an earlier run's
    fields), else None: a user's file, another tool's config, or not JSON at all."""
    try:
        record = json.loads((Path(out) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    return record if record.get("format") == RUN_FORMAT or _BEFORE_MARKER <= set(record) else None
