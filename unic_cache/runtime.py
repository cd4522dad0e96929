"""Where a process runs: its rank and world, its device, autocast, and the process group.

Every stage asks here (extraction, distillation, evaluation, train-teacher), so a choice about devices
is made once.
"""

from __future__ import annotations

import os

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


def pick_device(device: str) -> torch.device:
    """``auto`` (cuda when visible, else cpu), or the device named; a missing GPU is a one-line error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but no CUDA device is visible")
    return torch.device(device)


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
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    return rank, world, dev
