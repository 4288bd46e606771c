"""The protocol's optimisation schedule: SGD, the learning rate of each epoch, and which epochs are evaluated."""
from __future__ import annotations

import math

import torch
from torch import nn

WARMUP_START = 1 / 3  # the authors' WarmupMultiStepLR starts its linear warm-up at a third of the lr


def lr_factor(epoch: int, args) -> float:
    """The learning-rate multiplier of ``epoch`` (0-based).

    Warm-up over ``warmup_epochs`` w: 1/3 + (2/3) epoch / w (1/3, 7/15, 3/5,
    11/15, 13/15 for w = 5, as the authors' scheduler), then x ``lr_decay`` at
    each milestone ("step") or a cosine to 0 over the remaining epochs
    ("cosine"; with w = 0 the authors' CosineAnnealingLR(T_max = n_epochs)).
    """
    if epoch < args.warmup_epochs:
        return WARMUP_START + (1 - WARMUP_START) * epoch / args.warmup_epochs
    if args.schedule == "cosine":
        progress = (epoch - args.warmup_epochs) / max(1, args.n_epochs - args.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return args.lr_decay ** sum(epoch >= m for m in args.lr_milestones)


def make_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, args) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per epoch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, args))


def is_evaluated(args, epoch: int) -> bool:
    """Whether the 1-based ``epoch`` is evaluated on the test set: every ``eval_every``-th and the last."""
    return bool(args.eval_every and epoch % args.eval_every == 0) or epoch == args.n_epochs
