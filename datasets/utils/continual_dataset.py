"""The base class of a sequential benchmark (class-incremental, or domain-incremental with ``DOMAIN_IL``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from datasets.utils.provenance import describe_files, size_warning, synthetic_arrays, synthetic_sizes
from datasets.utils.transforms import DeviceTransform
from utils.errors import DataError, UserError
from utils.seeding import derive_seed


@dataclass
class Split:
    """Raw inputs (uint8 pixels, any leading shape N x ...) and int64 labels of one split, and the task of
    each sample (int64) once the trainer has it on the device (``ContinualDataset.to_device``)."""
    x: torch.Tensor
    y: torch.Tensor
    task: Optional[torch.Tensor] = None

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(f"split has {len(self.x)} inputs but {len(self.y)} labels")
        if self.task is not None and len(self.task) != len(self.y):
            raise ValueError(f"split has {len(self.y)} labels but {len(self.task)} task numbers")

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device), None if self.task is None else self.task.to(device))

    def subset(self, indices: torch.Tensor) -> "Split":
        return Split(self.x[indices], self.y[indices], None if self.task is None else self.task[indices])


class ContinualDataset:
    """A benchmark whose tasks are consecutive blocks of ``N_CLASSES_PER_TASK`` classes
    (``DOMAIN_IL``: whose tasks all hold the same classes and differ in their inputs, see ``to_device``).

    Subclasses set the class attributes and implement ``read_splits`` returning
    the full train and test splits (on the CPU); ``load_splits`` (what the
    trainer calls) reads them and refuses labels outside the benchmark's classes
    and tasks without a training or test sample, so every benchmark gets those
    checks.  The trainer moves the splits to the run's device with ``to_device``,
    which gives every sample its task (by label here), and slices tasks by it.  The protocol defaults (``N_EPOCHS``, ``BATCH_SIZE``) apply when the
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
    DOMAIN_IL: bool = False  # tasks are domains over one set of classes: no masking, Task-IL undefined
    ASYMMETRIC_NOISE: Optional[dict] = None  # --noise_type asym: class -> the class it is mislabelled as
    CANONICAL_SAMPLES: Optional[Tuple[int, int]] = None  # the published files' training and test samples
    EMBEDDED: bool = False  # the data come with an installed package (no files of the project's)

    def __init__(self, data_path: str, rebuild_cache: bool = False, synthetic: bool = False):
        self.data_path = data_path
        self.rebuild_cache = rebuild_cache
        self.synthetic = synthetic  # --synthetic 1: generated data of the benchmark's shapes, no files
        self.loaded: Optional[Tuple[int, int]] = None  # training and test samples of the splits read

    @property
    def num_classes(self) -> int:
        return self.N_CLASSES_PER_TASK if self.DOMAIN_IL else self.N_TASKS * self.N_CLASSES_PER_TASK

    def read_splits(self) -> Tuple[Split, Split]:
        """The full train and test splits as the benchmark's files hold them."""
        raise NotImplementedError

    def source_paths(self) -> Optional[list]:
        """The files or folders ``read_splits`` reads (for the results' data provenance); ``None``: not said."""
        return None

    def synthetic_splits(self) -> Tuple[Split, Split]:
        """``--synthetic 1``: generated images of the benchmark's shape, value range and classes."""
        per_class = synthetic_sizes(self.num_classes, self.INPUT_SHAPE)
        top = min(255, int(self.TRANSFORM.scale))
        return tuple(Split(*synthetic_arrays(self.num_classes, self.INPUT_SHAPE, top, n, stream))
                     for stream, n in enumerate(per_class))

    def load_splits(self) -> Tuple[Split, Split]:
        """The train and test splits; ``DataError`` when a label or a task is wrong (see ``check_split``)."""
        train, test = self.synthetic_splits() if self.synthetic else self.read_splits()
        self.check_split(train, "training")
        self.check_split(test, "test")
        self.loaded = (len(train.y), len(test.y))
        return train, test

    def provenance(self) -> dict:
        """Where the splits ``load_splits`` returned came from (call it after): ``source`` "synthetic",
        "embedded", "files" (with the files, their bytes and content hash) or "undeclared", the samples
        read, the benchmark's canonical numbers and a ``warning`` when they differ."""
        if self.synthetic:
            out = {"source": "synthetic"}
        elif self.EMBEDDED:
            out = {"source": "embedded"}
        elif self.source_paths() is None:
            out = {"source": "undeclared"}
        else:
            out = describe_files(self.source_paths())
        loaded = self.loaded
        canonical = None if self.synthetic else self.CANONICAL_SAMPLES
        out.update(samples_read={"train": loaded and loaded[0], "test": loaded and loaded[1]},
                   canonical_samples=None if canonical is None else {"train": canonical[0], "test": canonical[1]},
                   warning=None if loaded is None else size_warning(self.NAME, loaded, canonical))
        return out

    def check_split(self, split: Split, name: str) -> None:
        """Refuse labels outside the benchmark's classes and tasks that have no sample in ``split``."""
        where = f"{self.NAME or type(self).__name__} ({self.data_path})"
        labels = split.y.long()
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
            raise DataError(f"{where}: the {name} split holds label {bad}, outside the benchmark's "
                            f"classes 0..{self.num_classes - 1}")
        if self.DOMAIN_IL:  # every task is the whole split, transformed (``to_device``)
            if not len(labels):
                raise DataError(f"{where}: the {name} split is empty; every task of {self.N_TASKS} is made from it")
            return
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
        """The class-to-task table used for masking and Task-IL evaluation (all zeros for ``DOMAIN_IL``,
        where it does not apply: a sample's task is its domain, ``Split.task``)."""
        return torch.arange(self.num_classes) // self.N_CLASSES_PER_TASK

    def to_device(self, split: Split, device) -> Split:
        """``split`` on ``device``, each sample's task set from its label (what a domain benchmark overrides)."""
        split = split.to(device)
        return Split(split.x, split.y, self.task_of_class().to(device)[split.y])


