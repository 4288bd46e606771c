"""Checks that stop a run whose numbers can no longer mean anything, shared by both trainers."""
from __future__ import annotations

import contextlib
import math

from utils.errors import UserError


class DivergedError(UserError):
    """The training loss stopped being a finite number: the run's accuracies would be meaningless."""


def check_finite_loss(loss: float, where: str, lr) -> None:
    """Raise ``DivergedError`` naming ``where`` (e.g. "task 2, steps 301-600") when ``loss`` is NaN or infinite.

    Called once per task or epoch on a value the trainer already moved to the host for its log line,
    so the check adds no synchronisation.
    """
    if not math.isfinite(loss):
        raise DivergedError(f"the training loss became {loss} in {where}; the run diverged and no results "
                            f"were written: lower --lr (now {lr}) or check the data and loss weights")


@contextlib.contextmanager
def batch_norm_needs_two(args):
    """Torch's error for a training batch of one sample under batch norm (a replay batch of ``--minibatch_size
    1``, ``--batch_size 1``), as one line naming the flags; the last checkpoint is kept as for any error."""
    try:
        yield
    except ValueError as exc:
        if "Expected more than 1 value per channel when training" not in str(exc):
            raise
        sizes = ", ".join(f"--{flag} {getattr(args, flag)}" for flag in ("batch_size", "minibatch_size", "buffer_size")
                          if getattr(args, flag, None) is not None)
        raise UserError(f"a training batch of one sample reached batch norm (--backbone "
                        f"{getattr(args, 'backbone', '?')}), which needs two or more; now {sizes}: give batch sizes "
                        f"of at least 2 or a backbone without batch norm") from None
