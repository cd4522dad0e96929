"""UNIC's student and optimizer, checked against loops written from UNIC's description (naver/unic
``modeling/unic.py``, ``utils.get_params_groups``, ``utils.standard_normalize``), not from this code."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from unic_cache import Cache
from unic_cache.distillation.loader import DistillStream, Selection
from unic_cache.distillation.normalize import RunningNorm, running_momentum
from unic_cache.distillation.optim import decay_groups
from unic_cache.distillation.recipe import Distiller
from unic_cache.models.student import Student

from .conftest import HANG_GUARD, STUDENT, TINY, config

TARGETS = {"a/summary": (24, None), "a/patch": (24, (2, 2)), "b/summary": (40, None)}
ARGS = {"depth": 3, "embed_dim": 64, "num_heads": 2, "patch_size": 8}


def _student(**kw) -> Student:
    torch.manual_seed(0)
    return Student("vit_tiny_patch16_224", 16, TARGETS, drop_path=0.0, model_args=ARGS, **kw).eval()


def test_ladder_is_unics_projectors_on_raw_block_outputs():
    """Per block, per teacher and token type: Linear -> GELU -> Linear (no norm) on the block's raw output (CLS
    token, patch tokens), summed over blocks; hidden 768, the last block's 3072; trunc-normal 0.02, zero bias."""
    student = _student()
    enc = student.encoder
    for name, head in student.heads.items():
        for b, mlp in enumerate(head.mlps):
            kinds = [type(m) for m in mlp]
            assert kinds == [nn.Linear, nn.GELU, nn.Linear], kinds
            assert mlp[0].out_features == (3072 if b == 2 else 768)
            assert all(torch.count_nonzero(m.bias) == 0 for m in (mlp[0], mlp[2]))
            assert 0.015 < float(mlp[0].weight.detach().std()) < 0.025
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    # the loop: the encoder's tokens block by block, no final norm, each block's output into its projectors
    with torch.no_grad():
        tokens = enc.norm_pre(enc._pos_embed(enc.patch_embed(student.pixels(x))))
        cls, patch = [], []
        for block in enc.blocks:
            tokens = block(tokens)
            cls.append(tokens[:, 0])
            patch.append(tokens[:, enc.num_prefix_tokens:])
        want = {}
        for name in TARGETS:
            head = student.heads[name.replace("/", "__")]
            feats = patch if name.endswith("patch") else cls
            want[name] = sum(mlp[2](torch.nn.functional.gelu(mlp[0](f))) for mlp, f in zip(head.mlps, feats))
        got = student(x)
    for name in TARGETS:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in enc.norm.parameters())  # outside the graph: never trained


def test_prenorm_head_and_student_width_are_the_earlier_head():
    student = _student(lop_head="prenorm", lop_hidden="student")
    mlp = student.heads["a__patch"].mlps[0]
    assert [type(m) for m in mlp] == [nn.LayerNorm, nn.Linear, nn.GELU, nn.Linear]
    assert mlp[1].out_features == 64 and student.heads["a__patch"].mlps[-1][1].out_features == 256
    assert all(p.requires_grad for p in student.encoder.norm.parameters())
    x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        last = student.encoder.forward_features(student.pixels(x))  # after the final norm
        head = student.heads["b__summary"]
        inter = student.encoder.forward_intermediates(student.pixels(x), indices=[0, 1], norm=False, intermediates_only=True,
                                                      return_prefix_tokens=True, output_fmt="NLC")
        want = head.mlps[0](inter[0][1][:, 0]) + head.mlps[1](inter[1][1][:, 0]) + head.mlps[2](last[:, 0])
        torch.testing.assert_close(student(x)["b/summary"], want, rtol=1e-5, atol=1e-6)


def test_weight_decay_groups_are_unics():
    """UNIC: every parameter decays but biases and 1-D ones; the earlier rule also spared pos_embed and tokens."""
    student = _student()
    params = {n: p for n, p in student.named_parameters() if p.requires_grad}
    unic = {n for n, p in params.items() if not (n.endswith(".bias") or len(p.shape) == 1)}
    assert decay_groups(params) == unic
    assert {"encoder.pos_embed", "encoder.cls_token"} <= unic
    earlier = decay_groups(params, tokens=False)
    assert earlier == unic - {"encoder.pos_embed", "encoder.cls_token"}


