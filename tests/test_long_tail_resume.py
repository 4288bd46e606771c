"""main_lt.py checkpoints and --resume: a long-tail run stopped at any point and resumed ends exactly like an
uninterrupted one.

Each interruption happens at a chosen point: a signal the run sends itself
mid-epoch (SIGTERM, as the grid runner and schedulers stop runs, or SIGKILL)
or while a checkpoint file is being renamed into place, in a real subprocess;
or a KeyboardInterrupt raised in this process.  The resumption and the
uninterrupted reference run in this process.  On the CPU with the same seed
the results must be equal, not merely close.  Every process computes with one
thread, so that the interrupted and the resuming processes do the same
floating-point work.
"""
import copy
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import main_lt
from longtail import trainer
from tests.test_checkpoint_errors import set_in
from tests.test_long_tail import N_PER_CLASS, free_port, write_tiny_cifar
from utils.checkpoint import CHECKPOINT_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS_PER_EPOCH = 5  # 294 training images (the ratio-100 profile of N_PER_CLASS) in batches of 64
TINY = ["--dataset", "cifar10-lt", "--width", "4", "--batch_size", "64", "--n_epochs", "3", "--lr", "0.05",
        "--device", "cpu", "--seed", "3", "--nowand", "1"]

# Runs main_lt.main with one interruption planted: a signal at a training step (counted over the run),
# or at the n-th rename of a checkpoint file (SIGINT must then be held back until the rename is done).
DRIVER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    import torch
    torch.set_num_threads(1)
    import main_lt
    from longtail import trainer
    where, at, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
    if where == "step":
        real_step, steps = trainer.train_step, []
        def train_step(run, x, y):
            steps.append(1)
            if len(steps) == at:
                os.kill(os.getpid(), sig)
            return real_step(run, x, y)
        trainer.train_step = train_step
    else:
        real_replace, renames = os.replace, []
        def replace(src, dst):
            if dst.endswith({ckpt!r}):
                renames.append(dst)
                if len(renames) == at:
                    os.kill(os.getpid(), sig)
            return real_replace(src, dst)
        os.replace = replace
    sys.exit(main_lt.main(sys.argv[4:]))
