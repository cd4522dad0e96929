"""What a new user trips on, each a one-line answer: bad names and values, folders that are not the tool's,
students it cannot train, long silent phases, Ctrl-C."""

import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from unic_cache import Cache, DistillOptions, ExtractOptions, UserError, make_shapes, open_source
from unic_cache.cache.codecs import fidelity
from unic_cache.cache.views import ViewPlan
from unic_cache.cli import app

from .conftest import HANG_GUARD, TINY, popen_for_ctrl_c, run_cli
from .test_integrity import BLOCK_TORCH

runner = CliRunner()


def one_line(result, message: str, code: int = 2) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code and len(lines) == 1 and message in lines[0], result.output


def test_yaml_1_1_floats_and_numbers_for_text_options(tmp_path):
    cfg = DistillOptions.from_dict({"data": "d", "cache": "c", "lr": "1e-3", "lop_hidden": 768})
    assert cfg.lr == 0.001 and cfg.lop_hidden == "768"
    (tmp_path / "run.yaml").write_text("lr: 1e-3\nweight_decay: 5e-2\n")
    import yaml

    assert DistillOptions.from_dict({"data": "d", "cache": "c", **yaml.safe_load((tmp_path / "run.yaml").read_text())}).weight_decay == 0.05
    with pytest.raises(UserError, match="takes a float"):
        DistillOptions.from_dict({"data": "d", "cache": "c", "lr": "fast"})


