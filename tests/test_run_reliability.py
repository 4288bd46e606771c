"""Runs that must stop with one line instead of finishing silently or failing late: diverged losses,
unwritable outputs, non-finite or out-of-range flags, a last batch of one under batch norm."""
import errno
import os
import stat

import pytest
import torch

import main as main_module
import main_lt
from utils.training import build_run, epoch_batches, run_experiment

DIGITS = ["--dataset", "seq-digits", "--model", "er", "--buffer_size", "50", "--lr", "0.1", "--n_epochs", "1",
          "--device", "cpu"]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Runs without --results_file write under results/ of the current directory: a temporary one."""
    monkeypatch.chdir(tmp_path)


def run_main(capsys, *flags, module=main_module):
    code = module.main(list(flags))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.mark.parametrize("extra", [[], ["--collapse_metrics", "1"]])
def test_diverged_run_stops_with_one_line_and_writes_nothing(capsys, tmp_path, extra):
    results = tmp_path / "d.json"
    flags = DIGITS[:] + ["--classifier", "fno", "--masked_softmax", "1", "--results_file", str(results)] + extra
    flags[flags.index("--lr") + 1] = "1e4"
    code, out, err = run_main(capsys, *flags)
    assert code == 2
    one_error_line(err, "nan", "task 1", "steps 1-", "--lr")
    assert not results.exists() and "Task 1/5  Class-IL" not in out  # stopped before evaluating the diverged task


@pytest.mark.parametrize("flags", [["--lr", "inf"], ["--lr", "1e400"], ["--lr", "nan"], ["--alpha", "nan"],
                                   ["--alpha", "-1"], ["--seed", str(2 ** 64)], ["--num_threads", "100000"],
                                   ["--device", "cpu:5"], ["--buffer_size", "-3"]])
def test_bad_flag_values_are_refused_by_the_parser(capsys, flags):
    with pytest.raises(SystemExit) as exc:
        main_module.main(DIGITS + ["--model", "derpp", "--beta", "0.5", "--alpha", "0.1"] + flags)
    assert exc.value.code == 2
    one_error_line(capsys.readouterr().err, flags[0])


@pytest.mark.parametrize("flags", [["--momentum", "nan"], ["--weight_decay", "-1"], ["--lr", "inf"],
                                   ["--momentum", "1.5"]])
def test_bad_long_tail_flag_values_are_refused_by_the_parser(capsys, flags):
    with pytest.raises(SystemExit) as exc:
        main_lt.main(["--dataset", "cifar10-lt", "--method", "ce", "--device", "cpu"] + flags)
    assert exc.value.code == 2
    one_error_line(capsys.readouterr().err, flags[0])


def test_impossible_buffer_is_refused_before_allocation(capsys):
    flags = DIGITS[:]
    flags[flags.index("--buffer_size") + 1] = str(10 ** 12)
    code, out, err = run_main(capsys, *flags)
    assert code == 2
    one_error_line(err, "--buffer_size", "GiB", "at most")


@pytest.mark.parametrize("where", ["results_dir_is_file", "results_is_dir", "checkpoint_under_file"])
def test_unwritable_outputs_fail_before_the_first_step(capsys, tmp_path, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    flag = {"results_dir_is_file": ["--results_file", str(blocker / "r.json")],
            "results_is_dir": ["--results_file", str(tmp_path)],
            "checkpoint_under_file": ["--checkpoint_dir", str(blocker / "ckpt")]}[where]
    code, out, err = run_main(capsys, *DIGITS, *flag)
    assert code == 2
    one_error_line(err, flag[0])
    assert "Task 1/5" not in out


def test_results_write_failure_says_what_was_kept(capsys, tmp_path, monkeypatch):
    import utils.io

    def disk_full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils.io, "write_json_atomic", disk_full)
    ckpt = tmp_path / "ckpt"
    code, out, err = run_main(capsys, *DIGITS, "--results_file", str(tmp_path / "r.json"), "--checkpoint_dir", str(ckpt))
    assert code == 2
    one_error_line(err, "No space left", str(ckpt), "--resume")
    assert "Class-IL" in out  # the numbers are printed before the write is tried
    monkeypatch.undo()
    code, out, err = run_main(capsys, *DIGITS, "--results_file", str(tmp_path / "r2.json"), "--checkpoint_dir",
                              str(ckpt), "--resume")
    assert code == 0 and (tmp_path / "r2.json").exists() and "5 task(s) already done" in out


def test_checkpoint_write_failure_is_one_line(capsys, tmp_path, monkeypatch):
    import utils.cl_callbacks

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils.cl_callbacks, "save_checkpoint", disk_full)
    code, out, err = run_main(capsys, *DIGITS, "--checkpoint_dir", str(tmp_path / "ckpt"))
    assert code == 2
    one_error_line(err, "checkpoint", "after task 1", "No space left", "--resume")


def test_atomic_files_follow_the_umask(tmp_path):
    from utils.io import write_json_atomic
    old = os.umask(0o022)
    try:
        write_json_atomic(str(tmp_path / "r.json"), {"a": 1})
        os.umask(0o077)
        write_json_atomic(str(tmp_path / "private.json"), {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "r.json").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "private.json").st_mode) == 0o600


def test_last_batch_of_one_joins_the_previous_batch():
    order = torch.arange(11)
    assert [len(b) for b in epoch_batches(order, 5)] == [5, 5, 1]
    merged = epoch_batches(order, 5, min_batch=2)
    assert [len(b) for b in merged] == [5, 6] and torch.equal(torch.cat(merged), order)
    assert [len(b) for b in epoch_batches(order[:1], 5, min_batch=2)] == [1]


def test_batch_norm_network_trains_a_task_that_leaves_one_sample_over(make_args):
    # seq-digits' first task has 288 training images: batches of 287 leave one over
    args = make_args("--dataset", "seq-digits", "--model", "sgd", "--lr", "0.05", "--backbone", "resnet18-narrow",
                     "--batch_size", "287", "--n_epochs", "1")
    assert build_run(args).min_batch == 2
    res = run_experiment(args, log=lambda *a: None)
    assert res["n_steps"] == 1 + 1 + 2 + 1 + 1  # 288, 288, 291 (287 + 4), 288, 283 images


def test_a_second_process_on_the_same_run_refuses_to_start(capsys, tmp_path):
    from utils.runlock import run_lock
    results = tmp_path / "r.json"
    with run_lock(str(results)):  # held as a running twin would hold it
        code, out, err = run_main(capsys, *DIGITS, "--results_file", str(results))
    assert code == 2
    one_error_line(err, "already running", str(results))
    assert not results.exists()
    code, out, err = run_main(capsys, *DIGITS, "--results_file", str(results))
    assert code == 0 and results.exists() and not (tmp_path / "r.json.lock").exists()
