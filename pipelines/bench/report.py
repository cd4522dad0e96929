"""What every benchmark script shares: the exact command line, the machine line, and BENCHMARKS.md."""

from __future__ import annotations

import datetime
import platform
import shlex
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def heading(title: str, device: str = "cpu") -> list[str]:
    """``### title (date, machine)`` and the command that reproduces the run, as Markdown lines."""
    machine = (torch.cuda.get_device_name() if device.startswith("cuda")
               else f"CPU {platform.machine()}, {torch.get_num_threads()} threads")
    script = Path(sys.argv[0]).resolve()
    command = " ".join(["python", str(script.relative_to(ROOT)), *map(shlex.quote, sys.argv[1:])])
    return [f"### {title} ({datetime.date.today()}, {machine})", "", f"Command: `{command}`", ""]


def publish(lines: list[str], write: bool) -> None:
    """Print the section; with ``write``, append it to BENCHMARKS.md."""
    text = "\n".join(lines)
    print(text)
    if write:
        path = ROOT / "BENCHMARKS.md"
        head = "" if path.exists() else "# Benchmarks\n\nEvery figure with the command, machine and date that produced it.\n\n"
        with open(path, "a") as f:
            f.write(head + text + "\n")