""")

# (where, at, signal, arm) -> epochs the checkpoint holds afterwards
SCENARIOS = {
    ("step", 8, "SIGTERM", "arc-mixup"): 1,   # stopped in epoch 2: epoch 1 kept, clean exit
    ("rename", 2, "SIGINT", "mixup"): 2,      # Ctrl-C while saving epoch 2: the save completes first
    ("rename", 2, "SIGKILL", "etf-dr"): 1,    # killed while saving epoch 2: epoch 1's file survives
}


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"), N_PER_CLASS, 6)


def results_without_run_facts(path):
    """The results of a run, less what may differ between an interrupted and an uninterrupted one."""
    with open(path) as f:
        results = json.load(f)
    results.pop("wall_time_s")
    for flag in ("results_file", "checkpoint_dir", "resume", "checkpoint_every"):
        results["args"].pop(flag)
    return results


@pytest.fixture(scope="module")
def reference(cifar_dir, tmp_path_factory):
    """The results of an uninterrupted run of an arm (no checkpointing), run on first use."""
    base, out = tmp_path_factory.mktemp("reference"), {}

    def results(arm):
        if arm not in out:
            path = base / f"{arm}.json"
            assert main_lt.main(TINY + ["--method", arm, "--data_path", cifar_dir, "--results_file", str(path)]) == 0
            out[arm] = results_without_run_facts(path)
        return out[arm]
    return results


def argv_of(arm, cifar_dir, ckpt, *extra):
    return TINY + ["--method", arm, "--data_path", cifar_dir, "--checkpoint_dir", str(ckpt),
                   "--results_file", str(ckpt / "r.json"), *extra]


@pytest.fixture(scope="module")
def interrupted(cifar_dir, tmp_path_factory):
    """Start every interruption scenario at once (they are independent subprocesses)."""
    base = tmp_path_factory.mktemp("interrupted")
    driver = base / "driver.py"
    driver.write_text(DRIVER.format(root=ROOT, ckpt=CHECKPOINT_FILE))
    procs = {}
    for key in SCENARIOS:
        where, at, sig, arm = key
        ckpt = base / f"{where}-{at}-{sig}-{arm}"
        argv = argv_of(arm, cifar_dir, ckpt)
        procs[key] = (ckpt, argv, subprocess.Popen(
            [sys.executable, str(driver), where, str(at), sig] + argv, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=base, env=dict(os.environ, OMP_NUM_THREADS="1")))
    done = {}
    for key, (ckpt, argv, proc) in procs.items():
        out, err = proc.communicate(timeout=300)
        done[key] = (ckpt, argv, proc.returncode, out, err)
    return done


def epochs_in(ckpt_dir):
    return torch.load(os.path.join(ckpt_dir, CHECKPOINT_FILE), weights_only=True)["history"]["stages_done"]


@pytest.mark.parametrize("key", list(SCENARIOS), ids=lambda k: f"{k[0]}{k[1]}-{k[2]}-{k[3]}")
def test_interrupted_then_resumed_equals_uninterrupted(interrupted, reference, key, capsys):
    where, at, sig, arm = key
    ckpt, argv, returncode, out, err = interrupted[key]
    if sig == "SIGKILL":
        assert returncode == -signal.SIGKILL
    else:
        assert returncode == 130, err
        assert err.strip().endswith("main_lt.py: interrupted") and "Traceback" not in err
        assert f"Interrupted after {SCENARIOS[key]} completed epoch(s)" in out and "--resume" in out
    assert not (ckpt / "r.json").exists()
    assert epochs_in(ckpt) == SCENARIOS[key]
    assert main_lt.main(argv + ["--resume"]) == 0
    assert f"{SCENARIOS[key]} epoch(s) already done" in capsys.readouterr().out
    assert results_without_run_facts(ckpt / "r.json") == reference(arm)
    assert not [f for f in os.listdir(ckpt) if f.endswith(".tmp")], "stale temporary checkpoint left behind"


def interrupt_at(monkeypatch, step):
    """Raise KeyboardInterrupt (as SIGINT would) at the ``step``-th training step of this process."""
    real_step, steps = trainer.train_step, []

    def train_step(run, x, y):
        steps.append(1)
        if len(steps) == step:
            raise KeyboardInterrupt
        return real_step(run, x, y)
    monkeypatch.setattr(trainer, "train_step", train_step)


def test_injected_interrupt_and_another_checkpoint_frequency(cifar_dir, reference, tmp_path, monkeypatch, capsys):
    """Stopped in epoch 3 with a checkpoint every 2 epochs; resumed with a checkpoint every epoch (how often
    a run saves does not change what it computes)."""
    argv = argv_of("arc-mixup", cifar_dir, tmp_path, "--checkpoint_every", "2")
    interrupt_at(monkeypatch, 2 * STEPS_PER_EPOCH + 3)
    assert main_lt.main(argv) == 130
    io = capsys.readouterr()
    assert "Interrupted after 2 completed epoch(s)" in io.out and io.err == "main_lt.py: interrupted\n"
    assert epochs_in(tmp_path) == 2
    monkeypatch.undo()
    argv[argv.index("--checkpoint_every") + 1] = "1"
    assert main_lt.main(argv + ["--resume"]) == 0
    assert results_without_run_facts(tmp_path / "r.json") == reference("arc-mixup")
    assert epochs_in(tmp_path) == 3


def test_finished_run_whose_results_could_not_be_written_is_written_on_resume(cifar_dir, reference, tmp_path,
                                                                               monkeypatch, capsys):
    import errno
    import utils.io

    def disk_full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(utils.io, "write_json_atomic", disk_full)
    argv = argv_of("etf-dr", cifar_dir, tmp_path / "ck")
    assert main_lt.main(argv) == 2
    io = capsys.readouterr()
    assert io.err.count("\n") == 1 and "No space left" in io.err and "--resume" in io.err and str(tmp_path) in io.err
    assert "Final (etf-dr" in io.out  # the numbers are printed before the write is tried
    monkeypatch.undo()
    argv[argv.index("--results_file") + 1] = str(tmp_path / "again.json")
    assert main_lt.main(argv + ["--resume"]) == 0
    assert "3 epoch(s) already done" in capsys.readouterr().out
    assert results_without_run_facts(tmp_path / "again.json") == reference("etf-dr")


# ----------------------------------------------------------------------------- what a checkpoint refuses

@pytest.fixture(scope="module")
def finished(cifar_dir, tmp_path_factory):
    """The argv and the checkpoint content of a finished 3-epoch arc-mixup run."""
    ckpt = tmp_path_factory.mktemp("finished")
    argv = argv_of("arc-mixup", cifar_dir, ckpt)
    assert main_lt.main(argv) == 0
    return argv, torch.load(ckpt / CHECKPOINT_FILE, weights_only=True)


def one_line_error(argv, capsys):
    capsys.readouterr()
    assert main_lt.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("main_lt.py: error: "), err
    return err


def test_resume_refuses_other_arguments_and_an_existing_checkpoint(finished, capsys):
    argv, _ = finished
    ckpt = argv[argv.index("--checkpoint_dir") + 1]
    before = open(os.path.join(ckpt, CHECKPOINT_FILE), "rb").read()
    changed = list(argv)
    changed[changed.index("--seed") + 1] = "4"
    changed[changed.index("--lr") + 1] = "0.07"
    err = one_line_error(changed + ["--resume"], capsys)
    assert "--seed 4 (checkpoint: 3)" in err and "--lr 0.07 (checkpoint: 0.05)" in err
    assert "add --resume" in one_line_error(argv, capsys)  # a checkpoint exists and --resume was not given
    assert open(os.path.join(ckpt, CHECKPOINT_FILE), "rb").read() == before


DAMAGE = {
    "another program": (lambda s: s.pop("trainer"), "saved by main.py (continual learning), not by main_lt.py"),
    "more epochs than the run": (set_in("history", "stages_done", value=9), "claims 9 completed epoch(s), but "
                                                                           "this run has 3"),
    "other evaluated epochs": (set_in("history", "evaluated", value=[1, 3]), "evaluated is not the epochs [1, 2, 3]"),
    "short hits": (set_in("history", "hits", value=[[0.0] * 10, [0.0] * 10, [1.0]]), "hits and counts are not 3"),
    "more processes": (set_in("world_size", value=2), "saved by 2 process(es), this run has 1"),
    "other network": (set_in("model", "head.weight", value=torch.zeros(10, 32)), "'head.weight' is a float32 tensor "
                                                                                 "of shape (10, 32)"),
    "bad mixing state": (set_in("rng", 0, "mixing_lambda", value={"bit_generator": "PCG64"}),
                         "'mixing_lambda' random generator is invalid"),
    "bad optimizer": (set_in("optimizer", value={"state": {}, "param_groups": []}), "optimizer state does not fit"),
    "scaler without fp16": (set_in("scaler", value={"scale": 1.0}), "GradScaler state does not fit this run's --amp"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_checkpoint_that_does_not_fit_is_one_line(finished, case, tmp_path, capsys):
    argv, saved = finished
    damage, needle = DAMAGE[case]
    state = copy.deepcopy(saved)
    damage(state)
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    argv = list(argv)
    argv[argv.index("--checkpoint_dir") + 1] = str(tmp_path)
    err = one_line_error(argv + ["--resume"], capsys)
    assert needle in err and str(tmp_path / CHECKPOINT_FILE) in err and "delete it or use another" in err, err


# ----------------------------------------------------------------------------- DistributedDataParallel

# Runs main_lt.main and, on rank 0, copies the checkpoint directory aside as it is after epoch ``at``.
DDP_DRIVER = textwrap.dedent("""
    import shutil, sys
    sys.path.insert(0, {root!r})
    import main_lt
    from longtail import callbacks
    at, copy_to = int(sys.argv[1]), sys.argv[2]
    real_save = callbacks.save_checkpoint
    def save_checkpoint(directory, run, history, logger_state):
        real_save(directory, run, history, logger_state)
        if run.procs.main and history["stages_done"] == at:
            shutil.copytree(directory, copy_to)
    callbacks.save_checkpoint = save_checkpoint
    sys.exit(main_lt.main(sys.argv[3:]))
