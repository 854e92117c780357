"""Process-group helpers shared by the trainer and the training script: rank, world size, barrier, reductions.

``RANK`` / ``WORLD_SIZE`` are read from the environment (set by torchrun / deepspeed before the
process group exists, so they work before ``init_process_group`` too). The collectives are no-ops
in a single process and run on the backend's device (CUDA for NCCL, CPU for gloo), always handing
back CPU tensors so callers can log them.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def rank() -> int:
    """This process's global rank (0 outside a launch)."""
    return int(os.environ.get("RANK", "0"))


def num_processes() -> int:
    """Processes in the launch (1 outside a launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """True on rank 0: the process that writes shared files."""
    return rank() == 0


def _active() -> bool:
    """A process group with more than one rank exists."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _backend_device(device: torch.device | str) -> torch.device:
    """``device`` for NCCL (it reduces GPU tensors only), else the CPU."""
    return torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(t: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Sum of ``t`` over ranks, returned on CPU (``device``: where NCCL needs the tensor)."""
    if not _active():
        return t
    t = t.to(_backend_device(device))
    dist.all_reduce(t)
    return t.cpu()


def all_gather_rows(t: torch.Tensor, device: torch.device | str = "cpu") -> np.ndarray:
    """``[world, n]`` table of a per-rank vector ``t`` (one row per rank)."""
    if not _active():
        return t[None].numpy()
    dev = _backend_device(device)
    out = [torch.zeros_like(t, device=dev) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.to(dev))
    return torch.stack([o.cpu() for o in out]).numpy()
