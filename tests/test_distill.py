import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
import zarr
from safetensors.torch import load_file

from unic_cache import Cache, UserError
from unic_cache.models import teachers as teachers_module
from unic_cache.cache.views import REPLAY_EVIDENCE, REPLAY_LIMIT, views_for
from unic_cache.distillation import notes
from unic_cache.distillation.augment import mixup
from unic_cache.distillation.recipe import Distiller, distill
from unic_cache.distillation.loader import DistillStream, Selection

from .conftest import HANG_GUARD, SMALL8, STUDENT, TINY, VIEWS_DISTILL as VIEWS, config, popen_for_ctrl_c

def test_distill_never_builds_a_teacher_and_the_loss_decreases(world, tmp_path, monkeypatch):
    teacher_ids = {TINY, SMALL8}
    real_create = timm.create_model

    def guarded_create(name, *args, **kwargs):
        assert name not in teacher_ids, f"a teacher ({name}) was built during distill"
        return real_create(name, *args, **kwargs)

    def no_teacher(*args, **kwargs):
        raise AssertionError("build_teacher called during distill")

    monkeypatch.setattr(timm, "create_model", guarded_create)
    monkeypatch.setattr(teachers_module, "build_teacher", no_teacher)
    monkeypatch.setattr(teachers_module, "_create", no_teacher)
    last = distill(config(world, tmp_path / "run", steps=40, teacher_drop=0.0))
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == 40 and last["step"] == 40
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["teachers"] == [SMALL8, TINY] and record["total_steps"] == 40


def test_the_student_is_a_model_folder_timm_loads_as_it_is(world, tmp_path):
    """A student of non-default size and depth: ``local-dir:RUN/model`` rebuilds it exactly (every tensor, outputs)."""
    args = {"depth": 1, "patch_size": 8, "embed_dim": 64, "num_heads": 2}
    distiller = Distiller(config(world, tmp_path / "run", steps=2, model_args=args, img_size=24))
    distiller.run()
    folder = tmp_path / "run" / "model"
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    trained = distiller.student.encoder.eval()
    assert model.state_dict().keys() == trained.state_dict().keys()
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())
    assert len(model.blocks) == 1 and model.patch_embed.patch_size == (8, 8) and model.num_features == 64
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == STUDENT and cfg["pretrained_cfg"]["input_size"] == [3, 24, 24]
    assert cfg["pretrained_cfg"]["mean"] == list(trained.pretrained_cfg["mean"]) and cfg["pretrained_cfg"]["crop_pct"] == 0.875
    card = (folder / "README.md").read_text()
    cache = Cache.open(world[1])
    for t in (SMALL8, TINY):
        assert t in card and cache.teacher(t).attrs["weights_sha256"][:16] in card
    assert cache.attrs["fingerprint"][:16] in card and '"lop_head": "unic"' in card
    heads = load_file(str(tmp_path / "run" / "heads.safetensors"))
    assert any(k.startswith("heads.") for k in heads) and any(k.startswith("norms.") for k in heads)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["kinds"] == ["patch", "summary"] and record["version"] and record["started"]


