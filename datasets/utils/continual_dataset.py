"""The base class of a sequential (class-incremental) benchmark."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from datasets.utils.transforms import DeviceTransform
from utils.errors import DataError


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

    Subclasses set the class attributes and implement ``read_splits`` returning
    the full train and test splits (on the CPU); ``load_splits`` (what the
    trainer calls) reads them and refuses labels outside the benchmark's classes
    and tasks without a training or test sample, so every benchmark gets those
    checks.  The trainer moves the splits to the run's device and slices tasks by
    label.  The protocol defaults (``N_EPOCHS``, ``BATCH_SIZE``) apply when the
    command line does not set them.  ``rebuild_cache`` asks a benchmark that keeps
    a decoded cache of its files to decode them again (the others ignore it).
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
    LR_MILESTONES: Tuple[int, ...] = ()  # per-task schedule: epochs after which the lr is multiplied by LR_GAMMA
    LR_GAMMA: float = 0.1

    def __init__(self, data_path: str, rebuild_cache: bool = False):
        self.data_path = data_path
        self.rebuild_cache = rebuild_cache

    @property
    def num_classes(self) -> int:
        return self.N_TASKS * self.N_CLASSES_PER_TASK

    def read_splits(self) -> Tuple[Split, Split]:
        """The full train and test splits as the benchmark's files hold them."""
        raise NotImplementedError

    def load_splits(self) -> Tuple[Split, Split]:
        """The train and test splits; ``DataError`` when a label or a task is wrong (see ``check_split``)."""
        train, test = self.read_splits()
        self.check_split(train, "training")
        self.check_split(test, "test")
        return train, test

    def check_split(self, split: Split, name: str) -> None:
        """Refuse labels outside the benchmark's classes and tasks that have no sample in ``split``."""
        where = f"{self.NAME or type(self).__name__} ({self.data_path})"
        labels = split.y.long()
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
            raise DataError(f"{where}: the {name} split holds label {bad}, outside the benchmark's "
                            f"classes 0..{self.num_classes - 1}")
        per_task = torch.bincount(labels // self.N_CLASSES_PER_TASK, minlength=self.N_TASKS)
        empty = [t for t in range(self.N_TASKS) if per_task[t] == 0]
        if empty:
            tasks = ", ".join(f"task {t + 1} ({self.classes_text(t)})" for t in empty[:5])
            more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
            raise DataError(f"{where}: the {name} split has no samples of {tasks}{more}; "
                            f"every task of {self.N_TASKS} needs training and test samples")

    def classes_text(self, task: int) -> str:
        first = task * self.N_CLASSES_PER_TASK
        last = first + self.N_CLASSES_PER_TASK - 1
        return f"class {first}" if first == last else f"classes {first}-{last}"

    def task_of_class(self) -> torch.Tensor:
        """The class-to-task table used for masking and Task-IL evaluation."""
        return torch.arange(self.num_classes) // self.N_CLASSES_PER_TASK
