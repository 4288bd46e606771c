"""``utils.grid --slurm``: the pending runs as one submitit job array, exercised through submitit's
local executor (``--slurm_local``) on test_grid's stand-in program; a requeued task is the same task,
whose command resumes from the run's checkpoint."""
import os

import pytest

from tests.test_grid import env, events, make_sweep, results_in  # noqa: F401
from utils.grid import main as grid_main, plan

submitit = pytest.importorskip("submitit")


def test_local_executor_runs_every_pending_run_once(env, capsys):
    from utils.slurm import GridTask
    sweep = make_sweep(env, seeds=(1, 2), sleep=0.0)
    out = env / "R"
    runs = plan(sweep, str(out), checkpoints=True)
    assert grid_main([sweep, "--results_dir", str(out), "--set", "seed=1"]) == 0  # two runs done beforehand
    os.remove(env / "ledger.jsonl")
    assert grid_main([sweep, "--results_dir", str(out), "--slurm", "--slurm_local"]) == 0
    printed = capsys.readouterr().out
    assert "4 runs, 2 done or claimed, 2 to submit" in printed and "submitted 2 task(s) as job array" in printed
    assert len(results_in(out)) == 4
    assert sorted(e["name"] for e in events(env, "done")) == sorted(
        os.path.basename(r.results_file) for r in runs if r.params["seed"] == 2)
    assert all(not e["sigint_ignored"] for e in events(env, "start"))
    assert os.listdir(out / "checkpoints") == []  # removed once the results were written
    assert os.listdir(out / "slurm")  # submitit's own files
    assert grid_main([sweep, "--results_dir", str(out), "--slurm", "--slurm_local"]) == 0  # nothing left to do
    assert "0 to submit" in capsys.readouterr().out
    assert GridTask(runs[0].argv, runs[0].results_file, runs[0].log_file)().startswith("already done")


def test_failed_task_is_reported_and_a_requeue_is_the_same_task(env, capsys):
    from utils.slurm import GridTask
    sweep = make_sweep(env, seeds=(1,), sleep=0.0, fail=(1,))
    out = env / "R"
    assert grid_main([sweep, "--results_dir", str(out), "--slurm_local"]) == 1
    printed = capsys.readouterr().out
    assert printed.count("FAILED") == 2 and printed.count("deliberate failure") == 2, printed
    run = plan(sweep, str(out), checkpoints=True)[0]
    assert "--resume" in run.argv and any(a.startswith("--checkpoint_dir=") for a in run.argv)
    task = GridTask(run.argv, run.results_file, run.log_file, run.checkpoint_dir)
    requeued = task.checkpoint()
    assert isinstance(requeued, submitit.helpers.DelayedSubmission)
    assert requeued.function is task  # same command, so the requeued task resumes from the checkpoint


def test_slurm_without_a_cluster_is_one_line(env, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(env))  # no sbatch
    sweep = make_sweep(env, seeds=(1,), sleep=0.0)
    assert grid_main([sweep, "--results_dir", str(env / "R"), "--slurm"]) == 2
    assert "no SLURM cluster here" in capsys.readouterr().err