def test_resume_is_exact(world, tmp_path):
    distill(config(world, tmp_path / "straight", steps=6, teacher_drop=0.5))
    distill(config(world, tmp_path / "halves", steps=6, checkpoint_every=3, teacher_drop=0.5))
    ckpt = tmp_path / "halves" / "checkpoints"
    for extra in list(ckpt.iterdir()):
        if extra.name.endswith("0006"):
            import shutil
            shutil.rmtree(extra)  # keep only the step-3 checkpoint, as if the run had been killed after it
    distill(config(world, tmp_path / "halves", steps=6, checkpoint_every=3, teacher_drop=0.5, resume=True))
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "step-00000006" / "model.safetensors"))
    b = load_file(str(tmp_path / "halves" / "checkpoints" / "step-00000006" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_views_cycle_and_each_row_once_per_epoch(world):
    root, cache_url = world
    cache = Cache.open(cache_url)
    stream = DistillStream(str(root / "data"), cache_url, Selection.of(cache, [TINY]), 32, 4, block_rows=4)
    seen = {}
    for epoch in range(VIEWS):
        order = stream.epoch_order(epoch)
        rows = np.concatenate([r for _, r in order])
        assert sorted(rows.tolist()) == list(range(32))  # every good row once per epoch
        for view, block in order:
            for row in block:
                seen.setdefault(int(row), set()).add(view)
    assert all(v == set(range(VIEWS)) for v in seen.values())
    samples = [s for _, s in zip(range(32), stream)]
    assert sorted(s["row"] for s in samples) == list(range(32))
    first = samples[0]
    summary = cache.teacher(TINY).group["summary"][first["row"], first["view"]]
    assert np.array_equal(first[f"{TINY}/summary"].numpy(), summary)
    assert first["image"].shape == (3, 32, 32) and first[f"{TINY}/patch"].shape == (4, 192)


def test_misaligned_row_is_an_error(world, tmp_path):
    root, cache_url = world
    import shutil

    bad = tmp_path / "misaligned.zarr"
    shutil.copytree(cache_url, bad)
    location = zarr.open_group(str(bad), mode="a")["index/location"]
    loc = location[...]
    loc[[3, 4]] = loc[[4, 3]]  # two rows now point at each other's image bytes
    location[...] = loc
    with pytest.raises(UserError, match="index mismatch"):
        distill(config(world, tmp_path / "run", cache=str(bad), steps=8))


def test_bad_options_are_user_errors(world, tmp_path):
    with pytest.raises(UserError, match="exactly one of"):
        distill(config(world, tmp_path / "r", steps=None))
    with pytest.raises(UserError, match="unknown --loss"):
        distill(config(world, tmp_path / "r", loss="mse"))
    with pytest.raises(UserError, match="--lop-blocks"):
        distill(config(world, tmp_path / "r", lop_blocks="7"))
    with pytest.raises(UserError, match="no teacher"):
        distill(config(world, tmp_path / "r", teachers=["nope"]))
    with pytest.raises(UserError, match="kinds are summary, patch"):
        distill(config(world, tmp_path / "r", kinds=["tokens"]))


def test_summary_only_trains_no_patch_head(world, tmp_path):
    distiller = Distiller(config(world, tmp_path / "run", steps=2, kinds=["summary"]))
    assert {kind for _, kind in distiller.selection.targets} == {"summary"}
    assert set(distiller.student.heads) == {f"{TINY}__summary", f"{SMALL8}__summary"}
    assert np.isfinite(distiller.run()["loss"])


def test_gauss_loss_phis_and_last_block(world, tmp_path):
    last = distill(config(world, tmp_path / "run", steps=3, loss="gauss", norm="phis", lop_blocks="last",
                          teachers=[TINY]))
    assert np.isfinite(last["loss"]) and set(k for k in last if k.startswith("loss/")) == {f"loss/{TINY}"}


def test_torchrun_two_processes(world, tmp_path):
    root, cache = world
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "unic_cache", "distill", str(root / "data"), "--cache", cache, "--out", str(out),
           "--student", STUDENT, "--img-size", "32", "--model-arg", "depth=2", "--steps", "4", "--batch-size", "4",
           "--workers", "0", "--no-progress", "--checkpoint-every", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done:") == 1  # rank 0 alone reports
    lines = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert (out / "checkpoints" / "step-00000004" / "rng-1.safetensors").exists()


def test_init_from_a_file_and_a_bad_init_file(world, tmp_path):
    distill(config(world, tmp_path / "first", steps=1))
    weights = tmp_path / "first" / "model" / "model.safetensors"
    distill(config(world, tmp_path / "second", steps=1, init=str(weights)))
    with pytest.raises(UserError, match="--init"):
        distill(config(world, tmp_path / "third", steps=1, init=str(tmp_path / "missing.safetensors")))


def test_same_student_with_0_and_2_workers(world, tmp_path):
    for workers in (0, 2):
        distill(config(world, tmp_path / f"w{workers}", steps=5, workers=workers, teacher_drop=0.5))
    a, b = (load_file(str(tmp_path / f"w{w}" / "model" / "model.safetensors")) for w in (0, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [[json.loads(line)["loss"] for line in open(tmp_path / f"w{w}" / "metrics.jsonl")] for w in (0, 2)]
    assert rows[0] == rows[1]


def test_resume_refuses_another_geometry_and_metrics_continue(world, tmp_path):
    out = tmp_path / "run"
    distill(config(world, out, steps=6, checkpoint_every=3))
    import shutil

    shutil.rmtree(out / "checkpoints" / "step-00000006")  # killed after step 6's metrics, before its checkpoint
    with pytest.raises(UserError, match="other options.*batch_size: 8 vs 4.*give a new --out"):
        distill(config(world, out, steps=6, checkpoint_every=3, batch_size=4))
    last = distill(config(world, out, steps=6, checkpoint_every=3, resume=True))
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6] and last["step"] == 6
    shutil.rmtree(out / "checkpoints" / "step-00000003")
    again = distill(config(world, out, steps=6, checkpoint_every=3, resume=True))  # killed during export: nothing left to train
    assert again["step"] == 6 and np.isfinite(again["loss"])
    assert [json.loads(line)["step"] for line in open(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(UserError, match="other options.*steps: 6 vs 2"):  # a finished run is never retrained in place
        distill(config(world, out, steps=2))
    assert [json.loads(line)["step"] for line in open(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def _metrics(out) -> list[dict]:
    """metrics.jsonl without the throughput (a clock reading, not a result)."""
    return [{k: v for k, v in json.loads(line).items() if k != "samples_per_s"} for line in open(out / "metrics.jsonl")]


def test_metrics_brought_to_the_host_every_n_steps_are_the_same_per_step(world, tmp_path):
    """log_every only changes when the host waits: the same lines, step by step, and the same student."""
    for every in (1, 4):
        distill(config(world, tmp_path / f"every{every}", steps=6, checkpoint_every=5, teacher_drop=0.5, log_every=every))
    assert _metrics(tmp_path / "every1") == _metrics(tmp_path / "every4")
    assert [m["step"] for m in _metrics(tmp_path / "every4")] == [1, 2, 3, 4, 5, 6]
    a, b = (load_file(str(tmp_path / f"every{e}" / "model" / "model.safetensors")) for e in (1, 4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((tmp_path / "every4" / "checkpoints" / "step-00000005" / "state.json").read_text())
    assert state["last"]["step"] == 5  # a checkpoint waits for its own step's metrics


def test_gpu_options_train_the_same_student(world, tmp_path):
    """--compile, --fused-adamw and --channels-last change how a step runs, not what it computes."""
    plain = distill(config(world, tmp_path / "plain", steps=3, teacher_drop=0.0))
    options = dict(steps=3, teacher_drop=0.0, compile=True, fused_adamw=True, channels_last=True, checkpoint_every=2)
    fast = distill(config(world, tmp_path / "fast", **options))
    assert [m["loss"] for m in _metrics(tmp_path / "fast")] == pytest.approx([m["loss"] for m in _metrics(tmp_path / "plain")],
                                                                             rel=1e-3)
    assert fast["step"] == plain["step"] == 3
    a, b = (load_file(str(tmp_path / run / "model" / "model.safetensors")) for run in ("plain", "fast"))
    assert a.keys() == b.keys()  # the exported encoder keeps timm's names (no compile wrapper prefix)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    import shutil

    shutil.rmtree(tmp_path / "fast" / "checkpoints" / "step-00000003")  # killed after step 2's checkpoint
    (tmp_path / "fast" / "model" / "model.safetensors").rename(tmp_path / "straight.safetensors")
    distill(config(world, tmp_path / "fast", resume=True, **options))  # channels-last moments, reloaded for a fused step
    resumed = load_file(str(tmp_path / "fast" / "model" / "model.safetensors"))
    straight = load_file(str(tmp_path / "straight.safetensors"))
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def _distill_cli(world, out, *extra: str) -> list[str]:
    root, cache = world
    return [sys.executable, "-m", "unic_cache", "distill", str(root / "data"), "--cache", cache, "--out", str(out),
            "--student", STUDENT, "--img-size", "32", "--model-arg", "depth=2", "--batch-size", "4", "--steps", "60",
            "--workers", "2", "--log-every", "1", "--lop-hidden", "student", "--no-progress", *extra]


def test_a_signal_the_process_was_started_ignoring_stays_ignored_while_training():
    """A job a shell puts in the background starts with SIGINT ignored: distill keeps it so (as extract does)
    and still takes SIGTERM; a run in the foreground takes both. Handlers are restored afterwards."""
    import signal
    import types

    from unic_cache.runtime import StopOnSignals

    run = types.SimpleNamespace(_stop=False, rank=0)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with StopOnSignals(run) as guard:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == guard._ask
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with StopOnSignals(run) as guard:
            assert signal.getsignal(signal.SIGINT) == guard._ask == signal.getsignal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_ctrl_c_saves_a_checkpoint_and_the_same_command_continues_exactly(world, tmp_path):
    import signal
    import time

    straight = subprocess.run(_distill_cli(world, tmp_path / "straight"), capture_output=True, text=True, timeout=HANG_GUARD)
    assert straight.returncode == 0, straight.stderr[-2000:]
    command = _distill_cli(world, tmp_path / "run")
    proc = popen_for_ctrl_c(command)
    metrics = tmp_path / "run" / "metrics.jsonl"
    while proc.poll() is None and (not metrics.exists() or len(metrics.read_text().splitlines()) < 5):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # as Ctrl-C does (DataLoader workers ignore it; the run stops itself)
    out, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 130, err[-2000:]
    assert "run the same command to continue" in err and err.count("Traceback") == 0, err[-2000:]
    stopped = [int(p.name[5:]) for p in (tmp_path / "run" / "checkpoints").glob("step-*")]
    assert stopped and max(stopped) < 60 and not (tmp_path / "run" / "model").exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD)
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = (load_file(str(tmp_path / run / "model" / "model.safetensors")) for run in ("straight", "run"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(line)["step"] for line in metrics.open()] == list(range(1, 61))
    finished = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD)  # nothing left to do
    assert finished.returncode == 0 and "already finished" in finished.stdout, finished.stdout + finished.stderr[-1000:]


def test_sigterm_saves_a_checkpoint_and_exits_143(world, tmp_path):
    """SIGTERM (a scheduler's stop) stops the run as Ctrl-C does, and the exit code says which signal (128 + 15)."""
    import signal
    import time

    proc = popen_for_ctrl_c(_distill_cli(world, tmp_path / "run"))
    metrics = tmp_path / "run" / "metrics.jsonl"
    while proc.poll() is None and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 143 and "run the same command to continue" in err and "Traceback" not in err, err[-2000:]


def test_a_killed_run_with_workers_is_resumed_at_once(world, tmp_path):
    """SIGKILL (the OOM killer) leaves DataLoader workers orphaned for a while: they must not hold the run lock,
    so the same command run at once continues the run instead of being refused as 'in use'."""
    import signal
    import time

    root, cache = world
    out = tmp_path / "run"
    command = [sys.executable, "-m", "unic_cache", "distill", str(root / "data"), "--cache", cache, "--out", str(out),
               "--student", STUDENT, "--img-size", "32", "--model-arg", "depth=2", "--steps", "30", "--batch-size", "8",
               "--workers", "1", "--checkpoint-every", "2", "--no-progress"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + HANG_GUARD
    while not (out / "checkpoints" / "step-00000002").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    again = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD)
    assert again.returncode == 0, again.stderr[-1500:]
    assert (out / "model" / "model.safetensors").exists()


def test_distill_says_how_often_each_cached_view_is_replayed(world, tmp_path):
    """32 samples, 24 steps of 8: 6 epochs over the cache's views (or the --views used), or fresh views online."""
    assert notes.replay_plan(Distiller(config(world, tmp_path / "a", steps=24)).schedule()) == (
        f"views: 6.00 epochs (24 steps of 8) over {VIEWS} cached views of each sample: each view is replayed "
        f"{6 / VIEWS:.2f} times")
    assert "each view is replayed 6.00 times" in notes.replay_plan(Distiller(config(world, tmp_path / "b", steps=24, views=1)).schedule())
    assert notes.replay_warning(Distiller(config(world, tmp_path / "c", steps=24)).schedule()) is None


def test_the_checkpoint_line_says_its_size_and_how_to_shrink_heads_that_dwarf_the_student(world, tmp_path):
    """UNIC's 768/3072-wide projectors on a tiny student are most of a checkpoint: the line says so and names
    --lop-hidden student; with it, the heads are the student's size and nothing is suggested."""
    big = notes.checkpoint_plan(Distiller(config(world, tmp_path / "a", lop_hidden="768", checkpoint_every=1)).checkpoints())
    assert "every step (--checkpoint-every)" in big and "--lop-hidden student sizes them" in big
    small = notes.checkpoint_plan(Distiller(config(world, tmp_path / "b", lop_hidden="student", checkpoint_every=3)).checkpoints())
    assert "every 3 steps" in small and "--lop-hidden" not in small


def test_the_replays_counted_are_the_epochs_asked_for_not_the_rounded_up_steps(world, tmp_path):
    """--epochs E on K views is E/K replays, however its steps round up: a schedule at the limit is not warned of
    (16 views x 100 epochs in the reuse curve ran 557 steps of 64 over 356 rows: 100.13 epochs); the epochs actually
    run are said."""
    at_limit = REPLAY_LIMIT * VIEWS  # 32 samples in batches of 6: its steps round up past the limit's epochs
    run = Distiller(config(world, tmp_path / "a", steps=None, epochs=at_limit, batch_size=6))
    assert notes.run_epochs(run.schedule()) > at_limit and notes.replay_warning(run.schedule()) is None
    assert f"{notes.run_epochs(run.schedule()):.2f} epochs ({run.total} steps of 6)" in notes.replay_plan(run.schedule())
    above = Distiller(config(world, tmp_path / "b", steps=None, epochs=at_limit + 0.5, batch_size=6))
    assert notes.replay_warning(above.schedule()) is not None


def test_distill_warns_above_the_measured_replay_limit_naming_the_views_that_fix_it(world, tmp_path):
    """A schedule that replays each view more than ``REPLAY_LIMIT`` times is warned of, even without progress bars,
    with the extract --views that brings it back; online runs replay nothing."""
    steps = int(REPLAY_LIMIT * VIEWS * 32 / 8) + 4  # 32 samples, batches of 8: just above the limit
    warning = notes.replay_warning(Distiller(config(world, tmp_path / "a", steps=steps)).schedule())
    need = views_for(steps * 8 / 32)
    assert need == VIEWS + 1 and f"--views {need}` (it adds views to every teacher" in warning and "\n" not in warning
    assert REPLAY_EVIDENCE in warning  # the interval the limit was drawn from
    fewer = notes.replay_warning(Distiller(config(world, tmp_path / "a", steps=steps // VIEWS, views=1)).schedule())  # the cache has them
    assert f"`--views {views_for(steps // VIEWS * 8 / 32)}` (the cache holds {VIEWS})" in fewer and "extract" not in fewer
    assert notes.replay_warning(Distiller(config(world, tmp_path / "a", steps=steps - 8)).schedule()) is None
    assert notes.replay_warning(Distiller(config(world, tmp_path / "b", steps=steps, online=True)).schedule()) is None
    proc = subprocess.Popen([sys.executable, "-m", "unic_cache", "distill", str(world[0] / "data"), "--cache", world[1],
                             "--out", str(tmp_path / "c"), "--student", STUDENT, "--img-size", "32", "--model-arg",
                             "depth=2", "--steps", str(steps), "--batch-size", "8", "--workers", "0", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()  # said before the first step
    finally:
        proc.kill()
        proc.wait()
    assert first.startswith("warning: each cached view will be replayed") and f"--views {need}`" in first


def test_flipped_samples_keep_their_summary_target_and_lose_their_patch_targets(world, tmp_path):
    """--flip-p 1 mirrors every student view: the loss is the summary loss on the mirrored views alone (the patch heads
    get no gradient); --flip-p 0 is UNIC's step exactly."""
    flip = Distiller(config(world, tmp_path / "flip", flip_p=1.0, teacher_drop=0.0))
    summary = Distiller(config(world, tmp_path / "summary", kinds=["summary"], teacher_drop=0.0))
    flip.student.eval(), summary.student.eval()  # the same forward twice (no dropout), gradients all the same
    batch = next(iter(flip.loader()))
    mirrored = {**batch}
    loss, per_teacher, _ = flip.loss({**batch})
    loss.backward()
    patch_grads = [p.grad for name, p in flip.student.heads.named_parameters() if "__patch" in name]
    assert patch_grads and all(g is None or not g.any() for g in patch_grads)
    assert any(p.grad is not None and p.grad.any() for name, p in flip.student.heads.named_parameters() if "__summary" in name)
    summary.student.load_state_dict(flip.student.state_dict(), strict=False)
    summary.views = lambda b, name, res, cl=False: Distiller.views(flip, b, name, res, cl).flip(-1)  # the same mirror
    _, alone, _ = summary.loss(mirrored)
    torch.testing.assert_close(per_teacher, alone)


def test_mixed_samples_learn_the_mix_of_their_cached_targets(world, tmp_path):
    """--mix-p 1 mixes every sample with the one before it: the loss is UNIC's loss on the mixed views against the
    same mix of the cached targets (mixing stored values first is the same, standardisation being affine); the
    weights come from the run's generator, so the two steps draw the same. --flip-p with --mix-p is refused."""
    mixer = Distiller(config(world, tmp_path / "mix", mix_p=1.0, teacher_drop=0.0))
    plain = Distiller(config(world, tmp_path / "plain", teacher_drop=0.0))
    mixer.student.eval(), plain.student.eval()
    plain.student.load_state_dict(mixer.student.state_dict())
    batch = next(iter(mixer.loader()))
    state = mixer.drop_gen.get_state()
    mix = mixup(len(batch["params"]), 1.0, mixer.drop_gen, mixer.device)
    mixer.drop_gen.set_state(state)
    _, per_teacher, _ = mixer.loss({**batch})
    mixed = {**batch}
    for t, kind in plain.selection.targets:
        assert plain.arrays[t, kind] == (kind,)  # float16 stored values: the decode is a cast
        mixed[f"{t}/{kind}"] = mix(batch[f"{t}/{kind}"].float())
    plain.views = lambda b, name, res, cl=False: mix(Distiller.views(mixer, b, name, res, cl).float()).round().to(torch.uint8)
    _, alone, _ = plain.loss(mixed)
    torch.testing.assert_close(per_teacher, alone)
    _, unmixed, _ = Distiller.loss(plain, {**batch})
    assert not torch.allclose(per_teacher, unmixed)
    with pytest.raises(UserError, match="cannot be combined"):
        config(world, tmp_path / "both", mix_p=0.5, flip_p=0.5).check_together()


def test_the_notes_are_made_of_plain_facts():
    """No trainer needed: the arm the replay limit came from (16 views x 100 epochs: 557 steps of 64 over 356 rows,
    100.13 epochs) is not warned of; 8 views are, with the views the cache already holds."""
    from dataclasses import replace

    arm = notes.Schedule(steps=557, batch=64, samples=356, epochs=100, views=16, held=32, online=False, data="d",
                         cache="c")
    assert notes.replay_warning(arm) is None and notes.replay_plan(arm).startswith("views: 100.13 epochs (557 steps of 64)")
    assert "`--views 16` (the cache holds 32)" in notes.replay_warning(replace(arm, views=8))
    assert notes.replay_warning(replace(arm, views=8, online=True)) is None
