"""wandb logging: what is logged (against a recording stand-in for the wandb module), that it is off when
it should be, that no failure ever stops a run or changes its results, and real offline / not-logged-in wandb."""
import json
import math
import os
import subprocess
import sys
import types

import pytest

import main
from datasets import get_dataset_class
from utils.args import parse_args
from utils.wandb_logger import INIT_TIMEOUT_ENV, INIT_TIMEOUT_S, LOSS_EVERY, WandbLogger

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = ["--dataset", "seq-digits", "--model", "er", "--classifier", "fno", "--masked_softmax", "1",
       "--buffer_size", "50", "--load_best_args", "--n_epochs", "1", "--seed", "2", "--device", "cpu"]


class TimeoutLike(Exception):
    pass


class Recorder:
    """A stand-in for the wandb module that records every call; ``fail`` names a call that raises."""

    def __init__(self, fail=None, logged_in=True):
        self.fail, self.logged_in = fail, logged_in
        self.init_kwargs, self.logged, self.summary, self.finished = None, [], {}, []
        self.preempting = 0
        self.module = types.SimpleNamespace(init=self.init, login=self.login,
                                            Settings=lambda **kwargs: types.SimpleNamespace(**kwargs))

    def _maybe_fail(self, call):
        if self.fail == call:
            raise RuntimeError(f"simulated {call} failure")
        if self.fail == call + " timeout":  # what wandb raises without network, message and all
            raise TimeoutLike('Timed out while retrying: Post "https://api.wandb.ai/graphql": no such host\n'
                              'Consider increasing the init_timeout setting:\n'
                              '  wandb.init(settings=wandb.Settings(init_timeout=...))')

    def login(self, prompt, verify):
        assert prompt is False
        return self.logged_in

    def init(self, **kwargs):
        self._maybe_fail("init")
        self.init_kwargs = kwargs
        recorder = self

        class Run:
            id = "run123"
            summary = recorder.summary

            def define_metric(self, *args, **kwargs):
                pass

            def log(self, row):
                recorder._maybe_fail("log")
                recorder.logged.append(dict(row))

            def finish(self, exit_code=0):
                recorder.finished.append(exit_code)

            def mark_preempting(self):
                recorder._maybe_fail("mark_preempting")
                recorder.preempting += 1

        return Run()


@pytest.fixture
def fake_wandb(monkeypatch):
    def install(**kwargs):
        recorder = Recorder(**kwargs)
        monkeypatch.setitem(sys.modules, "wandb", recorder.module)
        return recorder
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv(INIT_TIMEOUT_ENV, raising=False)
    return install


def run_main(tmp_path, *flags):
    out = tmp_path / f"r{len(os.listdir(tmp_path))}.json"
    assert main.main(RUN + list(flags) + ["--results_file", str(out)]) == 0
    with open(out) as f:
        return json.load(f)


def accuracies(results):
    return {k: results[k] for k in ("class_il", "task_il", "acc_matrix_class_il", "acc_matrix_task_il")}


