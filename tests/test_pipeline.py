"""Pipelines reuse the cache (a complete teacher is never extracted again), the demo runs end to end,
and the distill options the ablations need (views used, online reference mode) do what they say."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from unic_cache import UserError
from unic_cache.distillation.options import BEFORE_0_2

PINNED = {k: v for k, v in BEFORE_0_2.items() if k != "norm_stats"}  # what the pipelines pin (exact stats: the default)
from unic_cache.distillation.recipe import DistillOptions, Distiller
from unic_cache.distillation.loader import DistillStream, Selection
from unic_cache.pipeline import run_pipeline
from unic_cache.cache.store import Cache
from unic_cache.cache.views import ViewPlan, plan_views
from unic_cache.models.photometric import photometric
from unic_cache.models.device_pixels import replay

from .conftest import run_cli

TINY_ARGS = {"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}


def _config(out) -> dict:
    return {
        "name": "tiny", "out": str(out),
        "data": {"shapes": {"n": 60, "size": 32, "seed": 0, "shard_size": 30}},
        "cache": {"views": 2},
        "teachers": {
            "colour": {"teacher": "timm:vit_tiny_patch16_224", "resolution": 32, "model_args": TINY_ARGS,
                       "train": {"tasks": ["colour"], "epochs": 1}},
        },
        "distill": {"student": "vit_tiny_patch16_224", "img_size": 32, "model_args": TINY_ARGS, "steps": 2,
                    "batch_size": 16, "workers": 0},
        "arms": {"base": {}, "one-view": {"views": 1}},
        "seeds": [0],
    }


def _ran(run, step: str) -> list[str]:
    return [what for s, what, status in run.steps if s == step and status == "ran"]


def _skipped(run, step: str) -> list[str]:
    return [what for s, what, status in run.steps if s == step and status == "skipped"]


def test_pipeline_reuses_the_cache(tmp_path):
    config = _config(tmp_path / "p")
    first = run_pipeline(config, progress=False)
    assert _ran(first, "extract") == ["colour"] and _ran(first, "distill") == ["base/seed-0", "one-view/seed-0"]
    assert set(first.results.models) == {"colour", "base", "one-view"}
    assert all(p.exists() for p in first.paths.values())
    progress_file = tmp_path / "p" / "cache.zarr" / "teachers" / "colour" / "progress" / "c" / "0"
    stamp = progress_file.stat().st_mtime_ns

    second = run_pipeline(copy.deepcopy(config), progress=True)  # showing progress bars is no reason to redo work
    assert _ran(second, "extract") == [] and _skipped(second, "extract") == ["colour"]
    assert _ran(second, "train-teacher") == [] and _ran(second, "distill") == [] and _ran(second, "eval") == []
    assert second.results.models == first.results.models

    # a new teacher and a changed arm: only they run; the cached teacher is still not extracted again
    config["teachers"]["random"] = {"teacher": "timm:vit_tiny_patch16_224", "resolution": 32, "weights": "random",
                                    "model_args": TINY_ARGS}
    config["arms"]["one-view"] = {"views": 1, "teacher_drop": 0.0}
    third = run_pipeline(config, progress=False)
    assert _ran(third, "extract") == ["random"] and _skipped(third, "extract") == ["colour"]
    assert _ran(third, "distill") == ["base/seed-0", "one-view/seed-0"]  # the base arm now distils both teachers
    assert progress_file.stat().st_mtime_ns == stamp
    assert Cache.open(str(tmp_path / "p" / "cache.zarr")).teacher_names() == ["colour", "random"]
    fourth = run_pipeline(copy.deepcopy(config), progress=False)  # seeded random weights are recognised
    assert _ran(fourth, "extract") == [] and _skipped(fourth, "extract") == ["colour", "random"]
    other_model = copy.deepcopy(config)
    other_model["teachers"]["random"]["teacher"] = "timm:vit_small_patch16_224"
    with pytest.raises(UserError, match=r"random .* was extracted with other settings than this pipeline asks for \(model_id: vit_tiny_patch16_224 vs vit_small"):
        run_pipeline(other_model, progress=False)

    # a changed recipe retrains the teacher; the cache's features of the old one are refused, not reused
    config["teachers"]["colour"]["train"]["epochs"] = 2
    with pytest.raises(UserError, match=r"colour .* was extracted with other settings .*\(weights_sha256: [0-9a-f]{64} vs [0-9a-f]{64}\)"):
        run_pipeline(config, progress=False)


def test_run_cli_with_overrides_and_bad_keys(tmp_path):
    import yaml

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path / "p")))
    r = run_cli("run", str(path), "--until", "teachers", "--no-progress")  # a teachers-only pipeline: no student
    assert r.returncode == 0 and "extract colour" in r.stdout and "distill" not in r.stdout, r.stdout + r.stderr
    assert Cache.open(str(tmp_path / "p" / "cache.zarr")).teacher("colour").complete and not (tmp_path / "p" / "runs").exists()
    r = run_cli("run", str(path), "--until", "extract", "--no-progress")
    assert r.returncode == 2 and "--until takes one of data, teachers, distill, eval" in r.stderr
    r = run_cli("run", str(path), "--set", "arms={base: {}}", "--set", "distill.steps=1", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "| base | student |" in r.stdout and "chart:" in r.stdout
    r = run_cli("run", str(path), "--set", "distill.colour=1", "--no-progress")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown distill option(s) colour") and "Traceback" not in r.stderr
    for key, command in (("eval.colour", "eval"), ("teachers.colour.extract.colour", "extract"),
                         ("teachers.colour.train.colour", "train-teacher"), ("data.shapes.colour", "make-shapes"),
                         ("cache.colour", "")):  # checked before anything runs
        r = run_cli("run", str(path), "--set", f"{key}=1", "--set", f"out={tmp_path / 'q'}")
        said = (f"error: unknown {command} option(s) colour" if command else
                "error: pipeline 'cache' takes views, seed, crop_scale, unit_rows, path (got colour)")
        assert r.returncode == 2 and r.stderr.startswith(said), r.stderr
        assert not (tmp_path / "q").exists()
    path.write_text("out: x\nteachers: {}\nbogus: 1\n")
    r = run_cli("run", str(path))
    assert r.returncode == 2 and "unknown pipeline key(s) bogus" in r.stderr


def test_train_teacher_cli_gives_a_working_extract_command(shapes_dir, tmp_path):
    out = tmp_path / "t.safetensors"
    r = run_cli("train-teacher", str(shapes_dir), "--out", str(out), "--task", "colour", "--task", "size", "--epochs", "1",
                "--model-arg", "patch_size=8", "--model-arg", "depth=2", "--no-progress")
    assert r.returncode == 0, r.stderr
    command = r.stdout.strip().splitlines()[-1].split("use it with: ")[1].split()
    assert command[:2] == ["unic-cache", "extract"]
    r = run_cli(*[str(tmp_path / "c.zarr") if a == "CACHE" else a for a in command[1:]], "--views", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads(out.with_suffix(".json").read_text())["split"] == {"seed": 0, "fractions": [0.6, 0.2]}
    r = run_cli("train-teacher", str(shapes_dir), "--out", str(out), "--task", "flavour")
    assert r.returncode == 2 and "no task 'flavour'" in r.stderr
    r = run_cli("train-teacher", str(shapes_dir), "--out", str(out), "--task", "shape-seg")
    assert r.returncode == 2 and "dense (per-pixel) task" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def trained_cache(tmp_path_factory):
    """A pipeline's output: a world, a cache with one trained teacher, and nothing distilled."""
    out = tmp_path_factory.mktemp("trained")
    config = _config(out)
    config["arms"] = {"base": {}}
    run_pipeline(config, progress=False)
    return out


