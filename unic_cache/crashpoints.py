"""Persistence points, counted and stopped at, so that crash tests kill a command after each of its writes, renames
and deletes in turn (as ALICE, Pillai et al. OSDI 2014, and SQLite's crash tests do) rather than at random moments.

Off unless ``UNIC_CACHE_CRASH_ROOT`` names a folder: then every file opened for writing, rename, delete and new
folder under it is a point, seen through Python's audit hooks (so zarr's, fsspec's and safetensors' own file calls
count as well as ours). ``UNIC_CACHE_CRASH_LOG=FILE`` appends one line per point to FILE (``event path``, and
``-> target`` for a rename or link); ``UNIC_CACHE_CRASH_AT=N`` makes the process SIGKILL itself just before its
N-th point (1-based), so the points 0..N-1 are the state a kill leaves. What a point cannot show: a kill inside one
``write`` of a file (a torn file), which the temp-name-then-rename writes of zarr and of this tool make invisible to
readers. The harness that kills a command at each point and compares the outcome is ``crashtest``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

ROOT_ENV, LOG_ENV, AT_ENV = "UNIC_CACHE_CRASH_ROOT", "UNIC_CACHE_CRASH_LOG", "UNIC_CACHE_CRASH_AT"
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_EVENTS = {"open", "os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.link", "os.symlink", "os.truncate"}


class _Points:
    """The audit hook: counts the points under ``root``, logs them, and kills the process at the chosen one."""

    def __init__(self, root: str, log: str | None, at: int | None):
        self.root, self.log, self.at = os.path.abspath(root) + os.sep, log and os.path.abspath(log), at
        self.count, self.lock = 0, threading.Lock()

    def _under(self, path) -> str | None:
        if isinstance(path, int) or path is None:
            return None
        path = os.path.abspath(os.fsdecode(path))
        return path if path.startswith(self.root) else None

    def __call__(self, event: str, args: tuple) -> None:
        if event not in _EVENTS:
            return
        path = self._under(args[0])
        target = self._under(args[1]) if event in ("os.rename", "os.link", "os.symlink") else None
        path = path or target
        if path is None or path == self.log:
            return
        if event == "open" and not (args[2] or 0) & _WRITE_FLAGS and not (args[1] and set(args[1]) & set("wxa+")):
            return  # a read
        if event == "os.mkdir" and os.path.isdir(path):
            return  # makedirs(exist_ok=True) of a folder that exists changes nothing
        with self.lock:
            self.count += 1
            if self.at is not None and self.count >= self.at:
                os.kill(os.getpid(), signal.SIGKILL)
            if self.log:
                to = f" -> {target[len(self.root):]}" if target and target != path else ""
                with open(self.log, "a") as f:
                    f.write(f"{event} {path[len(self.root):]}{to}\n")


def install() -> None:
    """Install the hook when ``UNIC_CACHE_CRASH_ROOT`` is set (the CLI calls this first); otherwise nothing."""
    root = os.environ.get(ROOT_ENV)
    if root:
        at = os.environ.get(AT_ENV)
        sys.addaudithook(_Points(root, os.environ.get(LOG_ENV), int(at) if at else None))
