"""Domain-incremental MNIST: ``perm-mnist`` and ``rot-mnist``, 20 tasks over the same 10 classes.

Every task is the whole of MNIST (train and test) seen through the task's own
fixed pixel map: a random permutation of the 784 pixels (``perm-mnist``) or a
rotation by an angle drawn once from [0, 180) degrees (``rot-mnist``, nearest
pixel, corners outside the image black).  The maps are part of the benchmark,
not of the run: they are drawn from generators seeded by the benchmark's name,
so every run and every seed sees the same 20 domains (Mammoth draws them from
the run's seed instead).  Files and download are those of ``seq-mnist``; the
tasks are generated on the run's device from the one copy of MNIST moved there.

A sample's task is its domain (``Split.task``): masking is refused and Task-IL
is undefined (every task holds every class); Class-IL is the domain accuracy.
The protocol is Mammoth's: the 784-100-100 MLP, one epoch, batch 128.
"""
from __future__ import annotations

import math

import torch

from datasets import register_dataset
from datasets.seq_mnist import SequentialMNIST
from datasets.utils.continual_dataset import Split
from utils.seeding import make_generator

SIDE = 28
PIXELS = SIDE * SIDE
BLANK = PIXELS  # a pixel map entry pointing at the black pixel appended to every image


class DomainMNIST(SequentialMNIST):
    DOMAIN_IL = True
    N_TASKS = 20
    N_CLASSES_PER_TASK = 10  # every task holds all ten digits
    BATCH_SIZE = 128
    N_EPOCHS = 1
    CPU_THREADS = None

    def pixel_map(self, task: int) -> torch.Tensor:
        """int64 (784,): output pixel i of ``task`` is input pixel ``map[i]`` (``BLANK``: black)."""
        raise NotImplementedError

    def to_device(self, split: Split, device) -> Split:
        """All ``N_TASKS`` domains of ``split``, made on ``device``: task ``t`` holds samples
        ``t * n .. (t + 1) * n - 1``, the ``n`` images of ``split`` through ``pixel_map(t)``, same labels."""
        x, y = split.x.to(device), split.y.to(device)
        padded = torch.cat([x.flatten(1), torch.zeros(len(x), 1, dtype=x.dtype, device=device)], 1)
        domains = [padded[:, self.pixel_map(t).to(device)].view_as(x) for t in range(self.N_TASKS)]
        tasks = torch.arange(self.N_TASKS, device=device).repeat_interleave(len(y))
        return Split(torch.cat(domains), y.repeat(self.N_TASKS), tasks)


@register_dataset("perm-mnist")
class PermutedMNIST(DomainMNIST):
    """Task t: MNIST with the pixels permuted by a fixed random permutation of its own."""

    def pixel_map(self, task: int) -> torch.Tensor:
        return torch.randperm(PIXELS, generator=make_generator(task, "perm-mnist"))


def rotation_map(degrees: float) -> torch.Tensor:
    """The nearest-pixel map of a rotation by ``degrees`` counter-clockwise about the image centre."""
    c = (SIDE - 1) / 2
    rows, cols = torch.meshgrid(torch.arange(SIDE, dtype=torch.float64), torch.arange(SIDE, dtype=torch.float64),
                                indexing="ij")
    a = math.radians(degrees)
    u, v = cols - c, c - rows  # output pixel in centred coordinates, y up
    src_col = (math.cos(a) * u + math.sin(a) * v + c).round().long()  # rotated back by -degrees
    src_row = (c - (-math.sin(a) * u + math.cos(a) * v)).round().long()
    inside = (src_row >= 0) & (src_row < SIDE) & (src_col >= 0) & (src_col < SIDE)
    return torch.where(inside, src_row * SIDE + src_col, BLANK).flatten()


@register_dataset("rot-mnist")
class RotatedMNIST(DomainMNIST):
    """Task t: MNIST rotated by a fixed angle of its own, drawn uniformly from [0, 180) degrees."""

    def angle(self, task: int) -> float:
        return 180 * float(torch.rand((), generator=make_generator(task, "rot-mnist"), dtype=torch.float64))

    def pixel_map(self, task: int) -> torch.Tensor:
        return rotation_map(self.angle(task))