def test_views_option_limits_the_views_used(trained_cache):
    cache = str(trained_cache / "cache.zarr")
    selection = Selection.of(Cache.open(cache), ["colour"])
    stream = DistillStream(str(trained_cache / "data"), cache, selection, 32, 8, views=1)
    assert {s["view"] for s, _ in zip(stream, range(200))} == {0}
    with pytest.raises(UserError, match="between 1 and the 2 views"):
        DistillStream(str(trained_cache / "data"), cache, selection, 32, 8, views=3)


def test_online_mode_runs_teachers_on_fresh_views(trained_cache):
    data, cache_url = str(trained_cache / "data"), str(trained_cache / "cache.zarr")
    cache = Cache.open(cache_url)
    selection = Selection.of(cache, ["colour"])
    stream = DistillStream(data, cache_url, selection, 32, 8, online={"colour": 24})
    sample = next(iter(stream))
    assert sample["view"] == cache.views and "colour/summary" not in sample and sample["colour/image"].shape == (3, 24, 24)
    from unic_cache import open_source
    from unic_cache.cache.pixels import decode_image

    row = sample["row"]
    params = plan_views(ViewPlan(views=1, seed=cache.plan.seed), np.array([row]), cache.image_size[[row]],
                        first_view=cache.views)[0, 0]
    image = decode_image(open_source(data).read(cache.location[row], str(cache.keys[row])))
    assert np.array_equal(sample["params"].numpy(), params)  # the loader gives the crop; the device its colours
    assert torch.equal(photometric(sample["image"][None], sample["params"][None])[0], replay(image, params, 32))
    assert not np.allclose(params, cache.params(slice(row, row + 1))[0, 1])  # not a cached view

    cfg = DistillOptions(data=data, cache=cache_url, out=str(trained_cache / "online"), student="vit_tiny_patch16_224",
                        img_size=32, model_args=TINY_ARGS, steps=2, batch_size=8, workers=0, online=True, progress=False)
    distiller = Distiller(cfg)
    batch = next(iter(distiller.loader()))
    assert "pixels" in batch  # pipeline 3: decoded images, every view cut on the device
    teacher = distiller.online["colour"]
    expected = teacher(distiller.views(batch, "colour/image", teacher.info.resolution))[0]
    distiller.loss(batch)
    assert torch.allclose(batch["colour/summary"], expected)  # the targets are the teacher's outputs on this batch
    assert np.isfinite(distiller.run()["loss"])