def test_alias_size_and_typos_before_torch(shapes_dir, tmp_path):
    opts = ExtractOptions(teacher="deit3:base")
    assert (opts.teacher, opts.size, opts.default_name()) == ("deit3", "base", "deit3-base")
    with pytest.raises(UserError, match="give the size once"):
        ExtractOptions(teacher="deit3:base", size="small")
    code = BLOCK_TORCH + f"""
from unic_cache.cli import main
sys.argv = ["unic-cache", "extract", {str(shapes_dir)!r}, "--cache", {str(tmp_path / 'c.zarr')!r}, "--teacher", "dinov9"]
main()
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD)
    assert result.returncode == 2 and "unknown teacher 'dinov9'" in result.stderr and result.stderr.count("\n") == 1


def test_help_keeps_codec_spellings_and_set_examples_are_real_options():
    extract_help = runner.invoke(app, ["extract", "--help"], terminal_width=300).stdout
    assert "[pool-F+][pca-K|pca-0.FF+]VALUES" in extract_help
    info_help = runner.invoke(app, ["info", "--help"], terminal_width=300).stdout
    assert "batch_size" not in info_help and "--set json=true" in info_help
    assert "--set img_size=224" in runner.invoke(app, ["distill", "--help"], terminal_width=300).stdout


def test_folders_of_others_are_never_written(shapes_dir, clean_cache, tmp_path):
    data = tmp_path / "mydata"
    data.mkdir()
    (data / "train-000.tar").write_bytes(b"mine")
    one_line(runner.invoke(app, ["eval", str(shapes_dir), "--cache", str(clean_cache), "--out", str(data)]),
             "holds files eval did not write (train-000.tar)")
    one_line(runner.invoke(app, ["demo", "--quick", "--out", str(data), "--no-progress"]),
             "holds files a pipeline did not write (train-000.tar)")
    mine = tmp_path / "teacher.safetensors"
    mine.write_bytes(b"precious")
    one_line(runner.invoke(app, ["train-teacher", str(shapes_dir), "--out", str(mine), "--task", "shape"]),
             "is not a teacher this tool trained")
    assert mine.read_bytes() == b"precious" and (data / "train-000.tar").read_bytes() == b"mine"
    assert sorted(p.name for p in data.iterdir()) == ["train-000.tar"]


def test_eval_names_a_missing_teacher_and_what_there_is(shapes_dir, clean_cache, tmp_path):
    one_line(runner.invoke(app, ["eval", str(shapes_dir), "--cache", str(clean_cache), "--teachers", "t9", "--out",
                                 str(tmp_path / "e")]), f"no teacher 't9' in {clean_cache}; it has {TINY}")


def test_distill_on_a_cache_without_teachers_is_one_line_and_writes_nothing(shapes_dir, tmp_path):
    source = open_source(str(shapes_dir))
    url = str(tmp_path / "empty.zarr")
    Cache.open_or_create(url, lambda: source.index(progress=False), source, ViewPlan(views=2))
    out = tmp_path / "run"
    one_line(runner.invoke(app, ["distill", str(shapes_dir), "--cache", url, "--out", str(out), "--steps", "2"]),
             "holds no teacher yet")
    assert not out.exists()


@pytest.mark.parametrize("student", ["swin_tiny_patch4_window7_224", "resnet18"])
def test_students_that_are_not_vits_are_one_line(student, clean_cache, shapes_dir, tmp_path):
    result = runner.invoke(app, ["distill", str(shapes_dir), "--cache", str(clean_cache), "--out", str(tmp_path / "r"),
                                 "--student", student, "--steps", "1", "--no-progress"])
    one_line(result, "students are timm ViTs" if student == "resnet18" else "only ViTs are supported as students")


def test_a_teacher_with_constant_features_has_no_relative_error():
    x = np.tile(np.arange(4.0), (10, 1))
    got = fidelity(x, x + 1e-3, x.mean(0), np.sqrt(x.var(0) + 1e-6))
    assert math.isnan(got["std_rel_err"]) and got["cos_mean"] > 0.99
    from unic_cache.cache.info import fidelity_text

    assert "n/a (the features do not vary)" in fidelity_text({**got, "vectors": 10})


def test_ctrl_c_in_extract_says_how_to_continue(weights, tmp_path):
    # 200 rows of 8 views, one unit each: seconds of work are left when the signal comes, even on a loaded machine
    make_shapes(tmp_path / "data", n=200, size=32, seed=0, shard_size=50)
    args = ["extract", str(tmp_path / "data"), "--cache", str(tmp_path / "c.zarr"), "--teacher", f"timm:{TINY}",
            "--resolution", "32", "--weights", str(weights[TINY]), "--model-arg", "depth=2", "--unit-rows", "1",
            "--views", "8", "--workers", "0", "--no-progress"]
    proc = popen_for_ctrl_c([sys.executable, "-m", "unic_cache", *args])
    progress = tmp_path / "c.zarr" / "teachers" / TINY / "progress" / "c"
    while proc.poll() is None and not (progress.exists() and any(progress.iterdir())):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 130 and "run the same command to continue" in err and "Traceback" not in err, err[-1500:]
    again = run_cli(*args)
    assert again.returncode == 0 and "complete" in again.stdout, again.stderr[-1500:]


def test_an_interrupted_demo_continues_and_a_finished_one_probes_nothing_again(tmp_path):
    """Ctrl-C during the demo's distillation, then the same command: the student equals one distilled without a
    stop; a third run reuses everything (no step, no probe runs again) and the model card has the scores."""
    from safetensors.torch import load_file

    from unic_cache import distill
    from unic_cache.demo import demo_config
    from unic_cache.pipeline import run_pipeline

    demo = tmp_path / "demo"
    command = [sys.executable, "-m", "unic_cache", "demo", "--quick", "--out", str(demo), "--no-progress"]
    proc = popen_for_ctrl_c(command)
    run = demo / "runs" / "student" / "seed-0"
    while proc.poll() is None and not list((run / "checkpoints").glob("step-*")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 130 and "run the same command to continue" in err, err[-1500:]
    assert not (run / "model").exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD)
    assert again.returncode == 0, again.stderr[-1500:]
    for model in ("shape-texture", "colour-geometry", "student"):  # what the finished demo shows (its quick mode)
        assert f"| {model} |" in again.stdout
    assert (demo / "results.png").stat().st_size > 1000
    summary = json.loads((demo / "results.json").read_text())
    assert set(summary["tasks"]) == {"shape", "colour", "texture", "count", "size", "x", "y", "shape-seg", "colour-seg"}
    assert summary["dense"] == ["shape-seg", "colour-seg"] and "student" in summary["claims"]
    record = json.loads((run / "config.json").read_text())
    straight = {k: v for k, v in record.items() if k in DistillOptions.__dataclass_fields__}
    distill(DistillOptions(**{**straight, "out": str(tmp_path / "straight"), "betas": tuple(straight["betas"])}))
    a, b = (load_file(str(folder / "model" / "model.safetensors")) for folder in (run, tmp_path / "straight"))
    assert all((a[k] == b[k]).all() for k in a)
    reused = run_pipeline(demo_config(str(demo), quick=True), progress=False)
    assert [s for s in reused.steps if s[2] == "ran"] == []
    assert {s[0] for s in reused.steps} == {"data", "train-teacher", "extract", "distill", "eval"}
    card = (run / "model" / "README.md").read_text()
    assert "## Evaluation" in card and "| shape-texture | teacher |" in card
    assert json.loads((demo / "eval-teachers" / "shape-texture.json").read_text())["scores"]


def test_plan_checks_its_teachers_before_the_data_and_takes_arguments_per_teacher(tmp_path):
    """A bad --model-arg is refused before DATA is indexed (here DATA could not be indexed at all), and
    TEACHER:KEY=VALUE gives one teacher its own arguments, so a cache of EfficientNet-Lite0 and a 2-block ViT plans."""
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = runner.invoke(app, ["plan", str(empty), "--teachers", "timm:vit_tiny_patch16_224", "--model-arg", "bogus=2"])
    one_line(bad, "bad --model-arg")
    stray = runner.invoke(app, ["plan", "--samples", "10", "--teachers", "efficientnet-lite", "--model-arg", "vit:depth=2"])
    one_line(stray, "names teacher(s) vit that --teachers does not list")
    both = runner.invoke(app, ["plan", "--samples", "1000", "--teachers", "efficientnet-lite,timm:vit_tiny_patch16_224",
                               "--model-arg", "timm:vit_tiny_patch16_224:depth=2", "--resolution", "32", "--json"])
    assert both.exit_code == 0, both.output
    per_view = {name: t["per_sample_view"] for name, t in json.loads(both.stdout)["teachers"].items()}
    assert per_view == {"efficientnet-lite": (1 + 1) * 1280 * 2, "timm:vit_tiny_patch16_224": (1 + 2 * 2) * 192 * 2}


def test_a_model_built_for_another_size_plans_at_its_own_and_refuses_another():
    """An img_size model argument is the model's own resolution when none is given; a --resolution it cannot run
    at is one line saying so, not an assertion from inside timm."""
    own = runner.invoke(app, ["plan", "--samples", "10", "--teachers", "timm:vit_tiny_patch16_224", "--model-arg",
                              "img_size=32", "--json"])
    assert own.exit_code == 0, own.output
    assert json.loads(own.stdout)["teachers"]["timm:vit_tiny_patch16_224"]["per_sample_view"] == (1 + 2 * 2) * 192 * 2
    other = runner.invoke(app, ["plan", "--samples", "10", "--teachers", "timm:vit_tiny_patch16_224", "--model-arg",
                                "img_size=32", "--resolution", "64"])
    one_line(other, "does not run at 64 px")
