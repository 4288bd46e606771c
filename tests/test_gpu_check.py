"""The GPU check's arithmetic (its end-to-end smoke run is in .ci/run: it takes minutes on a CPU)."""
from benchmarks.gpu_check import PAPER_TABLE_RUNS, protocol_steps


def test_protocol_step_counts_follow_the_paper_protocol():
    assert protocol_steps("seq-cifar10") == 5 * 50 * 313      # 10,000 images per task at batch 32
    assert protocol_steps("seq-cifar100") == 10 * 50 * 157    # 5,000 images per task
    assert protocol_steps("seq-tinyimg") == 10 * 100 * 313    # 10,000 images per task, 100 epochs
    assert sum(PAPER_TABLE_RUNS.values()) == 360              # 3 image benchmarks x 3 buffers x 2 x 2 x 10 seeds


def test_cl_table_projection_covers_the_480_runs():
    from benchmarks.throughput import protocol_steps as steps, table_hours
    assert steps("seq-mnist") == 5 * 1200                          # 12,000 images per task at batch 10, 1 epoch
    one_per_second = {(d, m, "fno"): 1.0 for d in ("seq-mnist", "seq-cifar10", "seq-cifar100", "seq-tinyimg")
                      for m in ("er", "derpp")}                      # FC cells take the FNO rate
    hours, covered, total = table_hours(one_per_second)
    assert covered == total == 480
    expected = 30 * 2 * 2 * sum(steps(d) for d in ("seq-mnist", "seq-cifar10", "seq-cifar100", "seq-tinyimg"))
    assert abs(hours * 3600 - expected) < 1e-6 * expected
    assert table_hours({("seq-mnist", "er", "fc"): 2.0})[1:] == (60, 480)  # ER on seq-mnist, FC and FNO
