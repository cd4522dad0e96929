"""What every benchmark script shares: the exact command line, the machine line, BENCHMARKS.md, one timer, the image
bytes of a dataset as the library reads them, a loopback S3 server for the object-store modes (counting its
requests), and datasets of tiny rows for the scale benchmarks."""

from __future__ import annotations

import datetime
import io
import logging
import os
import platform
import shlex
import statistics
import sys
import time
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def heading(title: str, device: str = "cpu") -> list[str]:
    """``### title (date, machine)`` and the command that reproduces the run, as Markdown lines."""
    machine = (torch.cuda.get_device_name() if device.startswith("cuda")
               else f"CPU {platform.machine()}, {torch.get_num_threads()} threads")
    script = Path(sys.argv[0]).resolve()
    command = " ".join(["python", str(script.relative_to(ROOT)), *map(shlex.quote, sys.argv[1:])])
    return [f"### {title} ({datetime.date.today()}, {machine})", "", f"Command: `{command}`", ""]


def synced(device: str):
    """A function that waits for ``device`` (a GPU) to finish its queued work (nothing to wait for on a CPU)."""
    return torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)


def timed(fn, repeat: int = 1, pick=statistics.median, device: str = "cpu") -> tuple[float, object]:
    """(seconds per call of ``fn``: ``pick`` (the median, or ``min`` for the best) over ``repeat`` calls, the last
    call's result). On a GPU ``device`` the clock is read after its queued work is done, before and after."""
    times, out, sync = [], None, synced(device)
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return float(pick(times)), out


def images(data: str | Path) -> list[bytes]:
    """The image bytes of every good sample of a dataset, read as the library reads them (checked)."""
    from unic_cache import open_source

    source = open_source(str(data))
    index = source.index(progress=False)
    good = np.flatnonzero(index.image_size[:, 0] > 0)
    return source.read_rows(index.location[good], [str(index.keys[r]) for r in good], index.digest[good])


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
    children at it (stop it with ``.stop()``). ``server.requests`` counts the requests it answers, by method."""
    import collections

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    server.requests = collections.Counter()
    server.paths = collections.Counter()  # (method, what the key is: a cache's top-level entry, a teacher's array)
    app = server._server.app  # the WSGI app each request is handed to: counted on its way in

    def counted(environ, start_response):
        server.requests[environ["REQUEST_METHOD"]] += 1
        server.paths[environ["REQUEST_METHOD"], _key_class(environ)] += 1
        return app(environ, start_response)
    server._server.app = counted
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}")
    s3fs.S3FileSystem().mkdir(bucket)
    return server


def _key_class(environ: dict) -> str:
    """What a request to ``/<bucket>/<cache>/...`` touches: ``(list)``, the cache's top-level entry (``index``,
    ``views``, claims...), or ``teachers/<array>``."""
    parts = environ.get("PATH_INFO", "").strip("/").split("/")
    if len(parts) < 3:
        return "(list)" if "list-type" in environ.get("QUERY_STRING", "") else "/".join(parts[1:]) or "(bucket)"
    if parts[2] == "teachers" and len(parts) > 4:
        return f"teachers/{parts[4]}"
    return parts[2]


def write_rows(folder: Path, n: int, shard_rows: int = 10_000) -> None:
    """``n`` samples in tar shards: ``<key>.jpg`` (16 x 16 noise, 16 distinct images) and ``<key>.cls``."""
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(16):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    folder.mkdir(parents=True)
    for start in range(0, n, shard_rows):
        with tarfile.open(folder / f"rows-{start // shard_rows:06d}.tar", "w") as tar:
            for i in range(start, min(n, start + shard_rows)):
                for suffix, data in (("jpg", jpegs[i % 16]), ("cls", str(i % 10).encode())):
                    info = tarfile.TarInfo(f"{i:08d}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