@pytest.mark.parametrize("path", ["unic_cache/configs/demo.yaml", "pipelines/unic_in1k.yaml", "pipelines/radio_teachers.yaml"])
def test_the_shipped_recipes_replay_each_view_within_the_limit_the_tool_warns_at(path):
    """The demo and UNIC's ImageNet recipe follow the tool's own rule: distill warns above REPLAY_LIMIT replays."""
    from pathlib import Path

    from unic_cache.cache.views import REPLAY_LIMIT
    from unic_cache.pipeline import load_config

    config = load_config(Path(__file__).parents[1] / path)
    assert config["distill"]["epochs"] / config["cache"]["views"] <= REPLAY_LIMIT


@pytest.mark.parametrize("name", ["shapes", "ablations", "shapes-world1", "ablations-world1", "crops", "dense",
                                  "views", "views-world1", "codecs", "unic_in1k", "reuse", "reuse-world1",
                                  "reuse-pca", "reuse-pca-world1", "reuse-powered", "reuse-powered-world1",
                                  "radio_teachers"])
def test_shipped_pipelines_are_valid(name):
    from pathlib import Path

    from unic_cache.extraction.runner import ExtractOptions
    from unic_cache.pipeline import load_config

    config = load_config(Path(__file__).parents[1] / "pipelines" / f"{name}.yaml")
    for arm, overrides in config["arms"].items():
        DistillOptions.from_dict({**config["distill"], **(overrides or {})})  # unknown options raise
    for teacher, spec in config["teachers"].items():
        ExtractOptions(teacher=spec["teacher"], **spec.get("extract", {}))
    folder = Path(__file__).parents[1] / "pipelines"
    if name == "shapes-world1":  # its teachers replace the base's; the distill recipe is the base's
        assert list(config["teachers"]) == ["shape-colour-size", "texture-count-position"]
        assert config["distill"] == load_config(folder / "shapes.yaml")["distill"]
    if name == "ablations-world1":  # the same ablations in the second world
        assert config["arms"] == load_config(folder / "ablations.yaml")["arms"]
        assert config["distill"] == load_config(folder / "ablations.yaml")["distill"]
    if name in ("views", "views-world1"):  # one view against the benchmark of its world, at the benchmark's recipe
        base = load_config(folder / ("shapes.yaml" if name == "views" else "shapes-world1.yaml"))
        assert config["distill"] == {**base["distill"], **PINNED}  # the recipe of its RESULTS.md runs
        assert config["arms"] == {"views-1": {"views": 1}, "all-views": {}}
        assert config["seeds"] == base["seeds"] and config["teachers"] == base["teachers"]
    if name in ("reuse", "reuse-world1"):  # the grid of world A in both worlds (B: the arms it ran), the teachers of its
        grid = load_config(folder / "reuse.yaml")["arms"]  # benchmark world; the 13 arms it ran and 3 of the remedy
        assert len(grid) == 16 and config["arms"].items() <= grid.items() and len(config["arms"]) >= 10
        assert {"k1-e25", "online-e25", "k1-e100", "online-e100", "k8-e100", "k4-e100-mix"} <= set(config["arms"])
        assert config["distill"] == load_config(folder / "shapes.yaml")["distill"]
        world = "shapes" if name == "reuse" else "shapes-world1"
        assert [spec["weights"] for spec in config["teachers"].values()] == [
            f"runs/{world}/teachers/{t}.safetensors" for t in load_config(folder / f"{world}.yaml")["teachers"]]
        used = max(o.get("views", 1) for o in config["arms"].values())  # world B cached 32; the arms it ran use 8
        assert used == config["cache"]["views"] if name == "reuse" else used <= config["cache"]["views"]
    if name.startswith("reuse-pca"):  # the same world, teachers and recipe as its reuse world, in a cheaper codec
        same = load_config(folder / ("reuse.yaml" if name == "reuse-pca" else "reuse-world1.yaml"))
        assert {k: config[k] for k in ("data", "cache", "distill", "seeds")} == {k: same[k] for k in ("data", "cache", "distill", "seeds")}
        assert {t: {k: v for k, v in spec.items() if k != "extract"} for t, spec in config["teachers"].items()} == same["teachers"]
        assert all(spec["extract"] == {"codec": "f16", "patch_codec": "pca-32+int8"} for spec in config["teachers"].values())
    # the pipelines whose RESULTS.md runs predate UNIC's defaults pin what those runs had; the benchmark and the
    # ablations run UNIC's defaults, with the earlier recipe as an arm
    recipe = DistillOptions.from_dict(config["distill"])
    earlier = {k: getattr(recipe, k) for k in BEFORE_0_2}
    if name in ("crops", "dense", "views", "views-world1", "codecs"):
        assert earlier == BEFORE_0_2
    else:
        assert earlier == {k: getattr(DistillOptions, k) for k in BEFORE_0_2} != BEFORE_0_2
    if name in ("ablations", "ablations-world1"):
        assert config["arms"]["before-0.2"] == PINNED
    if name == "dense":  # 64 px for every model (an 8x8 grid at patch 8), with and without patch targets
        assert config["data"]["shapes"]["size"] == config["distill"]["img_size"] == 64
        assert {spec["resolution"] for spec in config["teachers"].values()} == {64}
        assert config["arms"]["summary-only"] == {"kinds": ["summary"]}


