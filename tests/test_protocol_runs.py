"""Shortened runs (--debug_mode, --max_steps_per_task, --n_tasks: marked partial), progress off a terminal,
and what every results file says about where it came from."""
import datetime
import io
import json
import os
import re

import pytest
import torch

import main as main_module
from tests.conftest import write_mnist
from utils.args import DEBUG_STEPS
from utils.flags import results_name
from utils.progress import ProgressBar
from utils.training import DEBUG_EVAL_PER_TASK, build_run, run_experiment

DIGITS = ["--dataset", "seq-digits", "--model", "er", "--buffer_size", "50", "--lr", "0.1", "--n_epochs", "2",
          "--seed", "1"]


def quiet(*_):
    pass


# ------------------------------------------------------------------------------------------ partial runs

def test_debug_mode_is_a_few_steps_and_a_small_evaluation(make_args, tmp_path):
    write_mnist(str(tmp_path), n_train=1000, n_test=1000)  # 200 images per task in each split
    args = make_args("--dataset", "seq-mnist", "--model", "er", "--buffer_size", "50", "--lr", "0.1",
                     "--data_path", str(tmp_path), "--debug_mode", "1", "--validation", "60")
    assert args.max_steps_per_task == DEBUG_STEPS
    run = build_run(args)
    full = build_run(make_args("--dataset", "seq-mnist", "--model", "sgd", "--lr", "0.1", "--data_path", str(tmp_path)))
    assert run.test.task.bincount().tolist() == [DEBUG_EVAL_PER_TASK] * 5
    first = [i for t in range(5) for i in (full.test.task == t).nonzero().flatten()[:DEBUG_EVAL_PER_TASK].tolist()]
    assert torch.equal(run.test.x, full.test.x[sorted(first)])  # the first 100 of each task
    assert run.validation.task.bincount().tolist() == [DEBUG_EVAL_PER_TASK] * 5  # 120 held out per task
    assert len(run.train.y) == 400
    res = run_experiment(args, log=quiet)
    assert res["n_steps"] == 5 * DEBUG_STEPS and res["partial"] is True
    assert res["splits"]["samples"] == {"train": 400, "validation": 500, "test": 500}


def test_max_steps_and_n_tasks(make_args):
    full = run_experiment(make_args(*DIGITS), log=quiet)
    assert full["partial"] is False and full["n_steps"] == 2 * (29 + 29 + 30 + 29 + 29)
    capped = run_experiment(make_args(*DIGITS, "--max_steps_per_task", "7"), log=quiet)
    assert capped["n_steps"] == 35 and capped["partial"] is True
    first = run_experiment(make_args(*DIGITS, "--n_tasks", "2"), log=quiet)
    assert first["partial"] is True and len(first["acc_matrix_class_il"]) == 2
    assert first["acc_matrix_class_il"] == full["acc_matrix_class_il"][:2]  # the same first two tasks
    assert first["forgetting_class_il"] is None and len(first["acc_matrix_class_il"][0]) == 5
    assert run_experiment(make_args(*DIGITS, "--n_tasks", "5"), log=quiet)["partial"] is False


def test_a_cap_above_every_task_changes_nothing(make_args):
    full = run_experiment(make_args(*DIGITS), log=quiet)
    capped = run_experiment(make_args(*DIGITS, "--max_steps_per_task", "60"), log=quiet)
    assert capped["n_steps"] == full["n_steps"]  # every task has at most 60 steps
    assert capped["acc_matrix_class_il"] == full["acc_matrix_class_il"]


@pytest.mark.parametrize("flags,expected", [
    (["--n_tasks", "6"], "--n_tasks 6: seq-digits has 5 tasks"),
    (["--n_tasks", "0"], "positive"),
    (["--max_steps_per_task", "0"], "positive"),
    (["--debug_mode", "2"], "expected 0 or 1"),
    (["--validation", "100"], "at most 99"),
    (["--validation", "-1"], "non-negative"),
    (["--eval_every", "-2"], "non-negative"),
])
def test_bad_protocol_flags(capsys, flags, expected):
    with pytest.raises(SystemExit) as exc:
        main_module.main(DIGITS + flags)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and expected in err, err


def test_joint_refuses_n_tasks(capsys):
    with pytest.raises(SystemExit):
        main_module.main(["--dataset", "seq-digits", "--model", "joint", "--lr", "0.1", "--n_tasks", "2"])
    assert "trains every task at once" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- progress

class CountingLoss:
    """A loss whose reads are counted: reading a device tensor waits for the device."""

    def __init__(self):
        self.reads = 0

    def __float__(self):
        self.reads += 1
        return 0.5


