"""Preemption on real seq-digits runs, on the CPU with one thread per process: SIGTERM (a scheduler
reclaiming the machine) stops the grid runner and its run, which checkpoints and exits 130, and the
same command resumes the run from its checkpoint (checkpoints are on by default); a wandb agent's run
of a sweep file (``--checkpoint_dir DIR/checkpoints/{name} --resume=True``) does the same in its own
folder.  Both end with the results of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from tests.test_grid import ROOT, wait_for
from utils.checkpoint import CHECKPOINT_FILE
from utils.flags import results_name
from utils.grid.sweep import DEFAULT_COMMAND, parse_extra, plan, render_command

SWEEP = {"program": "main.py", "method": "grid",
         "parameters": {"dataset": {"value": "seq-digits"}, "model": {"value": "er"},
                        "classifier": {"value": "fno"}, "masked_softmax": {"value": 1},
                        "buffer_size": {"value": 50}, "load_best_args": {"value": True},
                        "seed": {"value": 2}, "device": {"value": "cpu"}, "nowand": {"value": 1}}}
EXTRA = ["--", "--n_epochs", "1"]


def start(argv):
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT))


def runner(sweep, out, *flags):
    return start([sys.executable, "-m", "utils.grid", str(sweep), "--results_dir", str(out), *flags, *EXTRA])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (started at once, in the background): a function returning its results file."""
    folder = tmp_path_factory.mktemp("reference")
    sweep = folder / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(SWEEP))
    process = runner(sweep, folder / "R", "--no_checkpoints")

    def results_file():
        assert process.wait(timeout=120) == 0, process.communicate()[0]
        [name] = [f for f in os.listdir(folder / "R") if f.endswith(".json")]
        return folder / "R" / name
    yield results_file
    if process.poll() is None:
        process.kill()


def without_timing(path):
    with open(path) as f:
        results = json.load(f)
    for key in ("wall_time_s", "train_time_s", "start_time"):
        results.pop(key, None)
    for flag in ("results_file", "results_dir", "checkpoint_dir", "resume"):
        results["args"].pop(flag, None)
    return results


def test_sigterm_checkpoints_exits_130_and_the_rerun_resumes_to_identical_results(tmp_path, reference):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(SWEEP))
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
    assert without_timing(run.results_file) == without_timing(reference())


def test_agent_run_of_a_sweep_file_resumes_its_own_checkpoint_folder(tmp_path, reference):
    """The command a wandb agent runs for a sweep file's run (``--results_dir``, ``--checkpoint_dir
    DIR/checkpoints/{name}``, ``--resume=True``), SIGTERMed after its first task and started again as
    the agent would requeue it: it checkpoints into DIR/checkpoints/<results name>, resumes from there
    and ends with the uninterrupted run's results."""
    out = str(tmp_path / "R")
    params = {name: spec["value"] for name, spec in SWEEP["parameters"].items()}
    params.update(results_dir=out, checkpoint_dir=f"{out}/checkpoints/{{name}}", resume=True)
    argv = render_command(DEFAULT_COMMAND, "main.py", params) + EXTRA[1:]
    name = results_name({**params, **parse_extra(EXTRA[1:])})
    folder = os.path.join(out, "checkpoints", name)
    first = start(argv)
    assert wait_for(lambda: os.path.exists(os.path.join(folder, CHECKPOINT_FILE)), timeout=120)
    first.send_signal(signal.SIGTERM)
    printed = first.communicate(timeout=60)[0]
    assert first.returncode == 130, printed
    assert not os.path.exists(os.path.join(out, name + ".json"))
    second = start(argv)
    printed = second.communicate(timeout=120)[0]
    assert second.returncode == 0, printed
    assert f"Resuming from {folder}: " in printed
    assert os.listdir(os.path.join(out, "checkpoints")) == [name]  # the one folder, named as the results file
    assert without_timing(os.path.join(out, name + ".json")) == without_timing(reference())