def test_eval_cli(trained_cache, tmp_path):
    data, cache = str(trained_cache / "data"), str(trained_cache / "cache.zarr")
    run = str(trained_cache / "runs" / "tiny" / "base" / "seed-0")
    r = run_cli("eval", data, "--cache", cache, "--student", f"s={run}", "--tasks", "colour,size,colour-seg", "--out",
                str(tmp_path), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "| colour | teacher |" in r.stdout and "| s | student |" in r.stdout and (tmp_path / "results.png").exists()
    assert "colour-seg (mIoU)" in r.stdout and "–" not in r.stdout  # teacher and student both scored on patch tokens
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["tasks"]) == {"colour", "size", "colour-seg"} and saved["dense"] == ["colour-seg"]
    assert {"miou", "miou_val"} <= set(saved["models"]["s"]["scores"]["colour-seg"])
    r = run_cli("eval", data, "--cache", cache, "--student", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "is not a finished distill run" in r.stderr and "Traceback" not in r.stderr


def test_student_eval_view_is_the_cached_view_0(trained_cache):
    from unic_cache.evaluation.images import EvalViews

    cache = Cache.open(str(trained_cache / "cache.zarr"))
    rows = np.array([0, 5, 17])
    views = EvalViews(str(trained_cache / "data"), cache.keys, cache.location, cache.image_size, rows, 32, cache.plan.policy)
    np.testing.assert_array_equal(views.params, cache.params(slice(0, 18))[rows, 0])
    image, params = views[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and np.array_equal(params, views.params[1])


def test_augmented_targets_are_exact_for_an_equivariant_teacher():
    """pipelines/augmented_targets.py on a teacher whose outputs are patch means of the pixels: a mirrored map is
    its flip, spliced maps its token-aligned CutMix, mixed outputs its MixUp (up to the mixed image's rounding);
    another image is far."""
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).parents[1] / "pipelines"))
    from augmented_targets import measure

    def patch_means(x):
        patch = torch.nn.functional.avg_pool2d(x.float(), 8).flatten(2).transpose(1, 2)  # (B, 16, 3)
        return patch.mean(1), patch

    patch_means.info = SimpleNamespace(grid=(4, 4))
    gen = torch.Generator().manual_seed(0)
    views = torch.randint(0, 256, (16, 3, 32, 32), generator=gen, dtype=torch.uint8)
    others = torch.randint(0, 256, (16, 3, 32, 32), generator=gen, dtype=torch.uint8)
    figures = measure(patch_means, (views, others))
    for what in ("flip (patch map mirrored)", "CutMix, token-aligned (maps spliced)"):
        assert figures[what][2] > 1 - 1e-9 and figures[what][3] < 1e-12, what
    assert figures["MixUp (outputs mixed)"][2] > 0.9999
    assert figures["scale: another image"][3] > 0.5  # (the cosine of positive means is near 1 for anything)


