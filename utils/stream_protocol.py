"""The trainer's side of the online, budgeted, blurry, task-free and noisy settings (docs/online.md).

``stream_splits`` turns the clean training split into the stream a run trains
on (label noise, then blurry task boundaries); ``stage_steps`` and
``stage_passes`` give a stage's optimizer steps under ``--fitting_mode``;
``task_il_defined`` says whether Task-IL means anything in the run.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from datasets.utils.continual_dataset import ContinualDataset, Split
from datasets.utils.streams import blurry_tasks, noisy_labels, other_task_share
from utils.seeding import make_generator

NOISE_STREAM = "label-noise"  # the named random streams of utils.seeding: nothing else draws from them
BLURRY_STREAM = "blurry"


def noise_pairs(dataset: ContinualDataset, perm: Optional[torch.Tensor]) -> Optional[dict]:
    """The dataset's asymmetric noise table in the run's labels (``--class_order`` renames the classes)."""
    pairs = dataset.ASYMMETRIC_NOISE
    if perm is None:
        return dict(pairs)
    label_of = {int(original): label for label, original in enumerate(perm.tolist())}
    return {label_of[a]: label_of[b] for a, b in pairs.items()}


def stream_splits(args, dataset: ContinualDataset, train: Split, perm: Optional[torch.Tensor]) -> Tuple[Split, dict]:
    """(the training stream, what was realised): ``--noise_rate`` corrupts the labels, and the stream is
    cut into tasks by the labels it carries (the annotation is all a stream has); ``--blurry`` then moves
    samples between tasks.  Returns the realised noise rate and each task's share of other tasks' samples."""
    realised = {"realised_noise_rate": None, "blurry_share": None}
    if args.noise_rate:
        pairs = noise_pairs(dataset, perm) if args.noise_type == "asym" else None
        y, realised["realised_noise_rate"] = noisy_labels(train.y, dataset.num_classes, args.noise_rate, pairs,
                                                          make_generator(args.seed, NOISE_STREAM))
        task = train.task if dataset.DOMAIN_IL else dataset.task_of_class().to(y.device)[y]
        train = Split(train.x, y, task)
    if args.blurry:
        own = train.task
        moved = blurry_tasks(own, dataset.N_TASKS, args.blurry, make_generator(args.seed, BLURRY_STREAM))
        realised["blurry_share"] = other_task_share(moved, own, dataset.N_TASKS)
        train = Split(train.x, train.y, moved)
    return train, realised


def stage_steps(args, steps_per_pass: int) -> int:
    """A stage's optimizer steps: ``--n_epochs`` passes (``--fitting_mode epochs``) or ``--n_iters`` steps
    (``iters``, passes repeated as needed), at most ``--max_steps_per_task``."""
    total = args.n_iters if args.fitting_mode == "iters" else steps_per_pass * args.n_epochs
    return total if args.max_steps_per_task is None else min(total, args.max_steps_per_task)


def stage_passes(args, steps_per_pass: int) -> int:
    """How many (possibly partial) passes over the task's data ``stage_steps`` takes."""
    return max(1, math.ceil(stage_steps(args, steps_per_pass) / steps_per_pass))


def task_il_defined(args, dataset: ContinualDataset) -> bool:
    """Task-IL needs a task identity at test time: none on a domain-incremental benchmark (every task holds
    every class) and none in a task-free run (the method is never told what a task is)."""
    return not (dataset.DOMAIN_IL or args.task_free)
