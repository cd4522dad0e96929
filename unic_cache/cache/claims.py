"""Claims: one process does a piece of shared work (create a cache, add a teacher, merge statistics)
while the others wait for its result, on local disk and on fsspec object stores.

A claim is a small JSON file (``<cache>/.unic-cache/<what>.lock``) created exclusively (``open(...,
"xb")``: O_EXCL locally, a conditional put on S3/GCS/Azure). Its holder rewrites it every
``HEARTBEAT`` seconds. A claim is stale when its process is gone (same host, dead pid) or its
heartbeat is older than ``STALE_AFTER``; one waiter then takes it over, through a second exclusive
file named after the stale claim's token, and redoes the work from scratch (``cleanup`` first removes
the unfinished work of the dead holder, and only that: it is what the claim was protecting).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Callable

import fsspec
import fsspec.implementations.local

from ..errors import UserError
from ..records import refuse_foreign

HEARTBEAT = 10.0  # seconds between rewrites of a held claim
STALE_AFTER = float(os.environ.get("UNIC_CACHE_STALE_AFTER", 120.0))  # a claim not rewritten for this long is abandoned
POLL = 0.5  # seconds before a waiter looks again, doubled after each look up to MAX_POLL, so that a wait of
MAX_POLL = 2.0  # t seconds costs about t / 2 looks (a few requests each on an object store), not 2t
CLAIM_DIR = ".unic-cache"


def _record(token: str, what: str) -> bytes:
    return json.dumps({"token": token, "what": what, "host": socket.gethostname(), "pid": os.getpid(),
                       "heartbeat": time.time()}).encode()


def _read(fs: fsspec.AbstractFileSystem, path: str) -> dict | None:
    """A claim's record read directly (``cat_file``: no cached listing or file info is consulted)."""
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except ValueError:  # empty or half-written: being created now, or its creator died in between
        try:
            return {"heartbeat": fs.modified(path).timestamp()}
        except (FileNotFoundError, NotImplementedError):
            return {}


def _create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists; True if this call created it."""
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    try:
        with fs.open(path, "xb") as f:
            f.write(data)
        return True
    except FileExistsError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child that nobody reaped yet is a zombie: gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def is_stale(record: dict) -> bool:
    """A claim whose holder is gone: a dead pid on this host, or no heartbeat for STALE_AFTER seconds."""
    if not record:
        return False
    if "pid" in record and record.get("host") == socket.gethostname() and not pid_alive(int(record.get("pid", -1))):
        return True
    return time.time() - float(record.get("heartbeat", 0)) > STALE_AFTER


class _Heartbeat:
    """Rewrites a held claim every HEARTBEAT seconds until stopped."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, token: str, what: str):
        self.fs, self.path, self.token, self.what = fs, path, token, what
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(HEARTBEAT):
            if (_read(self.fs, self.path) or {}).get("token") == self.token:
                with self.fs.open(self.path, "wb") as f:
                    f.write(_record(self.token, self.what))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def _release(fs: fsspec.AbstractFileSystem, path: str) -> None:
    fs.invalidate_cache()  # the takeover files below must be listed afresh
    for p in [path, *fs.glob(path + ".takeover-*")]:
        try:
            fs.rm(p)
        except FileNotFoundError:
            pass
    try:  # the claim folder goes once empty (object stores have no folders to remove)
        fs.rmdir(path.rsplit("/", 1)[0])
    except OSError:
        pass


def _take_over(fs: fsspec.AbstractFileSystem, path: str, record: dict) -> None:
    """Remove a stale claim, unless another waiter is already doing so (or it changed meanwhile). A claim its
    holder died before writing (empty: no token) is removed too; it was stale by its age."""
    token = record.get("token")
    mark = f"{path}.takeover-{token or 'empty'}"
    if not _create_exclusive(fs, mark, _record(uuid.uuid4().hex, "takeover")):
        return
    try:
        if (_read(fs, path) or {}).get("token") == token:
            fs.rm(path)
    finally:
        fs.rm(mark)