def test_knowledge_position_probes_every_place_of_a_student_as_eval_does(world, tmp_path):
    """pipelines/knowledge_position.py: each block's CLS and mean token, the embedding and each head's summary
    prediction are probed; the embedding scores what eval scores for the same run, the teachers' cached summaries
    what eval scores for them, and runs named alike are averaged."""
    import sys
    from pathlib import Path

    from unic_cache import Cache, EvalOptions, distill
    from unic_cache.evaluation.evaluate import Evaluator

    from .conftest import config

    sys.path.insert(0, str(Path(__file__).parents[1] / "pipelines"))
    from knowledge_position import headline, position, table

    root, cache = world
    distill(config(world, tmp_path / "run", steps=6))
    tasks = ["x", "count"]  # a ridge and a logistic probe
    found = position(str(root / "data"), cache, [("s", str(tmp_path / "run"))] * 2, tasks)
    places = set(found["runs"]["s"][0])
    teachers = Cache.open(cache).teacher_names()
    assert places == {f"block {i} {p}" for i in range(2) for p in ("cls", "mean")} | {"embedding"} | {
        f"head {t}" for t in teachers}
    ev = Evaluator(EvalOptions(data=str(root / "data"), cache=cache, tasks=tasks, progress=False))
    by_eval = ev.scores(ev.student_features(str(tmp_path / "run"), "s"), headline_only=True)
    for t in tasks:
        assert headline(found["runs"]["s"][0]["embedding"][t], "val") == pytest.approx(headline(by_eval[t], "val"), abs=1e-6)
        for teacher in teachers:
            assert found["teachers"][f"teacher {teacher}"][t] == ev.scores(ev.teacher_features(teacher), headline_only=True)[t]
    rows = table(found)
    assert len(rows) == 2 + len(teachers) + len(places) and all(" ± " in r for r in rows[2 + len(teachers):])


