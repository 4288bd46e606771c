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


def check(out, *flags):
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.Popen(["bash", "benchmarks/gpu_check.sh", "--smoke", *flags, str(out)], cwd=root,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]})


def test_a_check_killed_midway_keeps_its_finished_sections(tmp_path):
    """The report is written section by section: killed (the whole process group, at once) while the second
    section runs, the first section is in the report, whole, with how it ended."""
    import os
    import signal
    import time
    proc = check(tmp_path, "--only", "environment,seq-cifar10")
    report = tmp_path / "gpu_report.md"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (report.exists() and "_finished" in report.read_text()):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    text = report.read_text()
    assert text.startswith("# GPU check") and "## Environment" in text and "- torch " in text
    assert "_finished in" in text and "## seq-cifar10" not in text and text.endswith("\n\n")


def test_a_section_past_its_time_box_is_killed_and_reported_and_the_next_one_runs(tmp_path):
    proc = check(tmp_path, "--only", "seq-cifar10,projection", "--box", "seq-cifar10=3")
    assert proc.wait(timeout=300) == 1  # the smoke run fails on a killed section
    text = (tmp_path / "gpu_report.md").read_text()
    assert "## seq-cifar10" in text and "killed after its time box of 3 s" in text
    assert "## Projected GPU-hours" in text.split("killed after its time box")[1] and "Total time:" in text
