"""Probes, labels and the split: separable features score 100, random labels score chance."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from unic_cache import UserError
from unic_cache.evaluation.labels import read_labels, split_rows
from unic_cache.evaluation.probes import kmeans_nmi, knn_accuracy, linear_probe, nmi, ridge_r2
from unic_cache.evaluation.results import Results
from unic_cache.cache.sources import open_source


def _splits(n: int) -> list[np.ndarray]:
    split = split_rows(np.array([f"k{i}" for i in range(n)]))
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
    split = split_rows(keys)
    assert np.array_equal(split[:100], split_rows(keys[:100]))  # adding rows moves no row
    assert np.allclose(np.bincount(split) / len(keys), [0.6, 0.2, 0.2], atol=0.03)
    assert not np.array_equal(split, split_rows(keys, seed=1))


def test_labels_from_shapes_json(shapes_dir):
    source = open_source(str(shapes_dir))
    index = source.index(progress=False)
    labels = read_labels(source, index.keys)
    assert [t.name for t in labels.tasks] == ["shape", "colour", "texture", "count", "size", "x", "y"]
    with tarfile.open(shapes_dir / "shapes-000001.tar") as tar:
        first = json.loads(tar.extractfile("sample00000010.json").read())
    row = list(index.keys).index("sample00000010")
    assert labels.values["shape"][row] == first["shape"] and labels.values["x"][row] == first["x"]
    assert labels.known("colour").all()


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
