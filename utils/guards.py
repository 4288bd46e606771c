"""Checks that stop a run whose numbers can no longer mean anything, shared by both trainers."""
from __future__ import annotations

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
