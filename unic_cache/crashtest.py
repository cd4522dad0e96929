"""Crash tests at enumerated persistence points (``crashpoints``): run a command once to list its points, then kill
it just before each in turn, run it again, and compare the outcome file by file with the uninterrupted run's.

Every command runs in a child forked from one clean server process (``python -m unic_cache.crashtest``), so each of
hundreds of trials costs the command's own work, not an interpreter start and the imports of torch and timm.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from dataclasses import dataclass
from typing import Callable

from .cache.claims import temp_stem
from .crashpoints import AT_ENV, LOG_ENV, ROOT_ENV

IGNORED = frozenset({"created", "started", "sha256", "samples_per_s"})  # what differs between two runs of one command
_TIMES = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}")
_PID = re.compile(rb"pid \d+")

@dataclass
class Trial:
    """One kill: the point (1-based) and what it was, whether the command died there, the exit code of the same
    command run again (then of each command after it), how the result differs from the uninterrupted run's, the
    last output, and zarr's temp files left."""

    point: int
    event: str
    killed: bool
    code: int
    differences: list[str]
    output: str
    temp_files: int

    @property
    def identical(self) -> bool:
        return self.code == 0 and not self.differences


def _serve() -> None:
    """``python -m unic_cache.crashtest``: read one JSON request a line (``args``, ``env``, ``output``), run
    ``unic-cache ARGS`` in a forked child with ``env`` set and its output in ``output``, answer its exit code
    (-9 when it killed itself at its point). The server itself never runs zarr or torch, so no thread or event
    loop is forked."""
    import json

    import timm  # noqa: F401  (imports only: nothing is run before the fork)

    from . import cli
    from .cache import audit  # noqa: F401
    from .distillation import recipe  # noqa: F401
    from .extraction import runner  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.environ.update(request["env"])
                fd = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.argv = ["unic-cache", *request["args"]]
                cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)


class Runner:
    """Runs ``unic-cache`` commands through one ``_serve`` process: plainly, counting the points under a folder, or
    killed at one of them."""

    def __init__(self, env: dict[str, str] | None = None):
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-m", "unic_cache.crashtest"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})

    def run(self, args: list[str], output: str, root: str | None = None, log: str | None = None,
            at: int | None = None) -> int:
        """The exit code of ``unic-cache ARGS`` (output in the file ``output``); with ``root``, its points there are
        logged to ``log`` and/or it is killed before point ``at``."""
        import json

        env = {ROOT_ENV: root or "", LOG_ENV: log or "", AT_ENV: "" if at is None else str(at)}
        self.proc.stdin.write(json.dumps({"args": args, "env": env, "output": output}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["code"]

    def points(self, args: list[str], root: str, log: str, output: str) -> list[str]:
        """Run the command to the end, and return its points under ``root`` in order (``event path``)."""
        if os.path.exists(log):
            os.remove(log)
        self.run_ok(args, output, root, log)
        with open(log) as f:
            return f.read().splitlines()

    def every_point(self, args: list[str], root: str, prepare: Callable[[], None], work: str,
                    after: tuple[list[str], ...] = (), pick: Callable[[list[str]], list[int]] | None = None,
                    ignore: frozenset = IGNORED) -> tuple[int, list["Trial"]]:
        """Kill ``unic-cache ARGS`` just before each of its points under ``root`` in turn (every one, or those ``pick``
        chooses from the list of points), then run it again and each command of ``after``; compare ``root`` with the
        uninterrupted run's. ``prepare()`` lays out the starting state at ``root``; ``work`` is a folder for the
        reference, logs and outputs. Returns the number of points and one ``Trial`` each."""
        import shutil

        reference, log, output = (os.path.join(work, n) for n in ("reference", "points.log", "output.txt"))
        prepare()
        points = self.points(args, root, log, output)
        for command in after:
            self.run_ok(command, output)
        shutil.rmtree(reference, ignore_errors=True)
        shutil.copytree(root, reference)
        trials = []
        for at in (pick(points) if pick else range(1, len(points) + 1)):
            prepare()
            killed = self.run(args, output, root, at=at) == -signal.SIGKILL
            code = self.run(args, output)
            for command in after if code == 0 else ():
                code = self.run(command, output)
            with open(output) as f:
                said = f.read().strip()  # the last command's
            differ = tree_differences(reference, root, ignore) if code == 0 else []
            trials.append(Trial(at, points[at - 1], killed, code, differ, said[-500:], zarr_temp_files(root)))
        return len(points), trials

    def run_ok(self, args: list[str], output: str, root: str | None = None, log: str | None = None) -> None:
        """Run ``unic-cache ARGS`` (as ``run``), which must succeed."""
        if self.run(args, output, root, log) != 0:
            with open(output) as f:
                raise RuntimeError(f"unic-cache {' '.join(args)} failed: {f.read()[-2000:]}")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def zarr_temp_files(root: str) -> int:
    """zarr's temp files under ``root`` (a write killed before its rename): unread, removed by the next extract once
    ``claims.STALE_AFTER`` old and by ``verify --repair``."""
    return sum(temp_stem(f) is not None for _, _, names in os.walk(root) for f in names)


def tree_differences(reference: str, other: str, ignore: frozenset = IGNORED) -> list[str]:
    """How the folder ``other`` differs from ``reference``: files only one holds, and files whose bytes differ (JSON
    and JSON-lines documents compared parsed, without the keys in ``ignore``: the times and speeds a command records,
    and a seal's digest of them; in text, times and a lock holder's pid); zarr's temp files of killed writes
    (``*.<32 hex>.partial``) are counted apart by ``zarr_temp_files``. Empty: the same."""
    import json

    def files(root: str) -> set[str]:
        return {os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names
                if temp_stem(f) is None}

    def drop(value):
        if isinstance(value, dict):
            return {k: drop(v) for k, v in value.items() if k not in ignore}
        return [drop(v) for v in value] if isinstance(value, list) else value

    a, b = files(reference), files(other)
    out = [f"only in the reference: {p}" for p in sorted(a - b)] + [f"not in the reference: {p}" for p in sorted(b - a)]
    for path in sorted(a & b):
        with open(os.path.join(reference, path), "rb") as f, open(os.path.join(other, path), "rb") as g:
            x, y = f.read(), g.read()
        if x != y and path.endswith((".json", ".jsonl")):
            try:
                x, y = ([drop(json.loads(doc)) for doc in (v.splitlines() if path.endswith("l") else [v])] for v in (x, y))
            except ValueError:
                pass
        if x != y and isinstance(x, bytes):  # text: the times and the lock holder's pid masked
            x, y = (_TIMES.sub(b"TIME", _PID.sub(b"pid N", v)) for v in (x, y))
        if x != y:
            out.append(f"differs: {path}")
    return out


if __name__ == "__main__":
    _serve()
