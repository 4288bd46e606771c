"""The GPU check's arithmetic (its end-to-end smoke run is in .ci/run: it takes minutes on a CPU)."""
from benchmarks.gpu_check import PAPER_TABLE_RUNS, protocol_steps


def test_protocol_step_counts_follow_the_paper_protocol():
    assert protocol_steps("seq-cifar10") == 5 * 50 * 313      # 10,000 images per task at batch 32
    assert protocol_steps("seq-cifar100") == 10 * 50 * 157    # 5,000 images per task
    assert protocol_steps("seq-tinyimg") == 10 * 100 * 313    # 10,000 images per task, 100 epochs
    assert sum(PAPER_TABLE_RUNS.values()) == 360              # 3 image benchmarks x 3 buffers x 2 x 2 x 10 seeds
