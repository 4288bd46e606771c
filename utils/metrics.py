"""Continual-learning metrics on accuracy matrices.

An accuracy matrix ``A`` is a list of rows; ``A[t][j]`` is the accuracy (percent)
on task ``j``'s test set after training on task ``t``, defined for ``j <= t``
(``None`` above the diagonal: that task has not been seen yet).  Tasks are
numbered from 0 and ``T`` is the number of tasks (rows).  Forward transfer also
needs ``A[t-1][t]``, the accuracy on each task just before it is learnt, and
``R[t]``, the accuracy of the randomly initialised network on task ``t``.

| metric | formula |
|---|---|
| final average | ``1/T sum_j A[T-1][j]`` |
| average incremental accuracy | ``1/T sum_t (1/(t+1) sum_{j<=t} A[t][j])`` |
| forgetting | ``1/(T-1) sum_{j<T-1} (max_{j<=l<T-1} A[l][j] - A[T-1][j])`` |
| backward transfer (BWT) | ``1/(T-1) sum_{j<T-1} (A[T-1][j] - A[j][j])`` |
| forward transfer (FWT) | ``1/(T-1) sum_{t=1}^{T-1} (A[t-1][t] - R[t])`` |
| average anytime accuracy (AAUC) | ``1/N sum_i a_i`` over the N anytime evaluations a_i (``--eval_every``) |
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


def average_incremental(rows: Sequence[Sequence[float]]) -> float:
    """Average incremental accuracy (Rebuffi et al., 2017, iCaRL).

    The mean over the rows done so far of each row's mean over the tasks seen
    by then: 1/T * sum_t (1/(t+1) * sum_{j<=t} A[t][j]).  ``rows`` hold the seen
    tasks only (or are padded with ``None``, which is skipped).
    """
    means = []
    for row in rows:
        seen = [a for a in row if a is not None]
        means.append(sum(seen) / len(seen))
    return sum(means) / len(means)


def forward_transfer(next_task: Sequence[Optional[float]], random_init: Sequence[Optional[float]]) -> Optional[float]:
    """Forward transfer (Lopez-Paz & Ranzato, 2017, GEM; Mammoth's ``forward_transfer``).

    FWT = 1/(T-1) * sum_{t=1}^{T-1} (A[t-1][t] - R[t]): how much learning the
    earlier tasks helps a task before it is trained on, against the randomly
    initialised network.  ``next_task[t-1]`` is A[t-1][t] and ``random_init[t]``
    is R[t] (``random_init[0]`` is not used).  ``None`` without a pair (T < 2).
    """
    pairs = [(a, random_init[t + 1]) for t, a in enumerate(next_task)]
    if not pairs or any(a is None or r is None for a, r in pairs):
        return None
    return sum(a - r for a, r in pairs) / len(pairs)


def pad_rows(rows: List[List[float]], n_tasks: int) -> List[List[Optional[float]]]:
    """Rows of seen-task accuracies -> rows of length ``n_tasks`` padded with ``None``."""
    return [list(r) + [None] * (n_tasks - len(r)) for r in rows]


def average_anytime(anytime: Sequence[dict], key: str = "class_il") -> Optional[float]:
    """Average anytime accuracy (AAUC; Caccia et al., 2022; Koh et al., 2022): the mean of ``key`` over
    every anytime evaluation of the run (``--eval_every K``: every K optimizer steps of every task, each
    the mean accuracy over the tasks seen so far, the current one included).  With evaluations K steps
    apart this is the area under the accuracy-versus-steps curve divided by its length (a right Riemann
    sum).  ``None`` without evaluations, or when ``key`` is undefined (Task-IL of a task-free run)."""
    values = [entry[key] for entry in anytime]
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)
