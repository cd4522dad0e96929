"""Stage 2: train the student from the cache alone (no teacher is ever built or loaded).

One step: images replayed at the student's resolution -> student + LoP heads -> per-teacher loss
against standardised cached targets -> teacher dropping -> AdamW step. Checkpoints hold everything an
exact resume needs (weights, optimizer, schedule, RNG states; the loader position is the step); they are
written every ``checkpoint_every`` steps and when the run is interrupted (Ctrl-C, SIGTERM), and the same
command continues the run from the last one (``runs``). Runs under torchrun with DDP (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from dataclasses import asdict

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from .. import __version__
from ..cache.store import Cache
from ..errors import RunInterrupted, UserError
from ..records import differences, json_normal, refuse
from ..models.device_codecs import DeviceCodec
from ..models.geometry import Packed
from ..models.device_pixels import device_views
from ..models.student import Student
from ..models.teachers import rebuild_teacher
from ..runtime import StopOnSignals, autocast_for, init_distributed, prepare_model, share_cores, to_device
from .loader import DistillStream, Selection
from .augment import flip_mask, mixup
from .losses import gaussian_nll, teacher_drop_weights, unic_loss
from .normalize import RunningNorm, TargetNorm, running_momentum
from .optim import decay_groups, load_optimizer, optimizer_tensors
from .options import DistillOptions, recorded_config
from . import notes
from .exported import model_card
from .run_files import RUN_FORMAT
from .runs import RunFolder


class Distiller:
    """The distillation recipe: set-up (targets, student, optimizer: the constructor), ``train``,
    ``save_checkpoint``, ``load_checkpoint`` and ``export``; ``run`` chains them. Everything in the run folder is
    ``self.folder``'s (``runs.RunFolder``). A checkpoint records everything its position and meaning depend on
    (``resume_record``), and a resume with other settings is refused in one line."""

    def __init__(self, cfg: DistillOptions):
        cfg.check()
        self.cfg = cfg
        self.rank, self.world, self.device = init_distributed(cfg.device)
        share_cores(self.device, cfg.workers)
        self.folder = RunFolder(cfg.out, self.rank, self.world)
        self.out = self.folder.out
        cache = Cache.open(cfg.cache)  # this dataset's: checked by cfg.check()
        self.cache = cache
        self._setup_targets(cache)
        self._setup_student()
        self._setup_optimizer(int((~cache.bad).sum()))
        self.step, self.last, self._stop = 0, {}, False
        self.feed = self.stream()  # the stream of batches, built once: its geometry is part of a checkpoint's record
        self.geometry = self.feed.geometry
        self.folder.check_continues(self.config_record())
        if self.folder.checkpoints():
            self.load_checkpoint()
        elif cfg.resume:
            raise UserError(f"--resume: {self.out} has no checkpoint to continue from; drop --resume to start this run")

    def _setup_targets(self, cache: Cache) -> None:
        """The teachers used, their (teacher, kind) targets and standardisations, and in the online
        reference mode the teachers themselves."""
        cfg = self.cfg
        self.teachers = cfg.teachers or cache.teacher_names()
        stores = {t: cache.teacher(t) for t in self.teachers}  # present and complete: checked by cfg.check()
        self.selection = Selection.of(cache, self.teachers, cfg.kinds)
        self.online = {t: rebuild_teacher(t, stores[t].info).to(self.device) for t in self.teachers} if cfg.online else {}
        self.norms = torch.nn.ModuleDict({
            target.module: RunningNorm(stores[target.teacher].info.width(target.kind)) if cfg.norm_stats == "running"
            else TargetNorm.from_stats(cfg.norm, stores[target.teacher].stats(target.kind)) for target in self.selection.targets})
        self.running = [norm for norm in self.norms.values() if isinstance(norm, RunningNorm)]
        self.norms.to(self.device)
        # stored arrays -> vectors, on the device (an online teacher's outputs need no decoding)
        self.codecs = {target: DeviceCodec(stores[target.teacher].codecs[target.kind], stores[target.teacher].info.grid,
                                           self.device) for target in self.selection.targets if target.teacher not in self.online}
        self.arrays = {target: (target.kind,) if target.teacher in self.online else stores[target.teacher].arrays(target.kind)
                       for target in self.selection.targets}
        self.grids = {t: stores[t].info.grid if cfg.online else stores[t].stored_grid for t in self.teachers}

    def _setup_student(self) -> None:
        """The student encoder with its projector ladder (seeded), optionally initialised from a file."""
        cfg = self.cfg
        targets = {target.name: (self.norms[target.module].out_dim, self.grids[target.teacher] if target.kind == "patch"
                                 else None) for target in self.selection.targets}
        torch.manual_seed(cfg.seed)
        self.student = Student(cfg.student, cfg.img_size, targets, cfg.lop_blocks, cfg.drop_path,
                               2 if cfg.loss == "gauss" else 1, cfg.model_args, cfg.lop_head, cfg.lop_hidden)
        if cfg.init:
            try:
                self.student.encoder.load_state_dict(load_file(cfg.init), strict=True)
            except (OSError, RuntimeError) as exc:
                raise UserError(f"--init {cfg.init} cannot initialise {cfg.student}: {' '.join(str(exc).split())[:300]}") from None
        model = prepare_model(self.student, self.device, channels_last=cfg.channels_last)
        model = torch.nn.parallel.DistributedDataParallel(model) if self.world > 1 else model
        self.model = torch.compile(model) if cfg.compile else model  # self.student is what is saved

    def _setup_optimizer(self, good_samples: int) -> None:
        """AdamW (weight-decay groups as ``decay_groups``), the schedule's length and the teacher-dropping generator."""
        cfg = self.cfg
        global_batch = cfg.batch_size * self.world
        self.total = cfg.steps or max(1, math.ceil(cfg.epochs * good_samples / global_batch))
        params = {n: p for n, p in self.student.named_parameters() if p.requires_grad}
        self.trainable = list(params.values())
        decay = decay_groups(params, cfg.decay_tokens)
        self.lr = cfg.lr * global_batch / 256
        self.opt = torch.optim.AdamW([{"params": [params[n] for n in params if n in decay], "weight_decay": cfg.weight_decay},
                                      {"params": [params[n] for n in params if n not in decay], "weight_decay": 0.0}],
                                     lr=self.lr, betas=cfg.betas, fused=cfg.fused_adamw or None)
        self.warmup = int(cfg.warmup * self.total)
        self.drop_gen = torch.Generator(self.device).manual_seed(cfg.seed * 1000 + self.rank)  # coin flips on the device

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to min_lr."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.total - self.warmup)
        return self.cfg.min_lr + 0.5 * (self.lr - self.cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scalar loss, per-teacher loss (B, T), drop weights (B, T)) for one batch."""
        student_views = self.views(batch, "image", self.cfg.img_size, self.cfg.channels_last)
        flipped = None  # --flip-p: mirrored samples keep their summary target, and lose their patch targets
        if self.cfg.flip_p and not self.online:
            flipped = flip_mask(len(student_views), self.cfg.flip_p, self.drop_gen, self.device)
            student_views = torch.where(flipped[:, None, None, None], student_views.flip(-1), student_views)
        mix = mixup(len(student_views), self.cfg.mix_p, self.drop_gen, self.device) if self.cfg.mix_p and not self.online else None
        if mix is not None:
            student_views = mix(student_views.float()).round().to(torch.uint8)
        preds = self.model(student_views)
        for t, teacher in self.online.items():  # reference mode: targets computed now, on this step's views
            summary, patch = teacher(self.views(batch, f"{t}/image", teacher.info.resolution))
            batch.update({f"{t}/summary": summary.clone(), f"{t}/patch": patch.clone()})
        per_teacher = {t: 0.0 for t in self.teachers}  # over token kinds: mean (UNIC, drop_norm batch) or sum
        kinds = {t: 0.0 for t in self.teachers}  # token kinds in each sample's loss
        for key in self.selection.targets:
            t = key.teacher
            used = (~flipped).float() if flipped is not None and key.kind == "patch" else 1.0
            kinds[t] = kinds[t] + used
            stored = [batch[f"{t}/{name}"].to(self.device, non_blocking=True) for name in self.arrays[key]]
            target = self.norms[key.module](self.codecs[key].decode(stored) if t not in self.online else stored[0])
            target = mix(target) if mix is not None else target
            pred = preds[key.name].float()
            if self.cfg.loss == "unic":
                per_teacher[t] = per_teacher[t] + used * unic_loss(pred, target)
            else:
                mean, log_var = pred.chunk(2, dim=-1)
                per_teacher[t] = per_teacher[t] + used * gaussian_nll(mean, log_var, target)
        if self.cfg.drop_norm == "batch":
            per_teacher = {t: per_teacher[t] / torch.as_tensor(kinds[t]).clamp_min(1.0) for t in self.teachers}
        losses = torch.stack([per_teacher[t] for t in self.teachers], 1)
        weights = teacher_drop_weights(losses.detach().float(), self.cfg.teacher_drop, self.drop_gen, self.cfg.drop_norm)
        return (weights * losses).sum(), losses.detach(), weights

    def views(self, batch: dict[str, torch.Tensor], name: str, resolution: int, channels_last: bool = False) -> torch.Tensor:
        """A batch's views ``name`` on the device: the loader's crops, or its decoded images cut there (pipeline 3),
        with their photometric part applied there."""
        pixels = Packed(batch["pixels"], batch["pixel_shapes"]) if "pixels" in batch else batch[name]
        return to_device(device_views(pixels, batch["params"].numpy(), resolution, self.device), self.device, channels_last)

    @property
    def checkpoint_interval(self) -> int:
        """``checkpoint_every``, or by default every 5% of the run, at most 1,000 steps apart."""
        return self.cfg.checkpoint_every or max(1, min(1000, math.ceil(self.total / 20)))

    def run(self) -> dict:
        """Train to the last step, save the final checkpoint, export; the last step's metrics. A finished run is
        not trained again: its recorded metrics are returned (``finished_before`` says so)."""
        self.finished_before = self.step >= self.total and self.folder.finished()
        if not self.finished_before:
            try:
                self.train()
                self.save_checkpoint()
                self.export()
            finally:
                self.folder.release()
        return {**self.last, "step": self.step}

    def train(self) -> None:
        """Steps from the current one to the last, a checkpoint every ``checkpoint_interval`` steps. Each step's
        metrics stay on the device; every ``log_every`` steps (and before a checkpoint) they are brought to
        the host at once and written, a line per step, to ``metrics.jsonl`` (and TensorBoard). A non-finite
        loss stops with its step and rows named. Ctrl-C or SIGTERM stop the run at the next such point (every
        process at the same step), after a checkpoint: ``RunInterrupted`` says where."""
        from tqdm import tqdm

        cfg = self.cfg
        self.folder.hold()
        self.folder.write_config(self.config_record())
        if self.rank == 0 and self.step < self.total:
            for line in notes.before_training(self.schedule(), self.checkpoints(), self.cache.pixels.note(), cfg.progress):
                print(line, file=sys.stderr, flush=True)
        metrics = self.folder.metrics_file(self.step)
        tb = self.folder.tensorboard()
        bar = tqdm(total=self.total, initial=self.step, desc="distill", unit="step", disable=not cfg.progress or self.rank != 0)
        self.model.train()
        window: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, its metrics on the device, its rows)
        tick = time.perf_counter()
        try:
            with StopOnSignals(self), _kept_on_a_second_ctrl_c(self):
                for batch in (self.loader() if self.step < self.total else ()):
                    if self.step >= self.total:
                        break
                    window.append((self.step + 1, self.train_step(batch), batch["row"]))
                    bar.update()
                    checkpoint = self.step % self.checkpoint_interval == 0 and self.step < self.total
                    asked = self._stop and self.world == 1  # one process stops at once; several at the next log
                    if checkpoint or asked or len(window) >= cfg.log_every or self.step >= self.total:
                        tick, stop = self._log(window, tick, metrics, tb, bar)
                        window = []
                        if stop and self.step < self.total:
                            self.save_checkpoint()
                            raise RunInterrupted(f"stopped at step {self.step} of {self.total}, checkpoint saved in "
                                                 f"{self.out / 'checkpoints'}; run the same command to continue",
                                                 signum=int(self._stop) or signal.SIGTERM)  # another rank's signal
                    if checkpoint:
                        self.save_checkpoint()
        finally:
            bar.close()
            if metrics:
                metrics.close()

    def metric_names(self) -> list[str]:
        """What ``train_step`` returns, in order."""
        return ["loss", "grad_norm", *(f"loss/{t}" for t in self.teachers), *(f"weight/{t}" for t in self.teachers)]

    def train_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One optimizer step on a batch; its metrics (``metric_names``) as one tensor on the device, not
        waited for: nothing in a step waits for the device."""
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        for norm in self.running:
            norm.momentum = running_momentum(self.step, self.total)
        with autocast_for(self.device):
            loss, losses, weights = self.loss(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.clip_grad or math.inf)  # inf: measured only
        self.opt.step()
        self.step += 1
        return torch.cat([torch.stack([loss.detach(), grad_norm.detach()]).float(), losses.mean(0).float(),
                          weights.sum(0).float()])

    def _log(self, window: list[tuple[int, torch.Tensor, torch.Tensor]], tick: float, metrics, tb,
             bar) -> tuple[float, bool]:
        """Bring a window of steps' metrics to the host (averaged over processes), check them and write them;
        returns when they arrived (a window's throughput is measured from the previous window's arrival) and
        whether any process was asked to stop."""
        values = torch.stack([m for _, m, _ in window])
        stop = torch.tensor([float(self._stop)], device=values.device)
        if self.world > 1:
            dist.all_reduce(values)
            dist.all_reduce(stop)
            values /= self.world
        host = values.tolist()  # the one wait for the device in the window
        now = time.perf_counter()
        rate = self.cfg.batch_size * self.world * len(window) / max(now - tick, 1e-9)
        for (step, _, rows), row_values in zip(window, host):
            record = dict(zip(self.metric_names(), row_values))
            if not math.isfinite(record["loss"]):
                rows = rows.tolist()
                raise UserError(f"non-finite loss at step {step} (rows {rows[:8]}{' ...' if len(rows) > 8 else ''}); "
                                f"check the cache with `unic-cache verify {self.cfg.cache}`, or lower --lr")
            record.update(step=step, lr=self.lr_at(step - 1), samples_per_s=rate)
            self.last = record
            if metrics:
                metrics.write(json.dumps(record) + "\n")
            if tb:
                for k, v in record.items():
                    tb.add_scalar(k, v, step)
        if metrics:
            metrics.flush()
        bar.set_postfix(loss=f"{self.last['loss']:.4f}")
        return now, bool(stop.item())

    def schedule(self) -> notes.Schedule:
        """The facts the replay notes are made of."""
        cfg = self.cfg
        return notes.Schedule(self.total, cfg.batch_size * self.world, int((~self.cache.bad).sum()), cfg.epochs,
                              self.geometry["views"], min(self.cache.teacher(t).views for t in self.teachers),
                              bool(self.online), cfg.data, cfg.cache)

    def checkpoints(self) -> notes.Checkpoints:
        """The facts the checkpoint note is made of."""
        size = lambda params: sum(p.numel() * p.element_size() for p in params)  # noqa: E731
        student = self.student
        return notes.Checkpoints(size(student.encoder.parameters()), size(student.heads.parameters()), size(self.trainable),
                                 self.checkpoint_interval, self.cfg.keep_checkpoints,
                                 getattr(student.encoder, "num_features", notes.UNIC_WIDTH), self.cfg.lop_hidden)

    def stream(self) -> DistillStream:
        """This process's endless data stream, starting at the current step."""
        cfg = self.cfg
        return DistillStream(cfg.data, self.cache, self.selection, cfg.img_size, cfg.batch_size, cfg.seed,
                             self.rank, self.world, start_step=self.step, views=cfg.views,
                             online={t: teacher.info.resolution for t, teacher in self.online.items()})

    def loader(self):
        """Endless batches from the current step on (the same batches for any number of workers)."""
        self.feed.start_step = self.step
        return self.feed.batches(self.cfg.workers, pin_memory=self.device.type == "cuda")

    def config_record(self) -> dict:
        """What ``config.json`` records: the options, resolved (teachers, kinds, steps), the cache it reads, the
        tool's version and when the run started (kept when a run is continued)."""
        previous = self.folder.recorded() or {}
        return {"format": RUN_FORMAT, **asdict(self.cfg), "world_size": self.world, "total_steps": self.total, "teachers": self.teachers,
                "kinds": sorted({target.kind for target in self.selection.targets}),
                "targets": {target.name: self.norms[target.module].out_dim for target in self.selection.targets},
                "lr_scaled": self.lr, "warmup_steps": self.warmup, "cache_fingerprint": self.cache.attrs["fingerprint"],
                "version": __version__, "started": previous.get("started", time.strftime("%Y-%m-%dT%H:%M:%S%z"))}

    def resume_record(self) -> dict:
        """Everything the position and meaning of a resumed run depend on, beside the weights."""
        cfg = self.cfg
        return json_normal({**self.geometry, "total_steps": self.total, "teachers": self.teachers,
                            "targets": list(self.selection.targets), "student": cfg.student, "img_size": cfg.img_size,
                            "model_args": cfg.model_args, "loss": cfg.loss, "norm": cfg.norm, "lop_blocks": cfg.lop_blocks,
                            "online": cfg.online, "lr": cfg.lr, "warmup": cfg.warmup, "teacher_drop": cfg.teacher_drop,
                            "drop_norm": cfg.drop_norm, "lop_head": cfg.lop_head, "lop_hidden": cfg.lop_hidden,
                            "clip_grad": cfg.clip_grad, "decay_tokens": cfg.decay_tokens, "norm_stats": cfg.norm_stats})

    def save_checkpoint(self) -> None:
        """``out/checkpoints/step-N/``: weights, optimizer, running norms, state.json, and RNG states per rank."""
        shared, state = {}, {}
        if self.rank == 0:  # what every rank holds alike is gathered and written by rank 0 alone
            tensors, groups = optimizer_tensors(self.opt)
            shared = {"model": self.student.state_dict(), "optimizer": tensors,
                      **({"norms": self.norms.state_dict()} if self.running else {})}  # running statistics move with the steps
            state = {"step": self.step, "param_groups": groups, "world_size": self.world, "resume": self.resume_record(),
                     "last": self.last}
        rng = {"torch": torch.get_rng_state(), "drop": self.drop_gen.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        self.folder.save_checkpoint(self.step, shared, state, rng, self.cfg.keep_checkpoints)

    def load_checkpoint(self) -> None:
        """Continue from the last checkpoint in ``out``: weights, optimizer, RNG states, step, last metrics."""
        ckpt, state = self.folder.last_checkpoint()
        refuse(differences(recorded_config(state.get("resume", {})), self.resume_record(), known_only=True),
               f"checkpoint {ckpt} was written with other settings", "continue it with the same options, or give a new "
               "--out to start another run")
        self.student.load_state_dict(load_file(str(ckpt / "model.safetensors"), device=str(self.device)))
        if self.running:
            self.norms.load_state_dict(load_file(str(ckpt / "norms.safetensors"), device=str(self.device)))
        load_optimizer(self.opt, load_file(str(ckpt / "optimizer.safetensors"), device=str(self.device)), state["param_groups"])
        rng = load_file(str(ckpt / f"rng-{self.rank}.safetensors"))
        torch.set_rng_state(rng["torch"])
        self.drop_gen.set_state(rng["drop"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step = int(state["step"])
        self.last = state.get("last", {})
        if self.rank == 0 and self.step < self.total and self.cfg.progress:
            print(f"continuing {self.out} from step {self.step} of {self.total} ({ckpt.name})", file=sys.stderr, flush=True)

    def export(self) -> None:
        """``heads.safetensors`` (the projectors and the target norms), then ``model/``: the student encoder as a
        timm / Hugging Face model folder with its model card; each renamed into place, the model last (a run
        is finished once it is there)."""
        if self.rank != 0:
            return
        cache, crop = self.cache, self.cache.plan.policy.eval_crop_pct
        heads = {f"heads.{k}": v.contiguous() for k, v in self.student.heads.state_dict().items()}
        heads.update({f"norms.{k}": v.contiguous() for k, v in self.norms.state_dict().items()})
        dataset = {"samples": cache.n, "source": cache.attrs["source"], "fingerprint": cache.attrs["fingerprint"],
                   "views": self.geometry["views"]}
        card = model_card(self.config_record(), {t: cache.teacher(t).attrs for t in self.teachers}, dataset, crop)
        self.folder.export(heads, self.student.encoder, self.cfg.img_size, self.cfg.model_args, crop, card)


@contextlib.contextmanager
def _kept_on_a_second_ctrl_c(distiller: Distiller):
    """A second Ctrl-C stops at once: say which checkpoint the run continues from."""
    try:
        yield
    except KeyboardInterrupt:
        kept = distiller.folder.checkpoints()
        where = (f"the last checkpoint kept is {kept[-1].name}" if kept else "no checkpoint was written yet")
        raise RunInterrupted(f"stopped at once at step {distiller.step} of {distiller.total}; {where}; run the same "
                             "command to continue from it") from None


def distill(cfg: DistillOptions) -> dict:
    """Train a student from the cache; returns the last step's metrics."""
    return Distiller(cfg).run()
