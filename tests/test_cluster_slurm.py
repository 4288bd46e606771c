"""``utils.grid --slurm``: the pending runs (or packs of seeds) as one submitit job array, exercised
through submitit's local executor (``--slurm_local``) on the tests' stand-in programs; a requeued task
is the same task, whose command resumes every run from its own checkpoint."""
import os

import pytest

from tests.test_grid import env, events, make_sweep, results_in  # noqa: F401
from utils.grid.cli import main as grid_main
from utils.grid.slurm import GridTask
from utils.grid.sweep import plan

submitit = pytest.importorskip("submitit")


def test_local_executor_runs_every_pending_run_once(env, capsys):
    sweep = make_sweep(env, seeds=(1, 2), sleep=0.0)
    out = env / "R"
    runs = plan(sweep, str(out), checkpoints=True)
    assert grid_main([sweep,
                      "--any_program", "--results_dir", str(out), "--set", "seed=1"]) == 0  # two runs done beforehand
    os.remove(env / "ledger.jsonl")
    assert grid_main([sweep, "--any_program", "--results_dir", str(out), "--slurm", "--slurm_local"]) == 0
    printed = capsys.readouterr().out
    assert "4 runs, 2 done or claimed, 2 to submit" in printed and "submitted 2 task(s) as job array" in printed
    assert len(results_in(out)) == 4
    assert sorted(e["name"] for e in events(env, "done")) == sorted(
        os.path.basename(r.results_file) for r in runs if r.params["seed"] == 2)
    assert all(not e["sigint_ignored"] for e in events(env, "start"))
    assert os.listdir(out / "checkpoints") == []  # removed once the results were written
    assert os.listdir(out / "slurm")  # submitit's own files
    assert grid_main([sweep,
                      "--any_program", "--results_dir", str(out), "--slurm", "--slurm_local"]) == 0  # nothing left to do
    assert "0 to submit" in capsys.readouterr().out
    assert GridTask(runs[0])().startswith("already done")


def test_failed_task_is_reported_and_a_requeue_is_the_same_task(env, capsys):
    sweep = make_sweep(env, seeds=(1,), sleep=0.0, fail=(1,))
    out = env / "R"
    assert grid_main([sweep, "--any_program", "--results_dir", str(out), "--slurm_local"]) == 1
    printed = capsys.readouterr().out
    assert printed.count("FAILED") == 2 and printed.count("deliberate failure") == 2, printed
    run = plan(sweep, str(out), checkpoints=True)[0]
    assert "--resume" in run.argv and any(a.startswith("--checkpoint_dir=") for a in run.argv)
    task = GridTask(run)
    requeued = task.checkpoint()
    assert isinstance(requeued, submitit.helpers.DelayedSubmission)
    assert requeued.function is task  # same command, so the requeued task resumes from the checkpoint


def test_slurm_without_a_cluster_is_one_line(env, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(env))  # no sbatch
    sweep = make_sweep(env, seeds=(1,), sleep=0.0)
    assert grid_main([sweep, "--any_program", "--results_dir", str(env / "R"), "--slurm"]) == 2
    assert "no SLURM cluster here" in capsys.readouterr().err


def test_packs_are_array_tasks_and_a_requeued_pack_resumes_every_seed(tmp_path, monkeypatch, capsys):
    """With --pack_seeds each array task is one main.py --seeds process (here the stand-in main.py of
    test_grid_packs, which records what it runs); a requeued pack is the same task, whose command gives
    every seed its own checkpoint folder and --resume."""
    from tests.test_grid_packs import EXTRA, STAND_IN, write_sweep
    from utils.grid.packs import make_pack
    from utils.grid.runs import GridPack
    from utils.seeds import for_seed
    (tmp_path / "main.py").write_text(STAND_IN)
    monkeypatch.setenv("LEDGER", str(tmp_path / "ledger.jsonl"))
    sweep = write_sweep(tmp_path, program=str(tmp_path / "main.py"), seed=[1, 2, 3])
    out = tmp_path / "R"
    assert grid_main([sweep,
                      "--any_program", "--results_dir", str(out), "--slurm_local", "--pack_seeds", "2", "--", *EXTRA]) == 0
    printed = capsys.readouterr().out
    assert "3 to submit" in printed and "submitted 2 task(s)" in printed and "all 3 submitted runs done" in printed
    runs = plan(sweep, str(out), checkpoints=True, extra=EXTRA)
    assert len(results_in(out)) == 3
    starts = events(tmp_path, "start")
    assert sorted(e["file"] for e in starts) == sorted(r.results_file for r in runs)
    assert sorted(len([e for e in starts if e["pid"] == pid]) for pid in {e["pid"] for e in starts}) == [1, 2]
    task = GridTask(make_pack(runs[:2]))
    assert isinstance(task.unit, GridPack) and task.checkpoint().function is task
    argv = task.unit.argv
    template = [a for a in argv if a.startswith("--checkpoint_dir=")][0].split("=", 1)[1]
    assert "--resume" in argv and [for_seed(template, r.params["seed"]) for r in runs[:2]] == \
        [r.checkpoint_dir for r in runs[:2]]