def test_running_statistics_follow_unics_rule():
    """Each batch standardised with the statistics before it; then mean/std (over samples and tokens, unbiased
    std + eps) move toward the batch's with a momentum falling from 1.0 to 0.001 on a cosine."""
    total, eps = 7, 1e-6
    assert running_momentum(0, total) == 1.0 and running_momentum(total, total) == pytest.approx(0.001)
    rng = np.random.default_rng(0)
    batches = [torch.as_tensor(rng.normal(3.0, 2.0, (5, 4, 6)), dtype=torch.float32) for _ in range(total)]
    norm = RunningNorm(6)
    mean, std = torch.zeros(6), torch.ones(6)
    for step, x in enumerate(batches):
        m = 0.001 + 0.5 * (1.0 - 0.001) * (1 + math.cos(math.pi * step / total))
        want = (x - mean) / (std + eps)
        flat = x.reshape(-1, 6)
        mean = mean * (1 - m) + flat.mean(0) * m
        std = std * (1 - m) + (flat.std(0, unbiased=True) + eps) * m
        norm.momentum = running_momentum(step, total)
        torch.testing.assert_close(norm(x), want)
    torch.testing.assert_close(norm.mean, mean)
    torch.testing.assert_close(norm.std, std)


def test_final_norm_stays_untrained_and_running_stats_resume_exactly(world, tmp_path):
    run = config(world, tmp_path / "run", steps=4, norm_stats="running", checkpoint_every=2, teacher_drop=0.5)
    distiller = Distiller(run)
    groups = {id(p) for g in distiller.opt.param_groups for p in g["params"]}
    assert all(id(p) not in groups for p in distiller.student.encoder.norm.parameters())
    distiller.run()
    encoder = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert torch.equal(encoder["norm.weight"], torch.ones_like(encoder["norm.weight"]))
    assert torch.equal(encoder["norm.bias"], torch.zeros_like(encoder["norm.bias"]))
    heads = load_file(str(tmp_path / "run" / "heads.safetensors"))
    stats = [k for k in heads if k.startswith("norms.") and k.endswith(".std")]
    assert stats and not any(torch.equal(heads[k], torch.ones_like(heads[k])) for k in stats)  # they moved
    import shutil

    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-00000004")  # killed after the step-2 checkpoint
    (tmp_path / "run" / "heads.safetensors").rename(tmp_path / "straight-heads.safetensors")
    Distiller(config(world, tmp_path / "run", steps=4, norm_stats="running", checkpoint_every=2, teacher_drop=0.5,
                     resume=True)).run()
    resumed, straight = load_file(str(tmp_path / "run" / "heads.safetensors")), load_file(str(tmp_path / "straight-heads.safetensors"))
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_running_statistics_are_gathered_across_processes(world, tmp_path):
    """Under torchrun, the first step's statistics (momentum 1) are those of every process's batch together."""
    root, cache = world
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29537",
           "-m", "unic_cache", "distill", str(root / "data"), "--cache", cache, "--out", str(out), "--teachers", TINY,
           "--student", STUDENT, "--img-size", "32", "--model-arg", "depth=2", "--steps", "1", "--batch-size", "4",
           "--workers", "0", "--no-progress", "--norm-stats", "running"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    selection = Selection.of(Cache.open(cache), [TINY], ["summary"])
    first = [next(iter(DistillStream(str(root / "data"), cache, selection, 32, 4, rank=r, world_size=2).batches()))
             for r in (0, 1)]
    both = torch.cat([b[f"{TINY}/summary"].float() for b in first])
    heads = load_file(str(out / "heads.safetensors"))
    torch.testing.assert_close(heads[f"norms.{TINY}__summary.mean"], both.mean(0))
    torch.testing.assert_close(heads[f"norms.{TINY}__summary.std"], both.std(0) + 1e-6)


def test_runs_made_before_the_unic_defaults_resume_with_their_options(world, tmp_path):
    """A checkpoint whose record predates the options (0.1) resumes with the options it ran with, pinned, and
    is refused in one line under today's defaults."""
    import json
    import shutil

    from unic_cache import UserError
    from unic_cache.distillation.options import BEFORE_0_2

    out = tmp_path / "old"
    Distiller(config(world, out, steps=4, checkpoint_every=2, **BEFORE_0_2)).run()
    shutil.rmtree(out / "checkpoints" / "step-00000004")
    state_file = out / "checkpoints" / "step-00000002" / "state.json"
    state = json.loads(state_file.read_text())
    state["resume"] = {k: v for k, v in state["resume"].items() if k not in BEFORE_0_2}  # as 0.1 wrote them
    state_file.write_text(json.dumps(state))
    record = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({k: v for k, v in record.items() if k not in BEFORE_0_2}))
    with pytest.raises(UserError, match="other options.*lop_head: prenorm vs unic"):
        Distiller(config(world, out, steps=4, checkpoint_every=2, resume=True))
    assert Distiller(config(world, out, steps=4, checkpoint_every=2, resume=True, **BEFORE_0_2)).run()["step"] == 4