def total_steps():
    train, _ = get_dataset_class("seq-digits")("data").load_splits()
    per_task = [int((train.y // 2 == t).sum()) for t in range(5)]
    return sum(math.ceil(n / 10) for n in per_task)


def test_logs_config_loss_tasks_and_final_metrics(fake_wandb, tmp_path, capsys, reference):
    wandb = fake_wandb()
    results = run_main(tmp_path, "--wandb_project", "proj", "--wandb_entity", "team", "--wandb_name", "digits")
    kwargs = wandb.init_kwargs
    assert (kwargs["project"], kwargs["entity"], kwargs["name"]) == ("proj", "team", "digits")
    assert kwargs["config"] == results["args"]  # the full, resolved configuration
    losses = [r for r in wandb.logged if "train/loss" in r]
    assert [r["train/step"] for r in losses] == [LOSS_EVERY * (i + 1) for i in range(total_steps() // LOSS_EVERY)]
    assert all(isinstance(r["train/loss"], float) and r["train/loss"] > 0 for r in losses)
    tasks = [r for r in wandb.logged if "task" in r]
    assert [r["task"] for r in tasks] == [1, 2, 3, 4, 5]
    for t, row in enumerate(tasks):
        seen = results["acc_matrix_class_il"][t][:t + 1]
        assert [row[f"class_il/task_{j + 1}"] for j in range(t + 1)] == seen
        assert row["class_il/mean"] == pytest.approx(sum(seen) / len(seen))
        assert row["task_il/mean"] == pytest.approx(sum(results["acc_matrix_task_il"][t][:t + 1]) / (t + 1))
    assert wandb.summary["class_il"] == results["class_il"] and wandb.summary["task_il"] == results["task_il"]
    assert wandb.finished == [0]
    assert "warning" not in capsys.readouterr().err
    assert accuracies(results) == accuracies(reference)  # logging reads the loss but draws nothing


def test_start_waits_a_few_seconds_not_wandbs_ninety(fake_wandb, monkeypatch):
    """Without network wandb.init waits its init_timeout (90 s by default) before failing: bounded here."""
    assert 0 < INIT_TIMEOUT_S <= 15
    wandb = fake_wandb()
    WandbLogger(parse_args(RUN + ["--wandb_project", "p"]))
    assert wandb.init_kwargs["settings"].init_timeout == INIT_TIMEOUT_S
    monkeypatch.setenv(INIT_TIMEOUT_ENV, "42.5")  # wandb's own variable still sets the limit
    WandbLogger(parse_args(RUN + ["--wandb_project", "p"]))
    assert wandb.init_kwargs["settings"].init_timeout == 42.5


@pytest.mark.parametrize("value", ["soon", "0", "-3", "nan", "inf"])
def test_bad_init_timeout_is_one_warning(fake_wandb, monkeypatch, capsys, value):
    wandb = fake_wandb()
    monkeypatch.setenv(INIT_TIMEOUT_ENV, value)
    logger = WandbLogger(parse_args(RUN + ["--wandb_project", "p"]))
    assert not logger.active and wandb.init_kwargs is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{INIT_TIMEOUT_ENV} must be a positive number of seconds, got {value!r}" in err


def test_start_timeout_warning_is_one_line_naming_the_limit(fake_wandb, capsys):
    fake_wandb(fail="init timeout")
    logger = WandbLogger(parse_args(RUN + ["--wandb_project", "p"]))
    assert not logger.active
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("warning: wandb start failed (TimeoutLike: Timed out while retrying: ")
    assert f"(after {INIT_TIMEOUT_S:g}s: set {INIT_TIMEOUT_ENV} to wait longer)" in err
    assert "Consider increasing" not in err and "training and the results file are unaffected" in err


@pytest.mark.parametrize("flags,env", [
    (["--wandb_project", "p", "--nowand", "1"], {}),
    (["--wandb_project", "p"], {"WANDB_MODE": "disabled"}),
    ([], {}),                                    # no project anywhere: nothing to log to
])
def test_off_means_no_wandb_calls(fake_wandb, monkeypatch, tmp_path, flags, env):
    wandb = fake_wandb()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run_main(tmp_path, *flags)
    assert wandb.init_kwargs is None and wandb.logged == []


def test_project_from_environment_as_agents_set_it(fake_wandb, monkeypatch, tmp_path):
    wandb = fake_wandb()
    monkeypatch.setenv("WANDB_PROJECT", "from-agent")
    run_main(tmp_path)
    assert wandb.init_kwargs is not None and wandb.finished == [0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return run_main(tmp_path_factory.mktemp("reference"), "--nowand", "1")


@pytest.mark.parametrize("failure", ["init", "log", "import", "not logged in"])
def test_failures_warn_once_and_change_nothing(fake_wandb, monkeypatch, tmp_path, capsys, failure, reference):
    if failure == "import":
        monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    else:
        wandb = fake_wandb(fail=failure, logged_in=failure != "not logged in")
    capsys.readouterr()
    results = run_main(tmp_path, "--wandb_project", "p")
    warnings = [l for l in capsys.readouterr().err.splitlines() if "wandb" in l]
    assert len(warnings) == 1 and warnings[0].startswith("warning: wandb ")
    assert "training and the results file are unaffected" in warnings[0]
    assert accuracies(results) == accuracies(reference)
    if failure == "log":
        assert wandb.finished == [1]  # the failed run is closed, nothing more is sent
        assert len(wandb.logged) == 0


def test_real_wandb_not_logged_in_never_prompts(monkeypatch, tmp_path, capsys):
    pytest.importorskip("wandb")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = WandbLogger(parse_args(RUN + ["--wandb_project", "p"]))
    assert not logger.active
    assert "not logged in" in capsys.readouterr().err


def test_real_wandb_offline_run(tmp_path):
    """A whole run with the real wandb in offline mode, in its own process (wandb wraps the console)."""
    pytest.importorskip("wandb")
    env = dict(os.environ, WANDB_MODE="offline", WANDB_DIR=str(tmp_path), WANDB_SILENT="true", OMP_NUM_THREADS="1")
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "main.py"] + RUN + ["--wandb_project", "p", "--results_file", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "warning: wandb" not in proc.stderr
    runs = [d for d in os.listdir(tmp_path / "wandb") if d.startswith("offline-run-")]
    assert len(runs) == 1
    assert any(f.endswith(".wandb") for f in os.listdir(tmp_path / "wandb" / runs[0]))
    assert json.loads(out.read_text())["class_il"] > 20


def sigterm_at_task_3(monkeypatch):
    """A SIGTERM (a scheduler preempting the job) sent to this process mid-way through task 3."""
    import signal
    from utils.progress import ProgressBar

    def update(self, label, step, total, loss):
        if label.startswith("Task 3/") and step == 7:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(ProgressBar, "update", update)


def test_sigterm_checkpoints_marks_preempting_and_the_resumed_run_is_identical(fake_wandb, monkeypatch, tmp_path,
                                                                                capsys, reference):
    from utils.wandb_logger import RESULTS_KEY
    wandb = fake_wandb()
    out, ckpt = tmp_path / "r.json", tmp_path / "ckpt"
    argv = RUN + ["--wandb_project", "p", "--results_file", str(out), "--checkpoint_dir", str(ckpt), "--resume"]
    with monkeypatch.context() as m:
        sigterm_at_task_3(m)
        assert main.main(argv) == 130  # non-zero: wandb requeues a preempting run that exits so
    assert not out.exists() and os.listdir(ckpt)
    assert wandb.preempting == 1 and wandb.finished == [130]
    assert main.main(argv) == 0  # what a requeued run (the sweep's --checkpoint_dir --resume) does
    assert wandb.init_kwargs["id"] == "run123" and wandb.init_kwargs["resume"] == "allow"
    assert wandb.preempting == 1 and wandb.finished == [130, 0]
    with open(out) as f:
        results = json.load(f)
    assert accuracies(results) == accuracies(reference)
    assert json.loads(wandb.summary[RESULTS_KEY]) == results  # the summary holds the results file
    assert "warning" not in capsys.readouterr().err


def test_failed_mark_preempting_is_one_warning_and_the_run_still_closes(fake_wandb, capsys):
    wandb = fake_wandb(fail="mark_preempting")
    logger = WandbLogger(parse_args(RUN + ["--wandb_project", "p"]))
    logger.finish(exit_code=130)
    assert wandb.finished == [130] and wandb.preempting == 0
    err = capsys.readouterr().err
    assert err.count("warning: wandb mark_preempting failed") == 1