def test_reuse_curve_pairs_seeds_leaves_out_unlearnt_tasks_and_draws_the_limit_from_intervals():
    """pipelines/reuse_curve.py, the rule the replay limit is drawn by: gaps paired seed by seed, a task counted only
    when a teacher beats every reference by the margin and its spreads, and a limit only where every arm at or below
    it has the lower end of its 95 % interval above -TOLERANCE (a mean within it is not enough)."""
    import sys
    from pathlib import Path

    import numpy as np

    from unic_cache.evaluation.results import TOLERANCE, Results

    sys.path.insert(0, str(Path(__file__).parents[1] / "pipelines"))
    from reuse_curve import gaps, limit, seeds_needed, unlearnt

    def world(k8_gaps: list[float]) -> Results:
        results = Results(tasks={"colour": 4, "shape": 4})
        results.add("teacher", "teacher", {"colour": {"linear": 90.0, "linear_val": 90.0},
                                           "shape": {"linear": 27.0, "linear_val": 27.0}})
        online = [60.0, 62.0, 58.0, 61.0]  # seeds spread 4 points: only pairing makes the gaps small
        arms = {"online-e100": [0.0] * 4, "k16-e100": [-0.3, -0.2, -0.4, -0.3], "k8-e100": k8_gaps}
        for arm, gap in arms.items():
            for seed, (base, g) in enumerate(zip(online, gap)):
                results.add(arm, "student", {"colour": {"linear": base + g, "linear_val": base + g},
                                             "shape": {"linear": 25.0, "linear_val": 25.0},
                                             "agreement": {"t/summary": {"cosine_val": 0.9, "cosine_distilled": 0.92}}})
        return results

    references = Results(tasks={"colour": 4, "shape": 4})
    for value in (24.0, 26.0, 25.0):
        references.add("pixels", "student", {"colour": {"linear": value, "linear_val": value},
                                             "shape": {"linear": value, "linear_val": value}})
    assert unlearnt(world([0.0] * 4), references) == ["shape"]  # 27 is within 3 of the pixels' 25 ± 1
    rows = gaps(world([-0.5, -0.6, -0.4, -0.5]), {"shape"})
    assert [(r["arm"], r["reuse"]) for r in rows] == [("k8-e100", 12.5), ("k16-e100", 6.25)]
    assert np.allclose(rows[1]["val"], [-0.3, -0.2, -0.4, -0.3]) and np.allclose(rows[1]["overfit"], 2.0)
    assert limit({"C": rows}) == (12.5, []) and seeds_needed(rows[1]["val"]) == 2
    wide = gaps(world([0.5, -3.0, 1.0, -1.5]), {"shape"})  # mean -0.75, within TOLERANCE; its interval is not
    best, failed = limit({"C": wide, "D": rows})
    assert best == 6.25 and failed[0].startswith("world C k8-e100 (12.5 replays): -0.8 ± ") and TOLERANCE == 2.0


def test_view_overfitting_splits_replay_from_images_and_pairs_by_seed_number():
    """pipelines/view_overfitting.py: replay overfitting is the cached views' cosine minus the fresh views' on the
    distilled rows, image overfitting the fresh views' on distilled rows minus on val rows, both averaged over the
    targets; an arm is paired with the online arm of its epochs on the seed numbers both have."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "pipelines"))
    from view_overfitting import measure, table

    def report(cached: float, fresh: float, val: float) -> dict:
        return {t: {"cosine_distilled_cached": cached, "cosine_distilled_fresh": fresh, "cosine_val_fresh": val}
                for t in ("a/summary", "a/patch")}

    assert measure(report(0.92, 0.90, 0.89)) == pytest.approx(
        {"distilled_cached": 92, "distilled_fresh": 90, "val_fresh": 89, "replay": 2, "images": 1})
    found = {"online-e100": {0: measure(report(0.90, 0.90, 0.89)), 1: measure(report(0.91, 0.90, 0.89))},
             "k16-e100": {1: measure(report(0.93, 0.90, 0.88)), 2: measure(report(0.99, 0.90, 0.80))},
             "k1-e100": {1: measure({"a/summary": {"cosine_distilled_fresh": 0.9, "cosine_val_fresh": 0.8}})}}
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in table(found)[2:]}
    assert rows["online-e100"][-2:] == ["–", "– |"]
    assert rows["k1-e100"][4:] == ["–", "+10.00", "–", "+9.00 (1) |"]  # no cached view it trained on past view 0
    replay, images = rows["k16-e100"][-2:]  # seed 1 only: (3 - 1) and (2 - 1) points
    assert replay == "+2.00 (1)" and images == "+1.00 (1) |"
