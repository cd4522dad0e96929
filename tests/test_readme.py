"""Every command and Python block of README.md runs, in order, on tiny data with the same flags.

What is changed, and only that (``SIZES``): the dataset is 40 ImageNet-like JPEGs in two shards (tar, parquet,
and the same tars on a loopback S3 server) instead of ImageNet; model sizes are ``small`` instead of
``base``; epochs, steps, batch sizes and processes are small; the shapes pipeline runs a small world. And
one thing that is not a size: this machine cannot reach the hub, so a hub alias extracted without
``--weights`` gets ``--weights random`` (timing-identical, README's own offline option). The set-up line
runs ``unic-cache demo --quick``; the line that runs the tests is this suite itself, so it is not run here.
"""

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from .conftest import HANG_GUARD, moto_s3

ROOT = Path(__file__).resolve().parents[1]
SHRINK = ["data.shapes.n=120", "cache.views=2", "teachers.shape-texture.train.epochs=1",
          "teachers.colour-geometry.train.epochs=1", "distill.epochs=1", "distill.workers=0"]
SIZES = [("/data/", "{tmp}/data/"), ("{0000..1023}", "{0000..0001}"), ("base", "small"), ("--epochs 200", "--epochs 1"),
         ("epochs: 100", "epochs: 1"), ("epochs=10)", "epochs=1)"), ("epochs=20", "epochs=1"),
         ("--batch-size 128", "--batch-size 4"), ("--views 16", "--views 3"), ("batch_size: 256", "batch_size: 4"),
         ("--nproc-per-node 8", "--nproc-per-node 2"), ("http://10.0.0.5:9000", "{s3}"),
         ('--set "seeds=[0]"', '--set "seeds=[0]" ' + " ".join(f'--set "{s}"' for s in SHRINK)),
         ('["seeds=[0]"]', repr(["seeds=[0]", *SHRINK])),
         ('size="small")', 'size="small", weights="random", resolution=112, views=2, calibration=16, progress=False)'),
         ("epochs=1))", 'epochs=1, img_size=112, model_args={"depth": 2}, progress=False))'),
         ('slice(0, 16), 3)', 'slice(0, 16), 1)')]
HUB = re.compile(r"--teacher (dinov2|dino|deit3|clip|siglip|mae)\b")


