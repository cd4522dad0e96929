"""Shared fixtures: a tiny shapes world, a dataset with broken images, and tiny teacher weights."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import webdataset as wds
from PIL import Image
from safetensors.torch import save_file

from unic_cache import make_shapes


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: a worker more than the cores, since most tests spend part of their time waiting on a command
    they started or a server."""
    return (os.cpu_count() or 1) + 1


WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:  # the workers share the cores: their threads, and those of the commands they start, fill them once
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // WORKERS))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

HANG_GUARD = 1800  # seconds: only a hung subprocess ever meets it; no assertion depends on wall-clock time
TINY = "vit_tiny_patch16_224"  # 192 wide, patch 16
SMALL8 = "vit_small_patch8_224"  # 384 wide, patch 8: a second teacher with other width, patch and grid


def popen_for_ctrl_c(command: list[str]) -> subprocess.Popen:
    """Start ``command`` taking Ctrl-C (SIGINT) as a terminal's foreground job does, even when the tests run as
    a background job of a shell, whose children start with SIGINT ignored and keep it so."""
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def dead_pid() -> int:
    """The pid of a process that has ended (as a killed command's is)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def dead_tmp_name(path: Path) -> Path:
    """The temp name a process of ours that was killed (a pid that is gone) gave ``path`` while writing it."""
    from unic_cache.distillation.run_files import tmp_name

    name = tmp_name(path).name.rsplit(".", 2)
    return path.with_name(f"{name[0]}.{dead_pid()}.{name[2]}")


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    make_shapes(out, n=24, size=32, seed=0, shard_size=10)
    return out


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Random but fixed teacher weights saved as safetensors, one file per (arch, resolution)."""
    out = tmp_path_factory.mktemp("weights")
    files = {}
    for arch, res in ((TINY, 32), (SMALL8, 24)):
        torch.manual_seed(0)
        model = timm.create_model(arch, num_classes=0, img_size=res, depth=2)
        files[arch] = out / f"{arch}.safetensors"
        save_file(model.state_dict(), str(files[arch]))
    return files


VIEWS = 3  # views per sample of the small caches the tests make


def opts(weights, arch=TINY, res=32, **kw):
    """ExtractOptions of a small test cache: a depth-2 teacher, VIEWS views, units of 4 rows."""
    from unic_cache import ExtractOptions

    base = dict(teacher=f"timm:{arch}", resolution=res, weights=str(weights[arch]), model_args={"depth": 2},
                views=VIEWS, batch_size=8, workers=0, unit_rows=4, progress=False)
    return ExtractOptions(**{**base, **kw})


def extract_in_ranks(data: Path, url: Path, weights, *extra: str, world: int = 2) -> None:
    """The ``opts(weights)`` extract as ``world`` racing CLI processes (ranks started last to first)."""
    args = ["extract", str(data), "--cache", str(url), "--teacher", f"timm:{TINY}", "--resolution", "32",
            "--weights", str(weights[TINY]), "--model-arg", "depth=2", "--views", str(VIEWS), "--batch-size", "8",
            "--workers", "0", "--unit-rows", "4", "--no-progress", "--world-size", str(world), *extra]
    procs = [subprocess.Popen([sys.executable, "-m", "unic_cache", *args, "--rank", str(r)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in reversed(range(world))]
    for p in procs:
        _, err = p.communicate(timeout=HANG_GUARD)
        assert p.returncode == 0, err


@pytest.fixture(scope="session")
def clean_cache(shapes_dir, weights, tmp_path_factory) -> Path:
    """A finished cache of the shapes world with one tiny teacher (copy it before damaging it)."""
    from unic_cache import extract

    url = tmp_path_factory.mktemp("clean") / "c.zarr"
    assert extract(str(shapes_dir), str(url), opts(weights)).complete
    return url


def _png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def messy_dir(tmp_path_factory) -> Path:
    """One tar with good images, odd modes (converted) and undecodable ones (recorded as bad)."""
    out = tmp_path_factory.mktemp("messy")
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    good = _png(rgb)
    samples = {
        "a_ok": ("png", good),
        "b_cmyk": ("jpg", _png(rgb.convert("CMYK"), "JPEG")),
        "c_16bit": ("png", _png(Image.fromarray(rng.integers(0, 65535, (30, 30), dtype=np.uint16)))),
        "d_palette": ("png", _png(rgb.convert("P"))),
        "e_rgba": ("png", _png(rgb.convert("RGBA"))),
        "f_truncated": ("png", good[: len(good) // 2]),
        "g_empty": ("png", b""),
        "h_text": ("jpg", b"this is not an image at all"),
        "i_ok": ("png", good),
    }
    with wds.TarWriter(str(out / "messy-000.tar"), mtime=0.0) as sink:
        for key, (ext, data) in samples.items():
            sink.write({"__key__": key, ext: data, "cls": b"0"})
    return out


def run_cli(*args: str, timeout: float = HANG_GUARD, **kw) -> subprocess.CompletedProcess:
    """Run ``python -m unic_cache ARGS`` in a fresh process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "unic_cache", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


STUDENT = "vit_small_patch16_224"  # the student of the distillation tests (depth 2 at 32 px)
VIEWS_DISTILL = 2  # views of the distillation tests' cache


@pytest.fixture(scope="session")
def world(tmp_path_factory, weights):
    """A shapes world of 32 images with a cache of two teachers of different widths and grids, for distill tests."""
    from unic_cache import ExtractOptions, extract

    root = tmp_path_factory.mktemp("distill")
    make_shapes(root / "data", n=32, size=32, seed=1, shard_size=8)
    cache = str(root / "cache.zarr")
    for arch, res in ((TINY, 32), (SMALL8, 24)):
        extract(str(root / "data"), cache, ExtractOptions(teacher=f"timm:{arch}", resolution=res, weights=str(weights[arch]),
                                                           model_args={"depth": 2}, views=VIEWS_DISTILL, unit_rows=8,
                                                           progress=False))
    return root, cache


def config(world, out, **kw):
    """DistillOptions of a short run on ``world`` (6 steps of 8, the tests' student, projectors its width: UNIC's
    768/3072 would make every checkpoint 100+ MB; tests/test_student.py holds UNIC's), with ``kw`` on top."""
    from unic_cache import DistillOptions

    root, cache = world
    base = dict(data=str(root / "data"), cache=cache, out=str(out), student=STUDENT, img_size=32,
                model_args={"depth": 2}, steps=6, batch_size=8, workers=0, progress=False, lr=0.02, lop_hidden="student")
    return DistillOptions(**{**base, **kw})


@contextlib.contextmanager
def moto_s3():
    """A moto S3 server on 127.0.0.1, started and stopped here, with the AWS environment variables pointing this
    process and its children at it; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # a filesystem cached for an earlier server must not be reused
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env["AWS_ENDPOINT_URL"]
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
