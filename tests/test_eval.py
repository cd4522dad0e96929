"""Probes, labels and the split: separable features score 100, random labels score chance; dense probes
and label maps; the dataset's one split."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unic_cache import UserError
from unic_cache.evaluation.dense import dense_probe, miou, pool_majority, view_maps
from unic_cache.evaluation.labels import IGNORE, SplitRule, read_labels, read_split
from unic_cache.evaluation.probes import kmeans_nmi, knn_accuracy, linear_probe, nmi, ridge_r2
from unic_cache.cache.pixels import crop_labels as replay_labels
from unic_cache.evaluation.results import Results, model_colours
from unic_cache.cache.sources import open_source


def _splits(n: int) -> list[np.ndarray]:
    split = SplitRule().rows(np.array([f"k{i}" for i in range(n)]))
    return [np.flatnonzero(split == s) for s in range(3)]


def _parts(x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for rows in _splits(len(x)):
        out += [x[rows], y[rows]]
    return out


def test_separable_features_score_100():
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (400,), generator=gen)
    x = torch.nn.functional.one_hot(y, 5).float() * 3 + 0.3 * torch.randn(400, 5, generator=gen)
    x = torch.cat([x, torch.randn(400, 11, generator=gen)], 1)  # plus uninformative dimensions
    xtr, ytr, xva, yva, xte, yte = _parts(x, y)
    assert linear_probe(xtr, ytr, xva, yva, xte, yte, 5)[0] == 100.0
    assert knn_accuracy(torch.cat([xtr, xva]), torch.cat([ytr, yva]), xte, yte, 5) == 100.0
    assert kmeans_nmi(x[:, :5], y, 5) > 99.0


def test_random_labels_score_chance():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1500, 16, generator=gen)
    y = torch.randint(0, 4, (1500,), generator=gen)  # independent of x
    xtr, ytr, xva, yva, xte, yte = _parts(x, y)
    assert abs(linear_probe(xtr, ytr, xva, yva, xte, yte, 4)[0] - 25) < 8
    assert abs(knn_accuracy(torch.cat([xtr, xva]), torch.cat([ytr, yva]), xte, yte, 4) - 25) < 8
    assert kmeans_nmi(x, y, 4) < 3


def test_ridge_r2_and_nmi():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(600, 8, generator=gen)
    y = x @ torch.arange(1.0, 9.0) + 0.01 * torch.randn(600, generator=gen)
    assert ridge_r2(*_parts(x, y))[0] > 99.9
    assert ridge_r2(*_parts(x, torch.randn(600, generator=gen)))[0] < 5
    a = torch.tensor([0, 0, 1, 1, 2, 2])
    assert nmi(a, torch.tensor([5, 5, 3, 3, 9, 9])) == pytest.approx(100.0)
    assert nmi(a, torch.tensor([0, 1, 0, 1, 0, 1])) == pytest.approx(0.0, abs=1e-9)


def test_split_is_a_stable_function_of_the_key():
    keys = np.array([f"sample{i:08d}" for i in range(5000)])
    split = SplitRule().rows(keys)
    assert np.array_equal(split[:100], SplitRule().rows(keys[:100]))  # adding rows moves no row
    assert np.allclose(np.bincount(split) / len(keys), [0.6, 0.2, 0.2], atol=0.03)
    assert not np.array_equal(split, SplitRule(seed=1).rows(keys))
    assert np.allclose(np.bincount(SplitRule(2, (0.5, 0.3)).rows(keys)) / len(keys), [0.5, 0.3, 0.2], atol=0.03)


def test_labels_from_shapes_json(shapes_dir):
    source = open_source(str(shapes_dir))
    index = source.index(progress=False)
    labels = read_labels(source, index.keys)
    assert [t.name for t in labels.tasks] == ["shape", "colour", "texture", "count", "size", "x", "y", "shape-seg",
                                             "colour-seg"]
    assert [t.name for t in labels.tasks if t.dense] == ["shape-seg", "colour-seg"]
    with tarfile.open(shapes_dir / "shapes-000001.tar") as tar:
        first = json.loads(tar.extractfile("sample00000010.json").read())
    row = list(index.keys).index("sample00000010")
    assert labels.values["shape"][row] == first["shape"] and labels.values["x"][row] == first["x"]
    assert labels.known("colour").all() and labels.known("shape-seg").all()
    for task, label in (("shape-seg", "shape"), ("colour-seg", "colour")):  # background, or the object's class
        for r in range(index.n):
            values = set(np.unique(np.asarray(Image.open(io.BytesIO(labels.maps[task][r])))))
            assert values == {0, 1 + labels.values[label][r]}  # every world object covers some pixels


def test_labels_from_class_folders(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / cls / f"{i}.png")
    source = open_source(str(tmp_path))
    index = source.index(progress=False)
    labels = read_labels(source, index.keys)
    assert [t.name for t in labels.tasks] == ["class"] and labels.tasks[0].classes == 2
    assert list(labels.values["class"]) == [0, 0, 0, 1, 1, 1]
    (tmp_path / "split.json").write_text(json.dumps({"seed": 3, "fractions": [0.7, 0.1]}))  # at the folder's root
    assert read_split(open_source(str(tmp_path))) == SplitRule(3, (0.7, 0.1))


def test_results_table_chart_and_claims(tmp_path):
    results = Results({"shape": 6, "size": 0})
    results.add("a", "teacher", {"shape": {"linear": 90, "knn": 80, "nmi": 50}, "size": {"r2": 40}})
    results.add("b", "teacher", {"shape": {"linear": 50, "knn": 40, "nmi": 10}, "size": {"r2": 80}})
    for seed, shape in enumerate((89.0, 91.0)):
        results.add("s", "student", {"shape": {"linear": shape, "knn": 80, "nmi": 50}, "size": {"r2": 79}})
    claim = results.claims()["s"]
    assert claim["gap_to_best_teacher"] == pytest.approx({"shape": 0.0, "size": -1.0})
    assert claim["within_tolerance"] and claim["beats_every_teacher_on_average"]
    paths = results.save(tmp_path)
    assert "90.0 ± 1.4" in paths["markdown"].read_text() and paths["chart"].stat().st_size > 1000
    assert Results.load(paths["json"]).models == results.models
    with pytest.raises(UserError, match="names both a teacher and a student"):
        results.add("a", "student", {"shape": {"linear": 1}})


@pytest.mark.parametrize("n", [3, 13, 20, 33])
def test_every_model_in_the_chart_has_its_own_colour(n):
    colours = model_colours(n)
    assert colours.shape == (n, 4) and len({tuple(c) for c in colours.round(3)}) == n


def test_results_without_a_score_show_a_dash_and_leave_the_task_out_of_claims():
    results = Results({"shape": 6, "seg": 3}, dense=["seg"])
    results.add("a", "teacher", {"shape": {"linear": 90, "linear_val": 88}})  # cached without patch tokens
    results.add("b", "teacher", {"shape": {"linear": 60, "linear_val": 61}, "seg": {"miou": 40, "miou_val": 41}})
    results.add("s", "student", {"shape": {"linear": 89, "linear_val": 87}, "seg": {"miou": 50, "miou_val": 52}})
    assert np.isnan(results.average("a")) and results.best_teacher("seg") == 40
    assert results.claims()["s"]["gap_to_best_teacher"] == pytest.approx({"shape": -1.0, "seg": 10.0})
    text = results.markdown()
    assert "seg (mIoU)" in text and "| a | teacher | 90.0 | – | – |" in text
    assert "| s | student | 87.0 | 52.0 | 69.5 |" in text  # the validation table
    plain = Results({"shape": 6})
    plain.add("a", "teacher", {"shape": {"linear": 90}})
    assert "no dense task" in plain.markdown()


def test_pool_majority_and_miou_by_hand():
    maps = np.zeros((1, 4, 4), np.uint8)
    maps[0, :2, :2] = [[1, 1], [1, 0]]  # token 0: class 1 wins 3 to 1
    maps[0, :2, 2:] = [[2, 2], [0, 0]]  # token 1: a tie, the lower class wins
    maps[0, 2:, :2] = IGNORE  # token 2: ignored
    maps[0, 2:, 2:] = [[IGNORE, 2], [2, 7]]  # token 3: 7 is no class; class 2 ties with ignored pixels and wins
    assert pool_majority(maps, (2, 2), 3).tolist() == [[1, 0, -1, 2]]
    assert pool_majority(np.zeros((2, 5, 7), np.uint8), (2, 3), 3).shape == (2, 6)  # partial cells
    target, pred = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 1, 1, 0])
    # IoU: class 0 = 1/3, class 1 = 2/3, class 2 = 0/1
    assert miou(pred, target, 3) == pytest.approx(100 / 3)
    assert miou(target, target, 5) == 100.0  # absent classes are left out


def test_crop_labels_follows_the_view_geometry():
    labels = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    identity = np.array([0, 0, 1, 1, 0] + [1, 1, 1, 0] + [0, 1, 2, 3] + [0, 0, 0], np.float32)
    assert np.array_equal(replay_labels(labels, identity, 8), np.asarray(labels))
    flip_crop = identity.copy()
    flip_crop[:5] = [0.5, 0, 0.5, 0.5, 1]
    assert np.array_equal(replay_labels(labels, flip_crop, 4), np.asarray(labels)[:4, 4:][:, ::-1])
    maps = view_maps({0: _png_bytes(labels)}, np.array([0, 1]), np.stack([identity, identity]), 8)
    assert np.array_equal(maps[0], np.asarray(labels)) and (maps[1] == IGNORE).all()  # row 1 has no map


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_dense_probe_sees_what_the_tokens_carry():
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 4, (300, 16), generator=gen)
    labels[torch.rand(300, 16, generator=gen) < 0.1] = -1  # unlabelled tokens are left out
    informative = torch.nn.functional.one_hot(labels.clamp_min(0), 4).float() * 2 + 0.5 * torch.randn(300, 16, 4, generator=gen)
    noise = torch.randn(300, 16, 4, generator=gen)
    split = SplitRule().rows(np.array([f"k{i}" for i in range(300)]))
    assert dense_probe(informative, labels, split, 4)[0] > 90
    assert dense_probe(noise, labels, split, 4)[0] < 25


def test_the_split_is_read_from_beside_the_data(shapes_dir, tmp_path):
    source = open_source(str(shapes_dir))
    assert read_split(source) == SplitRule()  # make-shapes recorded its default
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(shapes_dir, copy)
    (copy / "split.json").write_text(json.dumps({"seed": 5, "fractions": [0.5, 0.25]}))
    assert read_split(open_source(str(copy))) == SplitRule(5, (0.5, 0.25))
    (copy / "split.json").write_text(json.dumps({"seed": 5, "fractions": [0.9, 0.25]}))
    with pytest.raises(UserError, match="sum to less than 1"):
        read_split(open_source(str(copy)))
    (copy / "split.json").unlink()
    assert read_split(open_source(str(copy))) == SplitRule()


def test_head_agreement_rises_with_training_and_says_when_val_rows_were_distilled_on(world, tmp_path):
    """eval's label-free measure: a student trained longer predicts its teachers' cached targets better on the
    rows it distilled on, every target of the run is compared in every group, rows of the run's own cache count as
    seen, and a cached view it was trained on fits better than fresh views of the same rows."""
    from unic_cache import EvalOptions, distill
    from unic_cache.evaluation.results import GROUPS
    from unic_cache.evaluation.evaluate import Evaluator

    from .conftest import config

    root, cache = world
    runs = {}
    for name, steps in (("short", 1), ("long", 60)):
        distill(config(world, tmp_path / name, steps=steps, teacher_drop=0.0))
        runs[name] = str(tmp_path / name)
    ev = Evaluator(EvalOptions(data=str(root / "data"), cache=cache, progress=False, tasks=["shape"]))
    reports = {name: ev.student_scores(run, name)["agreement"] for name, run in runs.items()}
    targets = set(json.loads((tmp_path / "long" / "config.json").read_text())["targets"])
    assert set(reports["long"]) == targets and len(targets) == 4
    for target, metrics in reports["long"].items():
        assert metrics["seen"] == 1.0
        assert {f"{m}_{g}" for m in ("cosine", "error") for g in GROUPS} <= set(metrics)
        assert metrics["cosine_distilled"] > reports["short"][target]["cosine_distilled"] + 0.05, (target, metrics)
        assert metrics["error_distilled"] < reports["short"][target]["error_distilled"], (target, metrics)
    replayed = np.mean([m["cosine_distilled_cached"] - m["cosine_distilled_fresh"] for m in reports["long"].values()])
    assert replayed > 0.02, reports["long"]  # a view it trained on (the cache holds 2) fits better than fresh ones


def test_head_agreement_on_a_fresh_view_rebuilds_the_teachers_targets_as_extract_stores_them(world, tmp_path):
    """A view the cache does not hold is compared against the teachers rebuilt and run on it, their outputs passed
    through the cache's codecs: on a cache of one view, view 1 computed so matches view 1 read from a cache that
    holds it; a fresh view is another view; a teacher that cannot be rebuilt leaves the fresh groups out."""
    from unic_cache import ExtractOptions, distill, extract
    from unic_cache.cache.store import Cache
    from safetensors.torch import load_file, save_file

    from unic_cache.evaluation.agreement import FRESH_VIEW, HeadAgreement

    from .conftest import SMALL8, TINY, config

    root, cache = world
    distill(config(world, tmp_path / "run", steps=20, teacher_drop=0.0))
    one = str(tmp_path / "one.zarr")  # the same teachers and plan, view 0 only
    held = Cache.open(cache)
    for name in held.teacher_names():
        info = held.teacher(name).info
        arch = TINY if TINY in info.model_id else SMALL8
        weights = tmp_path / f"{name}.safetensors"  # a copy, changed below
        shutil.copy(info.weights, weights)
        extract(str(root / "data"), one, ExtractOptions(teacher=f"timm:{arch}", resolution=info.resolution,
                                                        weights=str(weights), model_args={"depth": 2}, views=1,
                                                        unit_rows=8, progress=False))
    agreement, rows = HeadAgreement(tmp_path / "run"), np.flatnonzero(~held.bad)
    read = agreement.compare(held, str(root / "data"), rows, 1)
    rebuilt = agreement.compare(Cache.open(one), str(root / "data"), rows, 1)
    fresh = agreement.compare(held, str(root / "data"), rows, FRESH_VIEW)
    assert set(read) == set(rebuilt) == set(fresh) and len(read) == 4
    for target in read:
        assert abs(read[target]["cosine"] - rebuilt[target]["cosine"]) < 2e-3, (target, read[target], rebuilt[target])
        assert abs(read[target]["error"] - rebuilt[target]["error"]) < 5e-3, (target, read[target], rebuilt[target])
        assert abs(read[target]["cosine"] - fresh[target]["cosine"]) > 1e-4, target
    for name in held.teacher_names():  # the weights change after extraction: the fresh groups cannot be measured
        copy = Path(Cache.open(one).teacher(name).info.weights)
        save_file(load_file(str(copy)), str(copy), metadata={"changed": "yes"})
    split = read_split(open_source(str(root / "data"))).rows(held.keys)[rows]
    report = HeadAgreement(tmp_path / "run").report(Cache.open(one), str(root / "data"), split, rows)
    assert all("cosine_val" in m and "cosine_val_fresh" not in m and "cosine_distilled_fresh" not in m
               for m in report.values()), report


def test_a_results_folder_takes_the_temp_name_a_kill_cut_and_still_refuses_a_users_file(tmp_path):
    """eval's --out: results, and the temp name of one a kill cut between its write and its rename (results are
    written atomically), are ours; a user's file, even one named like our temp name of a file that is not a result,
    is refused in one line."""
    from unic_cache.distillation.run_files import tmp_name
    from unic_cache.evaluation.results import check_results_folder

    (tmp_path / "results.md").write_text("| model |")
    tmp_name(tmp_path / "results.json").write_text("{\"tasks\"")  # the kill came before the rename
    check_results_folder(tmp_path)
    users = tmp_name(tmp_path / "labels.csv")
    users.write_text("a,b")
    with pytest.raises(UserError, match=rf"holds files eval did not write \({users.name}\)"):
        check_results_folder(tmp_path)