def readme_steps() -> list[tuple[str, str]]:
    """(kind, text) for every bash command, yaml file and python block of README, in order."""
    steps = []
    for lang, body in re.findall(r"```(bash|python|yaml)\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        if lang != "bash":
            steps.append((lang, body))
            continue
        for command in re.sub(r"\\\n\s*", "", body).splitlines():
            if command.strip():
                steps.append(("bash", command))
    return steps


EXTRACT_SIZES = "--resolution 112 --views 2 --calibration 16"  # a 7x7 (patch 16) or 8x8 (patch 14) grid
STUDENT_SIZES = "--img-size 112 --model-arg depth=2"


def adapt(kind: str, text: str, tmp: Path, s3: str) -> str:
    for old, new in SIZES:
        text = text.replace(old, new.replace("{tmp}", str(tmp)).replace("{s3}", s3))
    if kind != "bash":
        return text
    if text.startswith("python3 -m venv") and "unic-cache demo" in text:
        return "unic-cache demo --quick --no-progress"
    command = text.split("  #")[0]
    if command.startswith("unic-cache extract") and "--teacher" not in command:  # the cache's teachers, as recorded
        return f"{command} --no-progress"
    if command.startswith("unic-cache extract"):
        hub = HUB.search(command) and "--weights" not in command
        sizes = EXTRACT_SIZES if "--views" not in command else EXTRACT_SIZES.replace("--views 2 ", "")
        return f"{command} {sizes}{' --weights random' if hub else ''} --no-progress"
    if " distill " in f" {command} ":
        return f"{command} {STUDENT_SIZES} --no-progress"
    if command.startswith("unic-cache run"):
        return f"{command} --no-progress"
    return text


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """40 photos as two tar shards and as two parquet shards, the tars also on a moto S3 server, a weights
    file for the README's deit3 teacher, and the repository's pipelines."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import timm
    from safetensors.torch import save_file

    from unic_cache.photos import make_photos

    tmp = tmp_path_factory.mktemp("readme")
    tars = tmp / "data" / "in1k"
    for i, path in enumerate(make_photos(tmp / "corpus", n=40, seed=0, shard_size=20)):
        tars.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tars / f"train-{i:04d}.tar")
    parquet = tmp / "data" / "imagenet-1k" / "data"
    parquet.mkdir(parents=True)
    for i, path in enumerate(sorted(tars.glob("*.tar"))):
        with tarfile.open(path) as tar:
            rows = [(m.name, tar.extractfile(m).read()) for m in tar if not m.name.endswith(".cls")]
        pq.write_table(pa.table({"image": [{"bytes": b, "path": n} for n, b in rows], "label": [0] * len(rows)}),
                       parquet / f"train-{i:05d}-of-00002.parquet")
    save_file(timm.create_model("deit3_small_patch16_224", num_classes=0).state_dict(), str(tmp / "deit3_b16.safetensors"))
    shutil.copytree(ROOT / "pipelines", tmp / "pipelines", ignore=shutil.ignore_patterns("bench", "*.py"))
    with moto_s3() as endpoint:
        import s3fs

        s3fs.S3FileSystem().mkdir("bucket")
        s3fs.S3FileSystem().put(f"{tars}/*.tar", "bucket/in1k/")
        yield tmp, endpoint


PARTS = ("demo", "in1k", "others")


def part_of(text: str) -> str:
    """The chain of README's steps a step belongs to, each run by a test of its own (in parallel): the demo and the
    pipelines; what grows ``in1k.zarr`` and distils from it; the rest, each on a cache of its own."""
    if re.search(r"\bdemo\b|unic-cache run ", text):
        return "demo"
    if re.search(r"(?<![/\w])in1k\.zarr|runs/b16|run\.yaml", text):
        return "in1k"
    return "others"


def is_test_command(kind: str, text: str) -> bool:
    return kind == "bash" and text.startswith("python3 -m venv") and "pytest" in text


def test_readme_steps_fall_into_the_parts():
    """Every command and block of README but the test command is run by one part: a new one is run without
    changing the tests."""
    runnable = [(k, t) for k, t in readme_steps() if k != "yaml" and not is_test_command(k, t)]
    assert len(runnable) >= 15 and all(sum(part_of(t) == p for _, t in runnable) for p in PARTS)
    assert sum(1 for k, t in readme_steps() if is_test_command(k, t)) == 1


@pytest.mark.parametrize("part", PARTS)
def test_every_readme_example_runs(world, part):
    tmp, endpoint = world
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    ran, failed, seconds = 0, [], []
    steps = readme_steps()
    for kind, text in steps:  # configuration files first: "# NAME.yaml: ..." names each
        if kind == "yaml":
            text = adapt(kind, text, tmp, endpoint)
            (tmp / re.match(r"# (\S+\.yaml)", text).group(1)).write_text(text)
    for kind, text in steps:
        if kind == "yaml" or is_test_command(kind, text) or part_of(text) != part:
            continue  # written above; the test suite itself; another part's
        text = adapt(kind, text, tmp, endpoint)
        args = ["bash", "-c", f"set -o pipefail; {text}"] if kind == "bash" else [sys.executable, "-c", text]
        start = time.perf_counter()
        result = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=HANG_GUARD)
        seconds.append((round(time.perf_counter() - start), text[:60]))
        ran += 1
        if result.returncode != 0:
            failed.append(f"{text[:160]!r} -> {result.returncode}: {(result.stdout + result.stderr)[-600:]}")
    print(sorted(seconds, reverse=True)[:8])  # pytest -s shows where the time goes
    assert not failed, "\n\n".join(failed)
    assert ran == sum(k != "yaml" and not is_test_command(k, t) and part_of(t) == part for k, t in steps), ran
    if part == "in1k":
        assert (tmp / "runs" / "b16" / "model" / "model.safetensors").exists()
