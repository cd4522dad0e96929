"""What every benchmark script shares: the exact command line, the machine line, BENCHMARKS.md, and a
loopback S3 server for the object-store modes."""

from __future__ import annotations

import datetime
import logging
import os
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
    """Print the section; with ``write``, append it to BENCHMARKS.md (or to the file ``UNIC_BENCHMARKS`` names:
    the GPU check's dry run writes its sections there)."""
    text = "\n".join(lines)
    print(text)
    if write:
        path = Path(os.environ.get("UNIC_BENCHMARKS") or ROOT / "BENCHMARKS.md")
        head = "" if path.exists() else "# Benchmarks\n\nEvery figure with the command, machine and date that produced it.\n\n"
        with open(path, "a") as f:
            f.write(head + text + "\n")


def start_s3(bucket: str) -> "object":
    """A moto S3 server on 127.0.0.1 with ``bucket``, the AWS environment pointing this process and its
    children at it (stop it with ``.stop()``)."""
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}")
    s3fs.S3FileSystem().mkdir(bucket)
    return server