class NotATerminal(io.StringIO):
    def isatty(self):
        return False


def test_off_a_terminal_a_line_per_epoch_and_the_loss_read_only_for_it():
    out, err = io.StringIO(), NotATerminal()
    bar = ProgressBar(stream=err, line_stream=out, line_every=1e9)
    loss = CountingLoss()
    bar.start(steps_per_epoch=4, n_epochs=3)
    for step in range(1, 11):  # a stage stopped after 10 steps (--max_steps_per_task)
        bar.update("Task 2/5", step, 10, loss)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [re.search(r"step (\d+)/10 epoch (\d)/3", line).groups() for line in lines] == [
        ("4", "1"), ("8", "2"), ("10", "3")]
    assert loss.reads == 3 and err.getvalue() == ""
    assert all("steps/s" in line and "elapsed" in line and "ETA" in line and "loss 0.5000" in line for line in lines)


def test_off_a_terminal_a_line_every_few_seconds_too():
    out = io.StringIO()
    bar = ProgressBar(stream=NotATerminal(), line_stream=out, line_every=0)  # every step is "N seconds later"
    for step in range(1, 4):  # a stage without epoch length (main_lt.py's epochs)
        bar.update("Epoch 1/2", step, 3, CountingLoss())
    assert len(out.getvalue().splitlines()) == 3 and "epoch" not in out.getvalue()


def test_on_a_terminal_the_bar_shows_epoch_rate_elapsed_and_eta():
    err = io.StringIO()
    bar = ProgressBar(enabled=True, stream=err, line_stream=io.StringIO(), interval=0)
    bar.start(steps_per_epoch=5, n_epochs=2)
    bar.update("Task 1/5", 7, 10, CountingLoss())
    text = err.getvalue()
    assert text.startswith("\rTask 1/5 [") and "7/10 epoch 2/2" in text
    assert all(word in text for word in ("steps/s", "elapsed", "ETA", "loss 0.5000"))


def test_silent_when_disabled():
    out, err = io.StringIO(), io.StringIO()
    bar = ProgressBar(enabled=False, stream=err, line_stream=out)
    loss = CountingLoss()
    bar.update("Task 1/5", 1, 1, loss)
    bar.close()
    assert out.getvalue() == err.getvalue() == "" and loss.reads == 0


def test_a_run_logs_progress_lines_when_not_on_a_terminal(tmp_path, capsys):
    assert main_module.main(DIGITS + ["--results_file", "none", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Task 3/5  step 30/60 epoch 1/2" in out and "Task 3/5  step 60/60 epoch 2/2" in out


# ---------------------------------------------------------------------------------------- results files

def test_results_go_to_the_results_folder_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flags = DIGITS + ["--n_tasks", "1", "--device", "cpu"]
    assert main_module.main(flags) == 0
    explicit = dict(zip([f[2:] for f in flags[::2]], flags[1::2]))
    path = tmp_path / "results" / "seq-digits" / (results_name(explicit) + ".json")
    assert path.exists() and os.listdir(tmp_path) == ["results"]
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"Results written to {path}"
    res = json.loads(path.read_text())
    assert res["args"]["results_file"] == os.path.join("results", "seq-digits", path.name)


def test_a_failed_run_leaves_no_empty_results_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flags = ["--dataset", "seq-digits", "--model", "er", "--buffer_size", "50", "--n_epochs", "1", "--classifier",
             "fno", "--masked_softmax", "1", "--lr", "1e4", "--device", "cpu"]  # diverges: exit 2, nothing written
    assert main_module.main(flags) == 2
    assert os.listdir(tmp_path) == []


def test_results_file_none_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main_module.main(DIGITS + ["--n_tasks", "1", "--results_file", "none", "--device", "cpu"]) == 0
    assert os.listdir(tmp_path) == [] and "Results written" not in capsys.readouterr().out


def test_every_results_file_says_where_it_came_from(tmp_path):
    out = tmp_path / "r.json"
    assert main_module.main(DIGITS + ["--n_tasks", "1", "--results_file", str(out), "--device", "cpu"]) == 0
    res = json.loads(out.read_text())
    assert re.fullmatch(r"[0-9a-f]{40}", res["git_commit"]) and isinstance(res["git_dirty"], bool)
    started = datetime.datetime.fromisoformat(res["start_time"])
    assert started.tzinfo is not None and abs(datetime.datetime.now(datetime.timezone.utc) - started).total_seconds() < 600
    assert res["host"] and res["python_version"].count(".") == 2
    assert res["packages"]["torch"] and res["packages"]["numpy"] and res["packages"]["scikit-learn"]
