"""The teachers users distil in 2026, loaded as they load them: one extract per family (random weights, reduced depth)
into one cache with SAM at another resolution and grid than the student's, a student distilled from it; UNIC's
release checkpoints read as released; the Hugging Face cache read offline; a tool-made student as a teacher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from unic_cache import Cache, DistillOptions, ExtractOptions, UserError, distill, extract
from unic_cache.models.teachers import build_teacher

from .conftest import make_shapes

# alias:size, timm arguments that shorten it, resolution (the student runs at 32 px on a 4x4 grid)
FAMILIES = [
    ("dinov3:small", {"depth": 1}, 32), ("siglip2:base", {"depth": 1}, 32), ("c-radio:base", {"depth": 1}, 32),
    ("c-radio-v4:so400m", {"depth": 1}, 32), ("pe-core:tiny", {"depth": 1}, 32), ("pe-spatial:tiny", {"depth": 1}, 32),
    ("aimv2:large", {"depth": 1}, 28), ("dfn-clip:huge", {"depth": 1}, 28),
    ("dinov3-convnext:tiny", {"depths": [1, 1, 1, 1]}, 64),
    ("sam:base", {"depth": 1, "global_attn_indexes": [0]}, 128),  # an 8x8 neck map, pooled by 4 when stored
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("families") / "data"
    make_shapes(out, n=16, size=32, seed=3, shard_size=8)
    return out


def test_one_extract_per_family_and_a_student_from_the_mixed_cache(data, tmp_path):
    cache = str(tmp_path / "cache.zarr")
    for teacher, args, resolution in FAMILIES:
        codec = {"patch_codec": "pool-4"} if teacher.startswith("sam") else {}
        report = extract(str(data), cache, ExtractOptions(teacher=teacher, weights="random", model_args=args,
                                                          resolution=resolution, views=2, progress=False, **codec))
        assert report.complete, teacher
    c = Cache.open(cache)
    sam = c.teacher("sam-base")
    assert (sam.info.resolution, tuple(sam.info.grid), tuple(sam.stored_grid), sam.info.dim) == (128, (8, 8), (2, 2), 256)
    assert c.teacher("dinov3-small").info.prefix_tokens == 5 and c.teacher("dinov3-small").info.summary_kind == "cls"
    radio, radio4 = c.teacher("c-radio-base"), c.teacher("c-radio-v4-so400m")
    assert radio.info.prefix_tokens == 8 and radio4.info.prefix_tokens == 10
    # RADIO's summary: its summary teachers' tokens concatenated (v3: CLIP, SigLIP2, DINOv2; v4: SigLIP2, DINOv3)
    assert radio.group["summary"].shape[-1] == 3 * 768 and radio.stats("summary")["mean"].shape == (3 * 768,)
    assert radio4.group["summary"].shape[-1] == 2 * 1152
    assert c.teacher("pe-core-tiny").info.summary_kind == "pooled"  # its attention pool, not its CLS token
    assert c.teacher("siglip2-base").info.summary_kind == "pooled"
    run = tmp_path / "run"
    last = distill(DistillOptions(data=str(data), cache=cache, out=str(run), student="vit_tiny_patch16_224", img_size=32,
                                  model_args={"depth": 2, "patch_size": 8}, steps=2, batch_size=8, workers=0,
                                  progress=False))
    assert last["step"] == 2 and torch.isfinite(torch.tensor(last["loss"]))
    assert len(json.loads((run / "config.json").read_text())["targets"]) == 2 * len(FAMILIES)


def test_a_student_this_tool_exported_is_the_teacher_of_the_next_run(world, tmp_path):
    from .conftest import config

    root, cache = world
    distill(config(world, tmp_path / "run", steps=2))
    model = tmp_path / "run" / "model"
    report = extract(str(root / "data"), str(tmp_path / "next.zarr"),
                     ExtractOptions(teacher=f"local-dir:{model}", views=1, progress=False))
    assert report.complete
    store = Cache.open(str(tmp_path / "next.zarr")).teacher("run")
    assert store.info.model_id == f"local-dir:{model.resolve()}" and store.info.summary_kind == "cls"
    from unic_cache.distillation.exported import load_student

    encoder, resolution = load_student(tmp_path / "run")
    assert store.info.resolution == resolution and tuple(store.info.grid) == tuple(encoder.patch_embed.grid_size)
    import hashlib
    assert store.info.weights_sha256 == hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()



@pytest.mark.parametrize("teacher, size, summary_tokens", [("c-radio", "base", 3), ("c-radio-v4", "so400m", 2)])
def test_radio_summary_is_its_summary_tokens_concatenated(teacher, size, summary_tokens):
    """RADIO's own model returns as its summary the CLS tokens of its summary teachers, flattened (NVlabs/RADIO
    radio_model.py ``_extract_final``), and its patch tokens after every prefix token."""
    model = build_teacher(teacher, size, weights="random", resolution=32, model_args={"depth": 1})
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    summary, patch = model(images)
    tokens = model.model.forward_features(model.pixels(images))
    assert torch.equal(summary, tokens[:, :summary_tokens].reshape(2, -1))
    assert torch.equal(patch, tokens[:, model.model.num_prefix_tokens:])
    assert model.info.width("summary") == summary_tokens * model.info.dim


def test_the_planner_counts_a_summary_of_several_tokens_as_extract_writes_it(data, tmp_path):
    """C-RADIO's summary is 3 tokens wide: `plan` sizes its arrays, codec and statistics (a 2304 x 2304 m2 per unit)
    within 5% of what extract leaves (before compression)."""
    import zarr

    from unic_cache.cache.audit import array_values
    from unic_cache.plan import PlanOptions, plan_report

    url = tmp_path / "radio.zarr"
    extract(str(data), str(url), ExtractOptions(teacher="c-radio", size="base", weights="random", model_args={"depth": 1},
                                                resolution=32, views=2, progress=False))
    disk = sum(v.nbytes for v in array_values(zarr.open_group(str(url), mode="r")).values())
    planned = json.loads(plan_report(PlanOptions(data=str(data), teachers=["c-radio:base"], resolution=32,
                                                 model_args={"depth": 1}, views=2, json=True))[0])
    assert abs(planned["total_bytes"] - disk) <= 0.05 * disk, (planned["total_bytes"], disk)

# --- UNIC's four teachers, read from files laid out as they are released -------------------------------------


def _plain(arch: str, **kw) -> dict[str, torch.Tensor]:
    """Random tensors of a timm architecture (2 blocks), as a plain timm state dict (classifier included)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, depth=2, num_classes=10, **kw)
    return {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}


