"""Continual-learning metrics on accuracy matrices.

An accuracy matrix ``A`` is a list of rows; ``A[t][j]`` is the accuracy (percent)
on task ``j``'s test set after training on task ``t``, defined for ``j <= t``
(``None`` above the diagonal: that task has not been seen yet).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

Matrix = Sequence[Sequence[Optional[float]]]


def final_average(matrix: Matrix) -> float:
    """Mean over tasks of the last row: the headline Class-IL / Task-IL number."""
    last = [a for a in matrix[-1] if a is not None]
    return sum(last) / len(last)


def _check_square(matrix: Matrix) -> int:
    t = len(matrix)
    if any(len(row) != t for row in matrix):
        raise ValueError("forgetting and backward transfer need the full T x T matrix")
    return t


def forgetting(matrix: Matrix) -> Optional[float]:
    """Average forgetting (Chaudhry et al., 2018).

    For every task j but the last, the drop from the best accuracy ever reached
    on it before the final task to its final accuracy,
    f_j = max_{l in [j, T-2]} A[l][j] - A[T-1][j]; the result is the mean of f_j
    over j = 0..T-2.  Higher means more forgetting; ``None`` when T < 2.
    """
    t = _check_square(matrix)
    if t < 2:
        return None
    drops = [max(matrix[l][j] for l in range(j, t - 1)) - matrix[t - 1][j] for j in range(t - 1)]
    return sum(drops) / len(drops)


def backward_transfer(matrix: Matrix) -> Optional[float]:
    """Backward transfer (Lopez-Paz & Ranzato, 2017).

    BWT = 1/(T-1) * sum_{j=0}^{T-2} (A[T-1][j] - A[j][j]): how much training on
    later tasks changed the accuracy on earlier ones, measured against the
    accuracy right after learning them.  Negative values mean forgetting;
    ``None`` when T < 2.
    """
    t = _check_square(matrix)
    if t < 2:
        return None
    return sum(matrix[t - 1][j] - matrix[j][j] for j in range(t - 1)) / (t - 1)


def pad_rows(rows: List[List[float]], n_tasks: int) -> List[List[Optional[float]]]:
    """Rows of seen-task accuracies -> rows of length ``n_tasks`` padded with ``None``."""
    return [list(r) + [None] * (n_tasks - len(r)) for r in rows]
