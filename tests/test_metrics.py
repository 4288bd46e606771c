import pytest

from utils.metrics import (average_incremental, backward_transfer, final_average, forgetting, forward_transfer,
                           pad_rows)

A = [
    [90.0, None, None],
    [70.0, 80.0, None],
    [60.0, 75.0, 95.0],
]


def test_final_average_is_mean_of_last_row():
    assert final_average(A) == pytest.approx((60 + 75 + 95) / 3)


def test_forgetting_uses_best_previous_accuracy():
    # task 0: best 90 -> 60 = 30; task 1: best 80 -> 75 = 5
    assert forgetting(A) == pytest.approx(17.5)
    # best is not the diagonal: accuracy rose after learning, then fell
    b = [[50.0, None, None], [70.0, 80.0, None], [40.0, 80.0, 90.0]]
    assert forgetting(b) == pytest.approx(((70 - 40) + (80 - 80)) / 2)


def test_backward_transfer_against_the_diagonal():
    assert backward_transfer(A) == pytest.approx(((60 - 90) + (75 - 80)) / 2)
    b = [[50.0, None], [60.0, 80.0]]
    assert backward_transfer(b) == pytest.approx(10.0)


def test_single_task_has_no_forgetting_or_bwt():
    assert forgetting([[88.0]]) is None
    assert backward_transfer([[88.0]]) is None


def test_non_square_matrix_rejected():
    with pytest.raises(ValueError, match="T x T"):
        forgetting([[1.0, 2.0]])


def test_pad_rows():
    assert pad_rows([[1.0], [2.0, 3.0]], 3) == [[1.0, None, None], [2.0, 3.0, None]]


# A full 3-task matrix, above the diagonal included (what GEM's evaluation on every task gives), and the
# accuracies of the randomly initialised network on each task.
FULL = [
    [90.0, 12.0, 8.0],
    [70.0, 80.0, 15.0],
    [60.0, 75.0, 95.0],
]
RANDOM = [10.0, 11.0, 9.0]


def test_forward_transfer_by_hand():
    next_task = [FULL[t][t + 1] for t in range(2)]                  # A[0][1], A[1][2]
    assert forward_transfer(next_task, RANDOM) == pytest.approx(((12 - 11) + (15 - 9)) / 2)
    assert forward_transfer([], RANDOM[:1]) is None                   # one task: nothing to transfer to
    assert forward_transfer([12.0, None], RANDOM) is None             # Task-IL on a domain benchmark


def test_average_incremental_accuracy_by_hand():
    expected = (90 + (70 + 80) / 2 + (60 + 75 + 95) / 3) / 3
    assert average_incremental(A) == pytest.approx(expected)          # padded rows: None skipped
    assert average_incremental([r[:t + 1] for t, r in enumerate(A)]) == pytest.approx(expected)
    assert average_incremental([[88.0]]) == 88.0