def once(url: str, what: str, done: Callable[[], bool], work: Callable[[], None], cleanup: Callable[[], None],
         label: str) -> bool:
    """Run ``work`` in exactly one of the processes that call this with the same ``url`` and ``what``.

    Returns True in the process that did it, False in the others, which return once ``done()`` holds.
    ``cleanup`` runs before ``work`` in the winner and removes what a dead holder left unfinished.
    """
    fs, root = fsspec.core.url_to_fs(url)
    path = f"{root.rstrip('/')}/{CLAIM_DIR}/{what}.lock"
    told, delay = False, POLL
    while True:
        if done():
            return False
        token = uuid.uuid4().hex
        if _create_exclusive(fs, path, _record(token, what)):
            beat = _Heartbeat(fs, path, token, what)
            try:
                if done():
                    return False
                cleanup()
                work()
                return True
            finally:
                beat.close()
                _release(fs, path)
        record = _read(fs, path)
        if record is None:
            continue
        if is_stale(record):
            _take_over(fs, path, record)
            continue
        if not told and record and sys.stderr.isatty():  # a note for people watching; logs get the outcome only
            print(f"waiting for {record.get('host')}:{record.get('pid')}, which is {label}", file=sys.stderr)
            told = True
        time.sleep(delay)
        delay = min(2 * delay, MAX_POLL)


def clear_stale(url: str) -> int:
    """Remove the claims of holders that are gone (a killed command's; ``is_stale``), as a waiter taking one over
    would, and the claim folder once empty: the same command run again leaves what an uninterrupted one leaves.
    Returns how many were removed."""
    fs, root = fsspec.core.url_to_fs(url)
    folder = f"{root.rstrip('/')}/{CLAIM_DIR}"
    fs.invalidate_cache()
    if not fs.exists(folder):
        return 0
    removed = 0
    for path in [p for p in fs.find(folder) if p.endswith(".lock")]:  # a view block's claims sit one folder down
        record = _read(fs, path)
        if record is not None and is_stale(record):
            _take_over(fs, path, record)
            removed += not fs.exists(path)
    for sub in sorted(fs.find(folder, withdirs=True), key=len, reverse=True) + [folder]:  # empty folders, deepest first
        try:
            fs.rmdir(sub)
        except OSError:
            pass
    return removed


def check_writable_target(url: str, ours: set[str]) -> None:
    """Refuse a cache path that holds anything but our own (possibly unfinished) cache.

    ``ours``: the names a cache may hold at its top level. A path that does not exist or is an empty
    folder is fine; so is one holding our claim folder (our unfinished creation) or a finished cache.
    """
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()  # other processes write here: never judge from a cached listing
    if not fs.exists(root):
        return
    if not fs.isdir(root):
        raise UserError(f"--cache {url} is a file, not a cache; choose a new path")
    names = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)}
    writing = {n for n in names if temp_stem(n) in {o.split(".")[0] for o in ours}}  # zarr.json being written by a racer
    refuse_foreign("--cache", url, sorted(names - ours - writing - {CLAIM_DIR}), "extract")
    if names and CLAIM_DIR not in names:  # no claim of ours: only a finished cache of ours may be there
        try:
            with fs.open(f"{root.rstrip('/')}/zarr.json", "rb") as f:
                ours = json.loads(f.read()).get("attributes", {}).get("format") == "unic-cache"
        except (FileNotFoundError, ValueError):
            ours = False
        if not ours:
            raise UserError(f"--cache {url} holds zarr data that is not a finished unic-cache cache (an interrupted "
                            "creation by an older version, or another store); remove it yourself or choose another path")


def temp_stem(name: str) -> str | None:
    """The stem of a zarr write in progress: ``zarr`` for ``zarr.<32 hex>.partial`` (``zarr.json`` being
    written), ``0`` for a chunk ``0.<32 hex>.partial``; None for any other name."""
    stem, _, suffix = name.rpartition(".")
    head, _, token = stem.rpartition(".")
    return head if suffix == "partial" and len(token) == 32 and all(c in "0123456789abcdef" for c in token) else None


def clean_stale_temp_files(url: str, older_than: float = STALE_AFTER) -> int:
    """Remove temp files (``*.<32 hex>.partial``) of zarr writes killed midway; returns how many.

    zarr's local store writes a chunk to such a file and renames it into place; a write in progress is
    seconds old, so only files older than ``older_than`` seconds are removed.
    """
    fs, root = fsspec.core.url_to_fs(url)
    if not isinstance(fs, fsspec.implementations.local.LocalFileSystem) or not os.path.isdir(root):
        return 0
    removed, now = 0, time.time()
    for folder, _, files in os.walk(root):
        for name in files:
            if temp_stem(name) is not None:
                path = os.path.join(folder, name)
                try:
                    if now - os.path.getmtime(path) >= older_than:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    pass
    return removed
