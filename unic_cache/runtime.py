"""Where a process runs: its rank and world, its device, autocast, and the process group.

Every stage asks here (extraction, distillation, evaluation, train-teacher), so a choice about devices
is made once; under torchrun every rank of a node gets its own GPU (LOCAL_RANK), in every stage.
"""

from __future__ import annotations

import os
import signal
import threading

import torch
import torch.distributed as dist

from .errors import UserError


def rank_world(rank: int | None = None, world: int | None = None) -> tuple[int, int]:
    """This process's (rank, world size): given, or from the torchrun environment (RANK, WORLD_SIZE)."""
    rank = rank if rank is not None else int(os.environ.get("RANK", 0))
    world = world if world is not None else int(os.environ.get("WORLD_SIZE", 1))
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"--rank must be in [0, --world-size); got rank {rank} of {world}")
    return rank, world


def choose_device(device: str, cuda_available: bool, local_rank: int | None) -> str:
    """The device a process uses, as a decision on its inputs: ``auto`` means cuda when visible, else cpu;
    under torchrun (``local_rank`` given) a bare ``cuda`` becomes this process's GPU, ``cuda:LOCAL_RANK``,
    so the ranks of a node never share one GPU; an explicit ``cuda:N`` is kept."""
    if device == "auto":
        device = "cuda" if cuda_available else "cpu"
    if device.startswith("cuda") and not cuda_available:
        raise UserError(f"--device {device} asked for, but no CUDA device is visible")
    if device == "cuda" and local_rank is not None:
        device = f"cuda:{local_rank}"
    return device


def pick_device(device: str) -> torch.device:
    """This process's device (see ``choose_device``), LOCAL_RANK read from the torchrun environment."""
    local = os.environ.get("LOCAL_RANK")
    return torch.device(choose_device(device, torch.cuda.is_available(), int(local) if local is not None else None))


THREADS_ENV = "UNIC_CACHE_THREADS"  # N: that many intra-op threads; "torch": torch's own count (a thread per core)


def share_cores(device: torch.device, workers: int = 0) -> int:
    """Set this process's intra-op threads on the CPU to its share of the cores it may run on: the cores shared by
    the ranks of its node (LOCAL_WORLD_SIZE), less a core per busy loader worker when there are cores to spare, at
    least one. A thread per core in every process oversubscribes the cores, and on a busy machine every parallel
    region then waits for its slowest thread (BENCHMARKS.md, "A busy machine"). OMP_NUM_THREADS or
    UNIC_CACHE_THREADS set by the user win. Returns the thread count."""
    own = os.environ.get(THREADS_ENV)
    if device.type != "cpu" or own == "torch" or own is None and "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    threads = int(own) if own else max(1, cores - workers if cores - workers >= 2 else cores)
    torch.set_num_threads(threads)
    return threads


def autocast_for(device: torch.device):
    """bf16 autocast on GPU; full precision (a disabled context) on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def init_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world, device) of a torchrun process, with the process group started when world > 1
    (nccl on GPU, gloo on CPU) and the GPU chosen by LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if world > 1 else 0
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return rank, world, dev


def prepare_model(model: torch.nn.Module, device: torch.device, compile: bool = False,
                  channels_last: bool = False) -> torch.nn.Module:
    """The module a hot loop calls: on ``device``, its 4-d weights channels-last when asked (the patch
    embedding of a ViT, every convolution of a CNN), compiled with ``torch.compile`` when asked. The
    returned module shares its parameters with ``model``; save and export ``model`` itself."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile else model


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A (B, C, H, W) batch on ``device`` without waiting for the copy, channels-last when asked."""
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


class HostCopy:
    """A device tensor on its way to the host: the copy is queued now (into pinned memory on a GPU) and
    waited for only by ``numpy()``, so the host can queue the next forward meanwhile."""

    def __init__(self, values: torch.Tensor):
        self.values = values.detach().to("cpu", non_blocking=True)
        self.event = None
        if values.is_cuda:
            self.event = torch.cuda.Event()
            self.event.record()

    def numpy(self):
        if self.event is not None:
            self.event.synchronize()
        return self.values.numpy()


class StopOnSignals:
    """While a run trains: the first Ctrl-C (SIGINT) or SIGTERM asks it to stop at its next checkpointable step
    (sets ``run._stop``; rank 0 says so), a second Ctrl-C stops at once (KeyboardInterrupt). Only the main thread can take signals; a signal
    the process was started ignoring (a job a shell put in the background ignores Ctrl-C) stays ignored, as
    in extract."""

    def __init__(self, run):
        self.distiller, self.previous = run, {}

    def _ask(self, signum, frame) -> None:
        if self.distiller._stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.distiller._stop = signum  # the exit code says which: 128 + signum
        if self.distiller.rank == 0:
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint, then stopping (Ctrl-C again stops at once)",
                  flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._ask) for sig in (signal.SIGINT, signal.SIGTERM)
                             if signal.getsignal(sig) is not signal.SIG_IGN}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