def class_permutation(n_classes: int, order_seed: int) -> Optional[torch.Tensor]:
    """``--class_order``: ``perm[l]`` is the original class that gets label ``l`` (``None`` for 0: natural order).

    Drawn by NumPy's legacy generator (its streams never change between
    versions) seeded from ``order_seed`` alone, not from ``--seed``."""
    if not order_seed:
        return None
    rng = np.random.RandomState(derive_seed(order_seed, "class-order") % 2 ** 32)
    return torch.from_numpy(rng.permutation(n_classes))


def relabel(split: Split, perm: torch.Tensor) -> Split:
    """``split`` with original class ``perm[l]`` renamed ``l``: tasks are then cut from the permuted classes."""
    new_label = torch.empty_like(perm)
    new_label[perm] = torch.arange(len(perm))
    return Split(split.x, new_label[split.y], split.task)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
    """Indices of a fixed stratified split: the same fraction of every class goes to test."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def stratified_holdout(groups: torch.Tensor, percent: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``--validation``: (kept, held-out) sample indices, ascending; ``round(percent / 100 * n)`` of each
    group's ``n`` samples are held out, drawn by a generator derived from ``seed``.  A percentage that would hold
    out none (or all) of some group's samples is refused before any training: its validation accuracy would be
    NaN (or the class never trained)."""
    labels = groups.cpu().numpy()
    sizes = np.unique(labels, return_counts=True)[1]
    held_out = np.round(percent / 100 * sizes)
    if (held_out == 0).any() or (held_out == sizes).any():
        smallest = int(sizes.min())
        raise UserError(f"--validation {percent:g} holds out {'no' if (held_out == 0).any() else 'every'} sample "
                        f"of some class (the smallest has {smallest} training samples); --validation is a "
                        f"percentage: give one between {math.ceil(5000 / smallest) / 100:g} and "
                        f"{math.floor(100 * (100 - 50 / smallest)) / 100:g}")
    kept, held = stratified_split(labels, percent / 100, derive_seed(seed, "validation") % 2 ** 32)
    return torch.from_numpy(kept), torch.from_numpy(held)


def first_per_task(task: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the first ``n`` samples of every task, ascending (``--debug_mode``'s evaluation subset)."""
    picked = [torch.nonzero(task == t).flatten()[:n] for t in torch.unique(task).tolist()]
    return torch.sort(torch.cat(picked)).values
