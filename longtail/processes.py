"""This process's place in a torchrun job: rank, device, process group, and gathering from every rank.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains a
DistributedDataParallel replica on its share of each global batch, gloo on
the CPU and NCCL on CUDA; rank 0 writes the results and checkpoints.  Without
a launcher the run is rank 0 of 1 and nothing here talks to other processes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.distributed as dist

from utils.devices import resolve_device
from utils.errors import UserError


@dataclass
class Processes:
    """This process's place in a torchrun job (rank 0 of 1 without a launcher)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> "Processes":
        """What torchrun set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), known before any process group exists."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """The process that prints, logs and writes."""
        return self.rank == 0


def start_processes(device_name: Optional[str]) -> Tuple[Processes, torch.device]:
    """Read torchrun's environment, pick this process's device and join the process group."""
    procs = Processes.from_environment()
    try:
        device = resolve_device(device_name)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if procs.distributed and device.type == "cuda":
        if device.index is not None:
            raise UserError(f"--device {device_name}: under torchrun each process uses cuda:LOCAL_RANK; "
                            f"give --device cuda")
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
    if procs.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return procs, device


def stop_processes(procs: Processes) -> None:
    if procs.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather(procs: Processes, obj) -> list:
    """``obj`` of every process in rank order, on every process (``[obj]`` without torchrun).

    A collective: every process of the job must call it at the same point.
    """
    if not procs.distributed:
        return [obj]
    gathered = [None] * procs.world
    dist.all_gather_object(gathered, obj)
    return gathered
