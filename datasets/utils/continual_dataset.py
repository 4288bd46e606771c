"""The base class of a sequential (class-incremental) benchmark."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from datasets.utils.transforms import DeviceTransform


@dataclass
class Split:
    """Raw inputs (uint8 pixels, any leading shape N x ...) and int64 labels of one split."""
    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(f"split has {len(self.x)} inputs but {len(self.y)} labels")

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


class ContinualDataset:
    """A benchmark whose tasks are consecutive blocks of ``N_CLASSES_PER_TASK`` classes.

    Subclasses set the class attributes and implement ``load_splits`` returning
    the full train and test splits (on the CPU); the trainer moves them to the
    run's device and slices tasks by label.  The protocol defaults
    (``N_EPOCHS``, ``BATCH_SIZE``) apply when the command line does not set them.
    """

    NAME: str = ""
    N_TASKS: int = 0
    N_CLASSES_PER_TASK: int = 0
    INPUT_SHAPE: Tuple[int, ...] = ()
    BACKBONE: str = "mlp"
    N_EPOCHS: int = 1
    BATCH_SIZE: int = 32
    TRANSFORM: DeviceTransform = DeviceTransform(scale=255.0)
    CPU_THREADS: Optional[int] = None  # torch threads for CPU runs; None keeps torch's default

    def __init__(self, data_path: str):
        self.data_path = data_path

    @property
    def num_classes(self) -> int:
        return self.N_TASKS * self.N_CLASSES_PER_TASK

    def load_splits(self) -> Tuple[Split, Split]:
        raise NotImplementedError

    def get_scheduler(self, optimizer: torch.optim.Optimizer, args) -> Optional[object]:
        """A per-task learning-rate scheduler stepped once per epoch (none by default)."""
        return None

    def task_of_class(self) -> torch.Tensor:
        """The class-to-task table used for masking and Task-IL evaluation."""
        return torch.arange(self.num_classes) // self.N_CLASSES_PER_TASK
