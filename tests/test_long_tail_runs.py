"""main_lt.py as a command, as main.py is one: output places checked before training, the per-run lock,
the result printed once, progress by epoch, wandb logging (against the recording stand-in of
tests/test_wandb.py), and the grid runner's --checkpoints."""
import json
import os
import subprocess
import sys

import pytest

import main_lt
from longtail.metrics import format_metrics
from longtail.trainer import run_long_tail
from tests.test_long_tail import N_PER_CLASS, run_main, write_tiny_cifar
from tests.test_wandb import Recorder
from utils.runlock import run_lock
from utils.wandb_logger import INIT_TIMEOUT_ENV, LOSS_EVERY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset", "cifar10-lt", "--method", "arc-mixup", "--width", "4", "--batch_size", "64", "--n_epochs", "2",
        "--device", "cpu", "--seed", "3"]


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"), N_PER_CLASS, 6)


def test_the_result_is_printed_once(cifar_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, io = run_main(TINY + ["--data_path", cifar_dir, "--results_file", str(out), "--nowand", "1"], capsys)
    assert code == 0 and out.exists()
    final = format_metrics(json.loads(out.read_text()))
    shown = [line for line in io.out.splitlines() if final in line]
    assert shown[-1] == "Final (arc-mixup, cifar10-lt, ratio 100.0): " + final
    assert all(line.startswith("best epoch") for line in shown[:-1])  # the best epoch may be the final one
    assert f"Results written to {out}" in io.out


@pytest.mark.parametrize("where", ["results_under_a_file", "results_is_a_directory", "checkpoint_under_a_file"])
def test_unwritable_outputs_fail_before_the_first_epoch(cifar_dir, tmp_path, capsys, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    flag = {"results_under_a_file": ["--results_file", str(blocker / "r.json")],
            "results_is_a_directory": ["--results_file", str(tmp_path)],
            "checkpoint_under_a_file": ["--checkpoint_dir", str(blocker / "ckpt")]}[where]
    code, io = run_main(TINY + ["--data_path", cifar_dir] + flag, capsys)
    assert code == 2 and io.err.count("\n") == 1 and io.err.startswith("main_lt.py: error: "), io.err
    assert flag[0] in io.err and ("not writable" in io.err or "is a directory" in io.err)
    assert "epoch 1/" not in io.out


def test_a_second_process_on_the_same_run_is_refused(cifar_dir, tmp_path, capsys):
    results = tmp_path / "r.json"
    with run_lock(str(results)):  # as another process running the same results file would hold it
        code, io = run_main(TINY + ["--data_path", cifar_dir, "--results_file", str(results)], capsys)
    assert code == 2 and io.err.count("\n") == 1 and "already running this run" in io.err
    assert "epoch 1/" not in io.out and not results.exists()


def test_a_failed_run_leaves_no_empty_results_folder(cifar_dir, tmp_path, capsys):
    results = tmp_path / "new" / "deeper" / "r.json"
    code, io = run_main(TINY + ["--data_path", cifar_dir, "--results_file", str(results),
                                "--pretrained", str(tmp_path / "missing.pth")], capsys)
    assert code == 2 and "no such file" in io.err and not (tmp_path / "new").exists()


class RecordingBar:
    """A progress bar that records what it was asked to show."""

    def __init__(self):
        self.updates, self.closed = [], 0

    def update(self, label, step, total, loss):
        self.updates.append((label, step, total))

    def close(self):
        self.closed += 1


def test_progress_is_reported_by_epoch(cifar_dir):
    bar = RecordingBar()
    args = main_lt.parse_args(TINY + ["--data_path", cifar_dir])
    assert run_long_tail(args, log=lambda *a: None, progress=bar) is not None
    steps = 5  # 294 training images in batches of 64
    assert bar.updates == [(f"Epoch {e}/2", s, steps) for e in (1, 2) for s in range(1, steps + 1)]
    assert bar.closed == 2


@pytest.fixture
def fake_wandb(monkeypatch):
    recorder = Recorder()
    monkeypatch.setitem(sys.modules, "wandb", recorder.module)
    for name in ("WANDB_MODE", "WANDB_PROJECT", INIT_TIMEOUT_ENV):
        monkeypatch.delenv(name, raising=False)
    return recorder


def test_wandb_logs_config_epochs_and_final_metrics(fake_wandb, cifar_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = TINY + ["--n_epochs", "3", "--eval_every", "2", "--data_path", cifar_dir, "--results_file", str(out),
                   "--wandb_project", "proj", "--wandb_name", "lt"]
    code, io = run_main(argv, capsys)
    assert code == 0 and "warning" not in io.err
    results = json.loads(out.read_text())
    kwargs = fake_wandb.init_kwargs
    assert (kwargs["project"], kwargs["name"]) == ("proj", "lt") and kwargs["config"] == results["args"]
    epochs = [row for row in fake_wandb.logged if "epoch" in row]
    assert [row["epoch"] for row in epochs] == [1, 2, 3]
    assert all(row["epoch_train/loss"] > 0 and row["epoch_train/lr"] > 0 for row in epochs)
    assert "test/accuracy" not in epochs[0]  # epoch 1 is not evaluated with --eval_every 2
    assert [epochs[i]["test/accuracy"] for i in (1, 2)] == [results["test_accuracy_per_epoch"][e] for e in "23"]
    assert epochs[2]["test/few_acc"] == results["few_acc"]
    assert len([row for row in fake_wandb.logged if "train/loss" in row]) == 15 // LOSS_EVERY  # 5 steps x 3
    assert fake_wandb.summary["accuracy"] == results["accuracy"] and fake_wandb.finished == [0]


def test_a_resumed_run_continues_its_wandb_run(fake_wandb, cifar_dir, tmp_path, capsys, monkeypatch):
    from longtail import trainer
    real_step, steps = trainer.train_step, []

    def train_step(run, x, y):  # stopped in epoch 2, as by a Ctrl-C
        steps.append(1)
        if len(steps) == 7:
            raise KeyboardInterrupt
        return real_step(run, x, y)
    argv = TINY + ["--data_path", cifar_dir, "--checkpoint_dir", str(tmp_path), "--wandb_project", "proj"]
    monkeypatch.setattr(trainer, "train_step", train_step)
    assert run_main(argv, capsys)[0] == 130
    assert fake_wandb.finished == [130] and fake_wandb.init_kwargs["id"] is None
    monkeypatch.setattr(trainer, "train_step", real_step)
    assert run_main(argv + ["--resume"], capsys)[0] == 0
    assert fake_wandb.init_kwargs["id"] == "run123" and fake_wandb.init_kwargs["resume"] == "allow"
    assert [row["epoch"] for row in fake_wandb.logged if "epoch" in row] == [1, 2]  # epoch 1 once
    assert fake_wandb.finished == [130, 0]


def test_the_grid_runs_a_long_tail_sweep_with_checkpoints(cifar_dir, tmp_path):
    sweep = tmp_path / "lt.yaml"
    sweep.write_text("program: main_lt.py\nmethod: grid\nparameters:\n"
                     "  dataset: {value: cifar10-lt}\n  method: {values: [ce, arc-mixup]}\n"
                     f"  data_path: {{value: {cifar_dir}}}\n  width: {{value: 4}}\n  batch_size: {{value: 64}}\n"
                     "  n_epochs: {value: 2}\n  device: {value: cpu}\n  seed: {value: 1}\n")
    results = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "utils.grid", str(sweep), "--results_dir", str(results),
                           "--checkpoints"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all 2 runs done" in done.stdout
    files = sorted(p.name for p in results.glob("*.json"))
    assert len(files) == 2 and all(json.loads((results / f).read_text())["setting"] == "long-tail" for f in files)
    assert not os.listdir(results / "checkpoints")  # each run's checkpoint is deleted once its results exist
    for log in (results / "logs").iterdir():
        text = log.read_text()
        assert "--checkpoint_dir=" in text and "No checkpoint in" in text and text.count("Final (") == 1


def test_data_path_comes_from_the_environment_when_not_given(monkeypatch):
    """As main.py and the grid runner: --data_path, else $FNO_CL_DATA, else ./data."""
    argv = ["--dataset", "cifar10-lt", "--method", "ce"]
    monkeypatch.delenv("FNO_CL_DATA", raising=False)
    assert main_lt.parse_args(argv).data_path == "data"
    monkeypatch.setenv("FNO_CL_DATA", "/cluster/data")
    assert main_lt.parse_args(argv).data_path == "/cluster/data"
    assert main_lt.parse_args(argv + ["--data_path", "mine"]).data_path == "mine"
