"""Forward transfer, average incremental accuracy and anytime accuracy (--eval_every) in real runs: equal to
hand computations, measured only where needed, and without any effect on training."""
import pytest

import utils.training as training
from utils.metrics import forward_transfer
from utils.training import build_run, evaluate, run_experiment, stages, train_stage
from utils.wandb_logger import WandbLogger

SGD = ["--dataset", "seq-digits", "--model", "sgd", "--lr", "0.1", "--n_epochs", "1", "--seed", "2"]
ER = ["--dataset", "seq-digits", "--model", "er", "--buffer_size", "50", "--lr", "0.1", "--n_epochs", "1"]


def quiet(*_):
    pass


def test_fwt_and_average_incremental_accuracy_equal_hand_computations(make_args):
    args = make_args(*ER)
    res = run_experiment(args, log=quiet)
    # the same run by hand, evaluated on every task after every task (GEM's full matrix)
    run = build_run(args)
    random_cil, random_til = evaluate(run, 5)
    full_cil, full_til = [], []
    for data in stages(run):
        train_stage(run, data)
        cil, til = evaluate(run, 5)
        full_cil.append(cil)
        full_til.append(til)
    assert res["random_init_class_il"] == pytest.approx(random_cil) and res["random_init_task_il"] == pytest.approx(random_til)
    assert res["acc_next_task_class_il"] == pytest.approx([full_cil[t][t + 1] for t in range(4)])
    assert res["acc_next_task_task_il"] == pytest.approx([full_til[t][t + 1] for t in range(4)])
    fwt = sum(full_cil[t - 1][t] - random_cil[t] for t in range(1, 5)) / 4
    assert res["fwt_class_il"] == pytest.approx(fwt)
    assert res["fwt_task_il"] == pytest.approx(sum(full_til[t - 1][t] - random_til[t] for t in range(1, 5)) / 4)
    assert res["acc_matrix_class_il"] == [row[:t + 1] + [None] * (4 - t) for t, row in enumerate(full_cil)]
    avg = sum(sum(row[:t + 1]) / (t + 1) for t, row in enumerate(full_cil)) / 5
    assert res["avg_incremental_class_il"] == pytest.approx(avg)


def recorded_evaluations(monkeypatch):
    calls = []
    real = training.evaluate

    def record(run, n_seen_tasks, split=None, first_task=0):
        calls.append((n_seen_tasks, first_task, split is not None))
        return real(run, n_seen_tasks, split, first_task)

    monkeypatch.setattr(training, "evaluate", record)
    return calls


def test_transfer_evaluates_only_what_it_needs(make_args, monkeypatch):
    calls = recorded_evaluations(monkeypatch)
    run_experiment(make_args(*SGD), log=quiet)
    # before training: every task once; after task t: the seen tasks, then task t + 1 alone
    assert calls == [(5, 0, False)] + [c for t in range(5) for c in [(t + 1, 0, False), (t + 2, t + 1, False)]][:-1]
    calls.clear()
    res = run_experiment(make_args(*SGD, "--n_tasks", "2"), log=quiet)
    assert calls == [(2, 0, False), (1, 0, False), (2, 1, False), (2, 0, False)]
    assert res["fwt_class_il"] == forward_transfer(res["acc_next_task_class_il"], res["random_init_class_il"])
    calls.clear()
    res = run_experiment(make_args("--dataset", "seq-digits", "--model", "joint", "--lr", "0.1", "--n_epochs", "1"),
                         log=quiet)
    assert calls == [(5, 0, False)] and res["fwt_class_il"] is None and res["random_init_class_il"] is None


class FakeWandbRun:
    def __init__(self):
        self.rows, self.summary, self.defined = [], {}, []

    def log(self, row):
        self.rows.append(row)

    def define_metric(self, name, step_metric=None):
        self.defined.append((name, step_metric))

    def finish(self, exit_code=0):
        pass


def test_anytime_accuracy_every_k_steps_does_not_change_training(make_args):
    plain = run_experiment(make_args(*SGD), log=quiet)
    res = run_experiment(make_args(*SGD, "--eval_every", "13"), log=quiet)
    assert plain["anytime"] is None
    steps = [29, 29, 30, 29, 29]  # 288, 288, 291, 288, 283 images at batch 10
    assert [(e["task"], e["step"]) for e in res["anytime"]] == [(t + 1, k) for t, s in enumerate(steps)
                                                               for k in range(13, s + 1, 13)]
    assert res["acc_matrix_class_il"] == plain["acc_matrix_class_il"]  # evaluating in between changes nothing
    assert res["acc_matrix_task_il"] == plain["acc_matrix_task_il"]
    for e in res["anytime"]:
        assert len(e["class_il_per_task"]) == e["task"]
        assert e["class_il"] == pytest.approx(sum(e["class_il_per_task"]) / e["task"])
    last = run_experiment(make_args(*SGD, "--eval_every", "29"), log=quiet)["anytime"]
    assert [(e["task"], e["step"]) for e in last] == [(1, 29), (2, 29), (3, 29), (4, 29), (5, 29)]
    # at a task's last step (sgd's end_task does nothing) the anytime accuracy is the task's row
    assert [e["class_il_per_task"] for e in last if e["task"] != 3] == [
        row[:t + 1] for t, row in enumerate(plain["acc_matrix_class_il"]) if t != 2]


def test_validation_anytime_and_transfer_reach_wandb(make_args, monkeypatch):
    fake = FakeWandbRun()

    def active_logger(args, saved=None):
        logger = WandbLogger(args, saved)
        logger.run = fake  # as if wandb had started
        return logger

    monkeypatch.setattr(training, "WandbLogger", active_logger)
    res = run_experiment(make_args(*SGD, "--eval_every", "13", "--validation", "10"), log=quiet)
    anytime_rows = [r for r in fake.rows if "anytime/class_il" in r]
    assert [r["anytime/class_il"] for r in anytime_rows] == [e["class_il"] for e in res["anytime"]]
    starts = [0, 26, 52, 79, 105]  # the tasks take 26, 26, 27, 26, 26 steps
    assert [r["train/step"] for r in anytime_rows] == [s + k for s in starts for k in (13, 26)]
    validation_rows = [r for r in fake.rows if "validation/class_il/mean" in r]
    assert [r["task"] for r in validation_rows] == [1, 2, 3, 4, 5]
    assert fake.summary["validation/class_il"] == res["validation"]["class_il"]
    assert fake.summary["fwt_class_il"] == res["fwt_class_il"]  # top-level numbers: the standard summary
    assert fake.summary["avg_incremental_class_il"] == res["avg_incremental_class_il"]
    assert ("anytime/*", "train/step") in fake.defined and ("validation/*", "task") in fake.defined