""")


def torchrun(script, *argv):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_ddp_rank_0_writes_every_process_streams_and_resume_is_exact(cifar_dir, tmp_path):
    """An uninterrupted two-process run, its checkpoint of epoch 1 copied aside; resumed from the copy by two
    processes, it ends with the same results."""
    driver = tmp_path / "driver.py"
    driver.write_text(DDP_DRIVER.format(root=ROOT))
    whole, copy = tmp_path / "whole", tmp_path / "epoch1"
    done = torchrun(driver, "1", str(copy), *argv_of("arc-mixup", cifar_dir, whole))
    assert done.returncode == 0, done.stderr[-2000:]
    saved = torch.load(copy / CHECKPOINT_FILE, weights_only=True)
    assert saved["world_size"] == 2 and saved["history"]["stages_done"] == 1 and len(saved["rng"]) == 2
    assert not torch.equal(saved["rng"][0]["augmentation"], saved["rng"][1]["augmentation"])  # each its own
    resumed = torchrun(driver, "0", str(tmp_path / "unused"), *argv_of("arc-mixup", cifar_dir, copy), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.count("1 epoch(s) already done") == 1 and resumed.stdout.count("Final (") == 1
    assert results_without_run_facts(copy / "r.json") == results_without_run_facts(whole / "r.json")
