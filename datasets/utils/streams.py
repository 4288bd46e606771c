"""How a training stream departs from the clean, task-by-task split: blurry task boundaries and label noise.

Both are drawn once, when a run is built, from the run's own named random
streams (CPU generators, so every device gets the same draws), and depend on
nothing but the seed, the data and these settings: an FC and an FNO run with
one seed train on the same stream.

Blurry-M (Rainbow Memory, Bang et al., CVPR 2021): from every task ``t`` with
``n_t`` training samples, ``k_t = round(M / 100 * n_t)`` samples drawn at random
leave the task, and are dealt out in equal parts to the other tasks (the
``r = k_t mod (T - 1)`` left over go one each to the ``r`` tasks after ``t``, cyclically).
A task's stream is its remaining samples plus those it receives, so on a
benchmark with equally large tasks every task's stream holds exactly ``k``
samples of other tasks' classes out of ``n`` (each task gives its left-overs
to the next ones and gets as many from the previous ones): the share is M %
up to the rounding of ``k``.  Labels are unchanged; only the stage a sample is
trained in moves.

Label noise: in every class ``c`` with ``n_c`` training samples, exactly
``round(R * n_c)`` samples drawn at random get a wrong label.  Symmetric noise
draws it uniformly among the other classes; asymmetric noise maps the class by
a fixed table (CIFAR-10's pairs of Patrini et al., CVPR 2017: truck ->
automobile, bird -> airplane, deer -> horse, cat <-> dog), and classes outside
the table keep their labels, so the realised share of wrong labels is below R.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch


def blurry_tasks(task: torch.Tensor, n_tasks: int, percent: float, generator: torch.Generator) -> torch.Tensor:
    """Each training sample's stream task under blurry-``percent`` (see the module docstring); ``task`` is
    each sample's own task (CPU or device, returned on the same device)."""
    if n_tasks < 2:
        raise ValueError(f"a blurry stream moves samples between tasks; this benchmark has {n_tasks} task")
    device, task = task.device, task.cpu()
    stream = task.clone()
    for t in range(n_tasks):
        members = torch.nonzero(task == t).flatten()
        moved = members[torch.randperm(len(members), generator=generator)[:round(percent / 100 * len(members))]]
        others = (t + torch.arange(1, n_tasks)) % n_tasks  # the next tasks first, cyclically
        share, extra = divmod(len(moved), n_tasks - 1)
        counts = torch.full((n_tasks - 1,), share)
        counts[:extra] += 1
        stream[moved] = torch.repeat_interleave(others, counts)
    return stream.to(device)


def other_task_share(stream_task: torch.Tensor, own_task: torch.Tensor, n_tasks: int) -> list:
    """Per stream task, the share (percent) of its samples whose own task is another one."""
    shares = []
    for t in range(n_tasks):
        here = stream_task == t
        shares.append(100 * float((own_task[here] != t).sum()) / max(1, int(here.sum())))
    return shares


# CIFAR-10's class numbers: 0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 6 frog, 7 horse, 8 ship, 9 truck.
CIFAR10_ASYMMETRIC: Dict[int, int] = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


def noisy_labels(labels: torch.Tensor, num_classes: int, rate: float, pairs: Dict[int, int] | None,
                 generator: torch.Generator) -> Tuple[torch.Tensor, float]:
    """(labels with noise, realised share of changed labels); ``pairs`` ``None``: symmetric noise, else the
    asymmetric table class -> wrong class.  See the module docstring."""
    device, clean = labels.device, labels.cpu()
    noisy = clean.clone()
    for c in range(num_classes):
        if pairs is not None and c not in pairs:
            continue
        members = torch.nonzero(clean == c).flatten()
        chosen = members[torch.randperm(len(members), generator=generator)[:round(rate * len(members))]]
        if pairs is not None:
            noisy[chosen] = pairs[c]
        else:  # uniform over the other classes: draw among K - 1 and skip the true class
            wrong = torch.randint(0, num_classes - 1, (len(chosen),), generator=generator)
            noisy[chosen] = wrong + (wrong >= c).long()
    realised = float((noisy != clean).float().mean()) if len(clean) else 0.0
    return noisy.to(device), realised
