"""Preemption through the grid runner on real seq-digits runs: SIGTERM (a scheduler reclaiming the
machine) stops the runner and its run, which checkpoints and exits 130; the same command resumes the
run from its checkpoint (checkpoints are on by default) and writes the same results as an
uninterrupted run, on the CPU with one thread per process."""
import json
import os
import signal
import subprocess
import sys

import yaml

from tests.test_grid import ROOT, wait_for
from utils.checkpoint import CHECKPOINT_FILE
from utils.grid import plan

SWEEP = {"program": "main.py", "method": "grid",
         "parameters": {"dataset": {"value": "seq-digits"}, "model": {"value": "er"},
                        "classifier": {"value": "fno"}, "masked_softmax": {"value": 1},
                        "buffer_size": {"value": 50}, "load_best_args": {"value": True},
                        "seed": {"value": 2}, "device": {"value": "cpu"}, "nowand": {"value": 1}}}
EXTRA = ["--", "--n_epochs", "1"]


def runner(sweep, out, *flags):
    return subprocess.Popen([sys.executable, "-m", "utils.grid", str(sweep), "--results_dir", str(out), *flags,
                             *EXTRA], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT))


def without_timing(path):
    with open(path) as f:
        results = json.load(f)
    for key in ("wall_time_s", "train_time_s", "start_time"):
        results.pop(key, None)
    for flag in ("results_file", "checkpoint_dir", "resume"):
        results["args"].pop(flag, None)
    return results


def test_sigterm_checkpoints_exits_130_and_the_rerun_resumes_to_identical_results(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(SWEEP))
    reference = runner(sweep, tmp_path / "ref", "--no_checkpoints")
    out = tmp_path / "R"
    run = plan(str(sweep), str(out), checkpoints=True, extra=EXTRA[1:])[0]
    first = runner(sweep, out)
    assert wait_for(lambda: os.path.exists(os.path.join(run.checkpoint_dir, CHECKPOINT_FILE)), timeout=120)
    first.send_signal(signal.SIGTERM)
    printed = first.communicate(timeout=60)[0]
    assert first.returncode == 130, printed
    assert "checkpoint kept" in printed and not os.path.exists(run.results_file)
    log = open(run.log_file).read()
    assert "main.py: interrupted" in log and "rerun with --resume to continue" in log
    second = runner(sweep, out)
    printed = second.communicate(timeout=120)[0]
    assert second.returncode == 0, printed
    assert "Resuming from" in open(run.log_file).read()
    assert not os.path.exists(run.checkpoint_dir)
    assert reference.wait(timeout=120) == 0
    [ref_file] = [f for f in os.listdir(tmp_path / "ref") if f.endswith(".json")]
    assert without_timing(run.results_file) == without_timing(tmp_path / "ref" / ref_file)