def _features(teacher: str, weights: Path, resolution: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    model = build_teacher(teacher, weights=str(weights), resolution=resolution, model_args={"depth": 2})
    torch.manual_seed(1)
    images = torch.randint(0, 256, (2, 3, resolution, resolution), dtype=torch.uint8)
    return model(images)


def test_dino_ibot_and_deit3_release_layouts_give_the_plain_timm_features(tmp_path):
    """DINO's file is a plain state dict; iBOT's checkpoint_teacher.pth keeps it under "state_dict" (UNIC's
    teachers/config.py: ckpt_key); a DINO / iBOT training checkpoint under "teacher" with "backbone." keys and its
    projection head; DeiT-III's under "model" with "gamma_1/2" layer scales and a classifier. Each loads strictly
    and gives the features of the same tensors given as a timm state dict."""
    vit = {k: v for k, v in _plain("vit_base_patch16_224").items() if not k.startswith("head")}
    save_file(vit, str(tmp_path / "plain.safetensors"))
    reference = _features("dino", tmp_path / "plain.safetensors")
    head = {"head.mlp.0.weight": torch.randn(8, 768), "head.last_layer.weight_g": torch.randn(65536, 1)}
    layouts = {"dino_vitbase16_pretrain.pth": vit, "checkpoint_teacher.pth": {"state_dict": vit, "epoch": 800},
               "checkpoint.pth": {"teacher": {**{f"backbone.{k}": v for k, v in vit.items()}, **head},
                                  "student": {"backbone.cls_token": torch.zeros(1)}}}
    for name, layout in layouts.items():
        torch.save(layout, tmp_path / name)
        for alias in ("dino", "ibot"):
            got = _features(alias, tmp_path / name)
            assert all(torch.equal(a, b) for a, b in zip(got, reference)), (name, alias)
    deit = _plain("deit3_base_patch16_224")
    save_file(deit, str(tmp_path / "deit3.safetensors"))
    reference = _features("deit3", tmp_path / "deit3.safetensors")
    released = {k.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2"): v for k, v in deit.items()}
    assert any(".gamma_1" in k for k in released)
    torch.save({"model": released, "optimizer": {"lr": torch.tensor(0.1)}}, tmp_path / "deit_3_base_224_1k.pth")
    got = _features("deit3", tmp_path / "deit_3_base_224_1k.pth")
    assert all(torch.equal(a, b) for a, b in zip(got, reference))


def test_dbot_ft_runs_as_the_authors_code_runs_it(tmp_path):
    """dBOT-ft's 84.5_dbot_base_finetune.pth ("model": a ViT-B/16 with fc_norm and no final norm, and a classifier),
    read as released; its summary and patch tokens are those of UNIC's teachers/vit_dbotft.py forward_features:
    tokens = blocks(patch_embed(x) with the CLS, + pos_embed); summary = fc_norm(mean of the patch tokens);
    patch tokens = the last block's output, un-normed (its `norm` is deleted)."""
    state = _plain("vit_base_patch16_224", global_pool="avg")
    assert "fc_norm.weight" in state and "norm.weight" not in state
    torch.save({"model": state, "epoch": 99}, tmp_path / "84.5_dbot_base_finetune.pth")
    with pytest.raises(UserError, match="84.5_dbot_base_finetune.pth"):
        build_teacher("dbot-ft")  # not on the hub: the release is named
    summary, patch = _features("dbot-ft", tmp_path / "84.5_dbot_base_finetune.pth", 224)
    import timm

    net = timm.create_model("vit_base_patch16_224", pretrained=False, depth=2, num_classes=10, global_pool="avg").eval()
    net.load_state_dict(state)
    torch.manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    x = (images.float() / 255 - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():  # the authors' forward_features, line by line
        x = net.patch_embed(x)
        x = torch.cat((net.cls_token.expand(len(x), -1, -1), x), dim=1) + net.pos_embed
        for block in net.blocks:
            x = block(x)
        gap = net.fc_norm(x[:, 1:].mean(dim=1))
    torch.testing.assert_close(summary, gap, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(patch, x[:, 1:], rtol=1e-5, atol=1e-5)


# --- hub weights from the Hugging Face cache, with the network unreachable ---------------------------------------

NO_NETWORK = ("import socket, sys\n"
              "def refuse(*a, **k):\n"
              "    print('NETWORK ATTEMPT', file=sys.stderr)\n"
              "    raise OSError('network unreachable in this test')\n"
              "socket.getaddrinfo = refuse\n"
              "socket.socket.connect = refuse\n"
              "from unic_cache.cli import main\n"
              "sys.argv = ['unic-cache'] + sys.argv[1:]\n"
              "main()\n")


def _hub_cache(root: Path, repo: str, tensors: dict[str, torch.Tensor]) -> None:
    """``root`` laid out as ``huggingface-cli download REPO model.safetensors`` leaves a Hugging Face cache."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    save_file(tensors, str(folder / "snapshots" / commit / "model.safetensors"))


def test_hub_weights_load_from_the_hugging_face_cache_with_no_network_attempt(data, tmp_path):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_dinov3", pretrained=False, num_classes=0, depth=1)
    _hub_cache(tmp_path / "hub", "timm/vit_small_patch16_dinov3.lvd1689m", model.state_dict())
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "PATH": "/usr/bin:/bin", "HF_HUB_DISABLE_TELEMETRY": "1"}
    args = [sys.executable, "-c", NO_NETWORK, "extract", str(data), "--cache", str(tmp_path / "c.zarr"), "--teacher",
            "dinov3:small", "--model-arg", "depth=1", "--resolution", "32", "--views", "1", "--no-progress"]
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "NETWORK ATTEMPT" not in out.stderr, out.stderr
    info = Cache.open(str(tmp_path / "c.zarr")).teacher("dinov3-small").info
    import hashlib
    blob = next((tmp_path / "hub").rglob("model.safetensors"))
    assert info.weights == "hub" and info.weights_sha256 == hashlib.sha256(blob.read_bytes()).hexdigest()
    missing = subprocess.run([*args[:-9], "--cache", str(tmp_path / "d.zarr"), "--teacher", "siglip2:base",
                              "--model-arg", "depth=1", "--resolution", "32", "--views", "1", "--no-progress"],
                             capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and "cannot be reached" in missing.stderr
    assert "huggingface-cli download timm/vit_base_patch16_siglip_224.v2_webli model.safetensors" in missing.stderr
